"""Exact shortcut for convolutions of a spatially constant input (the conditions).

The conditions enter the conditioner CNNs as `D` constant channels over the `(H, W)` grid. After
`n` stacked 3×3 convolutions with fixed padding, a pixel's value depends only on how far it lies
from each edge, clipped at `n`: along one axis there are at most `2n + 1` classes (distance
0, 1, …, n−1 from the start, "interior", and the mirror at the end). So the network evaluated on a
small `(2n+1) × (2n+1)` field holds every distinct value, and indexing expands it to `(H, W)`
exactly. For the affine injector (two 3×3 convs) that is a 5×5 field instead of up to 32×32.

A convolution of an expanded field need not expand it: `conv_of_small_field` maps the small
field of depth `n` straight to the small field of depth `n + 1` (rows gathered by static slices,
then one matmul applying the kernel along the columns). The conditions themselves are the field
of depth 0, `(N, 1, 1, D)`; the injector's hidden layers (one conv deep) live on a 3×3 field and
its ZeroConv output on the 5×5 field, and the conditions' part of a coupling's first conv on a
3×3 field.
"""

import functools

import jax.numpy as jnp
import numpy as np


def small_side(side: int, depth: int) -> int:
    """Side of the small field that holds every distinct value for `depth` stacked 3×3 convs."""
    return min(side, 2 * depth + 1)


def expansion_index(side: int, depth: int) -> np.ndarray:
    """`(side,)` int: for each position, its row (or column) in the small field."""
    n = small_side(side, depth)
    if side <= n:
        return np.arange(side)
    return np.concatenate([np.arange(depth), np.full(side - 2 * depth, depth),
                           np.arange(depth + 1, n)])


def _representative_positions(side: int, depth: int) -> np.ndarray:
    """`(small side,)` int: a map position (row or column) for each row of the small field,
    the first one `expansion_index` sends there."""
    _, first = np.unique(expansion_index(side, depth), return_index=True)
    return first


def depth_zero_field(z):
    """`(N, D)` conditions → `(N, 1, 1, D)`: their small field of depth 0, of any map."""
    return z[:, None, None, :]


def expand(small, height: int, width: int, depth: int):
    """`(..., h, w, C)` small field → `(..., height, width, C)` full field (exact)."""
    rows = expansion_index(height, depth)
    cols = expansion_index(width, depth)
    take = dict(mode="clip", indices_are_sorted=True)  # static, in-range indices: no fill
    return jnp.take(jnp.take(small, rows, axis=-3, **take), cols, axis=-2, **take)


def pixel_counts(height: int, width: int, depth: int) -> np.ndarray:
    """`(h, w)` float32: how many pixels of the `(height, width)` map each small-field pixel
    stands for, so that a sum over the map is a weighted sum over the small field."""
    rows = np.bincount(expansion_index(height, depth))
    cols = np.bincount(expansion_index(width, depth))
    return np.outer(rows, cols).astype(np.float32)


def conv_of_small_field(small, kernel, height: int, width: int, depth: int, pad_value: float):
    """`conv2d(expand(small), kernel, pad_value)` on the small field one conv deeper, exactly.

    `small (N, h, w, Cin)` is the field of depth `depth` of an `(height, width)` map; the result
    `(N, h', w', Cout)` is the field of depth `depth + kh // 2` (`depth + 1` for a 3×3
    kernel). Rows and columns are separable: the field, with one row and one column of
    `pad_value` in front standing for the padding, has the `kh` rows each output row reads
    gathered by static slices, and one matmul `(N·h', kh·(w+1)·Cin) @ (kh·(w+1)·Cin, w'·Cout)`
    applies the kernel along the columns (`_column_matrix`), so no matrix larger than the
    kernel times the small field's width is built.
    """
    kh, kw, channels_in, channels_out = kernel.shape
    rows_read = _positions_read(height, depth, kh)                         # (h', kh)
    cols_read = _positions_read(width, depth, kw)                          # (w', kw)
    n, _, small_width, _ = small.shape
    padded = jnp.pad(small, ((0, 0), (1, 0), (1, 0), (0, 0)), constant_values=pad_value)
    rows = jnp.concatenate([padded[:, r:r + 1] for r in rows_read.reshape(-1)], axis=1)
    matrix = _column_matrix(kernel, cols_read, small_width + 1)
    out = rows.reshape(n * rows_read.shape[0], -1) @ matrix
    return out.reshape(n, rows_read.shape[0], cols_read.shape[0], channels_out)


def _column_matrix(kernel, cols_read, padded_width: int):
    """`(kh·(w+1)·Cin, w'·Cout)`: entry `[(i, q, c), (p, o)] = Σ_j kernel[i, j, c, o]` over the
    taps `j` through which output column `p` reads column `q` of the padded small field."""
    kh, kw, channels_in, _ = kernel.shape
    # reads: (q, p, j)
    reads = (cols_read[None] == np.arange(padded_width)[:, None, None]).astype(np.float32)
    matrix = sum(reads[None, :, None, :, None, j] * kernel[:, j, None, :, None, :]
                 for j in range(kw))
    return matrix.reshape(kh * padded_width * channels_in, -1)


@functools.lru_cache(maxsize=None)
def _positions_read(side: int, depth: int, taps: int) -> np.ndarray:
    """`(small side at depth + taps // 2, taps)` int: along one axis, the position of the small
    field of depth `depth`, shifted by one for a leading padding entry (0), that tap `t` of each
    output position of the deeper field reads."""
    positions_out = _representative_positions(side, depth + taps // 2)
    index_in = expansion_index(side, depth)
    read = np.zeros((positions_out.size, taps), np.int64)
    for p, position in enumerate(positions_out):
        for t in range(taps):
            source = position + t - taps // 2
            read[p, t] = index_in[source] + 1 if 0 <= source < side else 0
    read.flags.writeable = False  # cached: shared
    return read
