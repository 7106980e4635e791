"""Exact shortcut for convolutions of a spatially constant input (the conditions).

The conditions enter the conditioner CNNs as `D` constant channels over the `(H, W)` grid. After
`n` stacked 3×3 convolutions with fixed padding, a pixel's value depends only on how far it lies
from each edge, clipped at `n`: along one axis there are at most `2n + 1` classes (distance
0, 1, …, n−1 from the start, "interior", and the mirror at the end). So the network evaluated on a
small `(2n+1) × (2n+1)` field holds every distinct value, and indexing expands it to `(H, W)`
exactly. For the affine injector (two 3×3 convs) that is a 5×5 field instead of up to 32×32.
"""

import numpy as np
import jax.numpy as jnp


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


def constant_field(z, height: int, width: int, depth: int):
    """`(N, D)` conditions → `(N, h, w, D)` constant field on the small grid for `depth` convs."""
    h, w = small_side(height, depth), small_side(width, depth)
    return jnp.broadcast_to(z[:, None, None, :], (z.shape[0], h, w, z.shape[-1]))


def expand(small, height: int, width: int, depth: int):
    """`(..., h, w, C)` small field → `(..., height, width, C)` full field (exact)."""
    rows = expansion_index(height, depth)
    cols = expansion_index(width, depth)
    return jnp.take(jnp.take(small, rows, axis=-3), cols, axis=-2)
