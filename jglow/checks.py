"""Argument validation done on concrete values before any tracing: the parameters' type, the
shapes and values of maps, conditions and latents, and the posterior's own arguments (chunk
sizes, grid axes and point counts, truths). Every error names the bad value and what was
expected.
"""

import numpy as np

from jglow.config import GlowConfig
from jglow.data.validation import check_positive_maps
from jglow.model_params import EnsembleParams, GlowParams


def check_params(params, ensembles: bool = False):
    """The first argument of the model functions must be a `GlowParams` from `jglow.init` or
    `jglow.load`; with `ensembles`, an `EnsembleParams` (`jglow.ensemble`) is accepted too."""
    if isinstance(params, GlowParams) or (ensembles and isinstance(params, EnsembleParams)):
        return
    if isinstance(params, EnsembleParams):
        raise TypeError("params is an EnsembleParams (a mixture of models) but this function "
                        "takes one model's GlowParams; jglow.log_prob, jglow.sample and "
                        "jglow.posterior take an ensemble, jglow.ensemble.member(params, k) "
                        "is one member")
    expected = "GlowParams or EnsembleParams" if ensembles else "GlowParams"
    raise TypeError(f"params must be the {expected} returned by jglow.init or jglow.load, "
                    f"got {type(params).__name__}")


def check_maps(config: GlowConfig, x, name: str = "x") -> int:
    """`x` must be `(N, H, W, C)` with `(H, W, C) == config.image_shape`; returns `N`."""
    shape = tuple(getattr(x, "shape", ()))
    expected = "(N, {}, {}, {})".format(*config.image_shape)
    if len(shape) != 4 or shape[1:] != config.image_shape:
        raise ValueError(f"{name} must have shape {expected} (N, H, W, C), got {shape}")
    return shape[0]


def check_conditions(config: GlowConfig, z, batch: int, name: str = "z") -> None:
    """`z` must be `(batch, cond_dim)`."""
    shape = tuple(getattr(z, "shape", ()))
    if len(shape) != 2 or shape[1] != config.cond_dim:
        raise ValueError(f"{name} must have shape (N, {config.cond_dim}) (N, cond_dim), got "
                         f"{shape}")
    if shape[0] != batch:
        raise ValueError(f"{name} has batch size {shape[0]} but the maps have {batch}; "
                         f"expected {name} of shape ({batch}, {config.cond_dim})")


def check_latents(config: GlowConfig, latents) -> int:
    """`latents` must be `(N, H·W·C)`; returns `N`."""
    shape = tuple(getattr(latents, "shape", ()))
    if len(shape) != 2 or shape[1] != config.dim:
        raise ValueError(f"latents must have shape (N, {config.dim}) (N, H*W*C), got {shape}")
    return shape[0]


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


# --- the posterior's own arguments -----------------------------------------------------------

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
