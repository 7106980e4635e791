"""Validation of the posterior's own arguments (chunk sizes, grid axes and point counts, truths),
done on concrete values before any tracing; maps and conditions are checked by `jglow.checks`.

Every error is a `ValueError` that names the bad value and what was expected.
"""

import numpy as np

from jglow.checks import first_non_finite


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
