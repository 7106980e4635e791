"""Input validation for the posterior code, done on concrete values before any tracing.

Every error is a `ValueError` that names the bad value and what was expected.
"""

import numpy as np

from jglow.data.validation import check_positive_maps


def first_non_finite(array, name: str, item: str) -> None:
    """Raise if `array` `(N, ...)` holds a NaN or infinity, naming the first bad item's index.

    `item` names what the leading axis counts ("map", "condition") in the message.
    """
    array = np.asarray(array)
    finite = np.isfinite(array).reshape(array.shape[0], -1)
    bad = ~finite.all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        position = np.unravel_index(int(np.argmin(finite[i])), array.shape[1:])
        raise ValueError(f"{name}: {item} {i} has the non-finite value "
                         f"{float(array[i][position])!r} at "
                         f"index {tuple(int(p) for p in position)}; expected finite values")


def model_maps(x, image_shape) -> np.ndarray:
    """Model-space maps `(H, W, C)` or `(B, H, W, C)` → float32 `(B, H, W, C)`, finite."""
    x = np.asarray(x, np.float32)
    image_shape = tuple(image_shape)
    if x.shape == image_shape:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != image_shape or x.shape[0] < 1:
        raise ValueError(f"x must have shape {image_shape} (H, W, C) or "
                         f"(B, {', '.join(map(str, image_shape))}) "
                         f"with B >= 1, got {x.shape}")
    first_non_finite(x, "x", "map")
    return x


def raw_maps(maps) -> np.ndarray:
    """Raw physical maps `(H, W)` or `(B, H, W)` → float32 `(B, H, W)`, finite and positive."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or min(maps.shape) < 1:
        raise ValueError(f"maps must have shape (H, W) or (B, H, W) with B >= 1, got {maps.shape}")
    check_positive_maps(maps, "maps")
    return maps


def conditions(zs, dim: int, name: str = "zs") -> np.ndarray:
    """Conditions `(M, dim)` with `M >= 1`, finite → float32."""
    zs = np.asarray(zs, np.float32)
    if zs.ndim != 2 or zs.shape[1] != dim:
        raise ValueError(f"{name} must have shape (M, {dim}) (M points of dimension {dim}), "
                         f"got {zs.shape}")
    if zs.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {zs.shape}); expected at least one point")
    first_non_finite(zs, name, "point")
    return zs


def chunk_size(value):
    """`None` or a positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or value < 1):
        raise ValueError(f"chunk_size must be None or a positive int, got {value!r}")
    return None if value is None else int(value)


def grid_axes(axes, dim: int, names) -> tuple:
    """A rectangular grid as `dim` 1-D axes, each finite, strictly increasing, >= 2 points."""
    axes = tuple(np.asarray(axis, np.float64) for axis in axes)
    if len(axes) != dim:
        raise ValueError(f"the grid has {len(axes)} axes; expected {dim}, one per parameter "
                         f"{tuple(names)}")
    for axis, name in zip(axes, names):
        if axis.ndim != 1 or axis.size < 2:
            raise ValueError(f"grid axis {name} has shape {axis.shape}; expected a 1-D array of "
                             f"at least 2 points")
        if not np.all(np.isfinite(axis)) or not np.all(np.diff(axis) > 0):
            raise ValueError(f"grid axis {name} = {axis.tolist()} must be finite and strictly "
                             f"increasing")
    return axes


def truths(values, n_maps: int, dim: int) -> np.ndarray:
    """Physical truths `(n_maps, dim)`, one row per map, finite → float64."""
    values = np.asarray(values, np.float64)
    if values.shape != (n_maps, dim):
        raise ValueError(f"truths has shape {values.shape}; expected ({n_maps}, {dim}), one row "
                         f"of {dim} physical parameters per map")
    first_non_finite(values, "truths", "row")
    return values


def point_counts(grid, dim: int, names) -> tuple:
    """`grid` as `dim` point counts per axis (ints >= 2): an int or a sequence of ints."""
    counts = (grid,) * dim if isinstance(grid, (int, np.integer)) else tuple(grid)
    if (len(counts) != dim or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                                      and n >= 2 for n in counts)):
        raise ValueError(f"grid = {counts!r}: expected {dim} point counts (ints >= 2), one "
                         f"per parameter {tuple(names)}")
    return tuple(int(n) for n in counts)
