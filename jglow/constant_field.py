"""Exact shortcut for convolutions of a spatially constant input (the conditions).

The conditions enter the conditioner CNNs as `D` constant channels over the `(H, W)` grid. After
`n` stacked 3×3 convolutions with fixed padding, a pixel's value depends only on how far it lies
from each edge, clipped at `n`: along one axis there are at most `2n + 1` classes (distance
0, 1, …, n−1 from the start, "interior", and the mirror at the end). So the network evaluated on a
small `(2n+1) × (2n+1)` field holds every distinct value, and indexing expands it to `(H, W)`
exactly. For the affine injector (two 3×3 convs) that is a 5×5 field instead of up to 32×32.

A convolution of an expanded field need not expand it: `conv_of_small_field` maps the small
field of depth `n` straight to the small field of depth `n + 1` with one matmul whose matrix is
built from the kernel. The injector's hidden layers (one conv deep) live on a 3×3 field and its
ZeroConv output on the 5×5 field.
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


def constant_field(z, height: int, width: int, depth: int):
    """`(N, D)` conditions → `(N, h, w, D)` constant field on the small grid for `depth` convs."""
    h, w = small_side(height, depth), small_side(width, depth)
    return jnp.broadcast_to(z[:, None, None, :], (z.shape[0], h, w, z.shape[-1]))


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
    kernel). Computed as one matmul `(N, Cin·h·w) @ (Cin·h·w, h'·w'·Cout)` plus the padding's
    constant contribution; the matrix's block for input pixel `q` and output pixel `p` is the
    sum of the kernel's taps through which `p` reads `q`, built in the layout the matmul reads.
    """
    kh, kw, channels_in, channels_out = kernel.shape
    taps = kernel.reshape(kh * kw, channels_in, channels_out)
    taps_of_pair, padding_taps = _tap_structure(height, width, depth, kh, kw)
    matrix = jnp.einsum("gt,tio->igo", taps_of_pair, taps)              # (Cin, Q·P', Cout)
    offset = pad_value * (padding_taps @ jnp.sum(taps, axis=1))           # (P', Cout)
    n = small.shape[0]
    pixels_in, pixels_out = small.shape[1] * small.shape[2], padding_taps.shape[0]
    channel_major = jnp.swapaxes(small.reshape(n, pixels_in, channels_in), 1, 2)
    out = (channel_major.reshape(n, -1) @ matrix.reshape(channels_in * pixels_in, -1)
           + offset.reshape(-1))
    out_rows = small_side(height, depth + kh // 2)
    return out.reshape(n, out_rows, pixels_out // out_rows, channels_out)


@functools.lru_cache(maxsize=None)
def _tap_structure(height: int, width: int, depth: int, kh: int, kw: int):
    """Which kernel taps connect the small fields, for `conv_of_small_field`.

    Returns `(taps_of_pair, padding_taps)`, float32 0/1: `taps_of_pair (Q·P', kh·kw)` is 1 at
    `[q·P' + p, t]` where output pixel `p` of the deeper field (`P'` pixels) reads input pixel
    `q` of the depth-`depth` field (flattened) through tap `t = i·kw + j`; `padding_taps
    (P', kh·kw)` is 1 where a tap of `p` falls in the padding.

    (Summing the taps with slices and adds instead of this matmul made the conditioning of 64
    maps faster, 30–38 against 46–53 ms, but compiling the paper model's `log_prob` 3–4 s
    slower and a tiny model's twice as slow.)
    """
    out_depth = depth + kh // 2
    rows_out = _representative_positions(height, out_depth)
    cols_out = _representative_positions(width, out_depth)
    rows_in, cols_in = expansion_index(height, depth), expansion_index(width, depth)
    in_width = small_side(width, depth)
    pixels_in, pixels_out = small_side(height, depth) * in_width, rows_out.size * cols_out.size
    taps_of_pair = np.zeros((pixels_in * pixels_out, kh * kw), np.float32)
    padding_taps = np.zeros((pixels_out, kh * kw), np.float32)
    for p, (row, col) in enumerate((r, c) for r in rows_out for c in cols_out):
        for i in range(kh):
            for j in range(kw):
                a, b = row + i - kh // 2, col + j - kw // 2
                if 0 <= a < height and 0 <= b < width:
                    q = rows_in[a] * in_width + cols_in[b]
                    taps_of_pair[q * pixels_out + p, i * kw + j] = 1.0
                else:
                    padding_taps[p, i * kw + j] = 1.0
    taps_of_pair.flags.writeable = padding_taps.flags.writeable = False  # cached: shared
    return taps_of_pair, padding_taps
