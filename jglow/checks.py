"""Argument validation done on concrete values before any tracing: the parameters' type, the
shapes and values of maps, conditions and latents, and the posterior's own arguments (chunk
sizes, grid axes and point counts, truths). Every error is an `InputError` (a `ValueError`) that
names the bad value and what was expected, or a `TypeError` for parameters of the wrong type.

Values of maps, conditions, latents and temperatures are checked only when concrete: under
`jax.jit`/`vmap` (traced values, e.g. the trainer's conditions moved by noise on purpose) only
their shapes are.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jglow.config import GlowConfig
from jglow.data.validation import check_positive_maps
from jglow.errors import InputError
from jglow.model_params import EnsembleParams, GlowParams

BOX = (-1.0, 1.0)
"""The prior box in model space: every condition the model was trained on lies in it."""


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
        raise InputError(f"{name} must have shape {expected} (N, H, W, C), got {shape}")
    return shape[0]


def check_conditions(config: GlowConfig, z, batch: int, name: str = "z") -> None:
    """`z` must be `(batch, cond_dim)`."""
    shape = tuple(getattr(z, "shape", ()))
    if len(shape) != 2 or shape[1] != config.cond_dim:
        raise InputError(f"{name} must have shape (N, {config.cond_dim}) (N, cond_dim), got "
                         f"{shape}")
    if shape[0] != batch:
        raise InputError(f"{name} has batch size {shape[0]} but the maps have {batch}; "
                         f"expected {name} of shape ({batch}, {config.cond_dim})")


def check_latents(config: GlowConfig, latents) -> int:
    """`latents` must be `(N, H·W·C)`; returns `N`."""
    shape = tuple(getattr(latents, "shape", ()))
    if len(shape) != 2 or shape[1] != config.dim:
        raise InputError(f"latents must have shape (N, {config.dim}) (N, H*W*C), got {shape}")
    return shape[0]


def real_array(value, name: str):
    """`value` as a float32 jax array. Concrete values must be real numbers: complex values,
    strings and other objects are refused (`InputError` naming the dtype); traced ones pass.
    A jax array stays where it is (no copy to the host)."""
    if isinstance(value, jax.core.Tracer):
        return jnp.asarray(value, jnp.float32)
    array = value if isinstance(value, jax.Array) else np.asarray(value)
    if array.dtype.kind == "c":
        raise InputError(f"{name} is complex ({array.dtype}); expected real numbers")
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name} has dtype {array.dtype}; expected real numbers")
    return jnp.asarray(array, jnp.float32)


def concrete_values(array, name: str, item: str) -> None:
    """`first_non_finite` of `array` `(N, ...)` unless it is traced; only a failing array is
    copied to the host to find its first bad value. The reduction runs at once even inside a
    trace of another function (`jax.ensure_compile_time_eval`)."""
    if isinstance(array, jax.core.Tracer):
        return
    with jax.ensure_compile_time_eval():
        finite = bool(jnp.all(jnp.isfinite(array)))
    if not finite:
        first_non_finite(array, name, item)


def in_box(z, name: str = "z") -> None:
    """Concrete conditions `z (N, D)` must lie in the prior box `BOX` (model space); raises
    `InputError` naming the first value outside. Traced conditions pass."""
    if isinstance(z, jax.core.Tracer):
        return
    z = np.asarray(z)
    outside = (z < BOX[0]) | (z > BOX[1])
    if outside.any():
        row, column = (int(i) for i in np.argwhere(outside)[0])
        raise InputError(f"{name}[{row}, {column}] = {float(z[row, column])!r} lies outside the "
                         f"prior box [{BOX[0]:g}, {BOX[1]:g}] (model space) the model was trained "
                         f"on; expected conditions in it, or extrapolate=True to evaluate the "
                         f"model outside it")


def maps_and_conditions(config: GlowConfig, x, z, extrapolate: bool):
    """Validated float32 `(x (N, H, W, C), z (N, D))`: shapes; when concrete, real finite values
    and `z` in the prior box unless `extrapolate`."""
    x, z = real_array(x, "x"), real_array(z, "z")
    check_conditions(config, z, check_maps(config, x))
    concrete_values(x, "x", "map")
    return x, conditions_of(z, extrapolate)


def latents_and_conditions(config: GlowConfig, latents, z, extrapolate: bool):
    """Validated float32 `(latents (N, H·W·C), z (N, D))`, as `maps_and_conditions`."""
    latents, z = real_array(latents, "latents"), real_array(z, "z")
    check_conditions(config, z, check_latents(config, latents))
    concrete_values(latents, "latents", "row")
    return latents, conditions_of(z, extrapolate)


def sampling_conditions(config: GlowConfig, z, extrapolate: bool):
    """Validated float32 conditions `z (N, D)` to sample at, as `maps_and_conditions`."""
    z = real_array(z, "z")
    check_conditions(config, z, z.shape[0] if z.ndim == 2 else -1)
    return conditions_of(z, extrapolate)


def conditions_of(z, extrapolate: bool):
    """`z (N, D)`, its concrete values checked: finite, and in the box unless `extrapolate`."""
    concrete_values(z, "z", "condition")
    if not extrapolate:
        in_box(z)
    return z


def temperature(value):
    """A sampling temperature as a float32 scalar: a real number, finite and >= 0 when concrete
    (0 gives each prior's mean, the mode)."""
    if isinstance(value, jax.core.Tracer):
        return jnp.asarray(value, jnp.float32)
    array = np.asarray(value)
    if (array.shape != () or array.dtype.kind not in "iuf"
            or not (np.isfinite(array) and array >= 0)):
        raise InputError(f"temperature must be a finite real number >= 0 (0: each prior's "
                         f"mean), got {value!r}")
    return jnp.float32(value)


def first_non_finite(array, name: str, item: str) -> None:
    """Raise if `array` `(N, ...)` holds a NaN or infinity, naming the first bad item's index.

    `item` names what the leading axis counts ("map", "condition") in the message.
    """
    array = np.asarray(array)
    finite = np.isfinite(array).reshape(array.shape[0], int(np.prod(array.shape[1:])))
    bad = ~finite.all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        position = np.unravel_index(int(np.argmin(finite[i])), array.shape[1:])
        raise InputError(f"{name}: {item} {i} has the non-finite value "
                         f"{float(array[i][position])!r} at "
                         f"index {tuple(int(p) for p in position)}; expected finite values")


def model_maps(x, image_shape) -> np.ndarray:
    """Model-space maps `(H, W, C)` or `(B, H, W, C)` → float32 `(B, H, W, C)`, finite."""
    x = np.asarray(x, np.float32)
    image_shape = tuple(image_shape)
    if x.shape == image_shape:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != image_shape or x.shape[0] < 1:
        raise InputError(f"x must have shape {image_shape} (H, W, C) or "
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
        raise InputError(f"maps must have shape (H, W) or (B, H, W) with B >= 1, got {maps.shape}")
    check_positive_maps(maps, "maps")
    return maps


def conditions(zs, dim: int, name: str = "zs") -> np.ndarray:
    """Conditions `(M, dim)` with `M >= 1`, finite → float32."""
    zs = np.asarray(zs, np.float32)
    if zs.ndim != 2 or zs.shape[1] != dim:
        raise InputError(f"{name} must have shape (M, {dim}) (M points of dimension {dim}), "
                         f"got {zs.shape}")
    if zs.shape[0] == 0:
        raise InputError(f"{name} is empty (shape {zs.shape}); expected at least one point")
    first_non_finite(zs, name, "point")
    return zs


# --- the posterior's own arguments -----------------------------------------------------------

def chunk_size(value):
    """`None` or a positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or value < 1):
        raise InputError(f"chunk_size must be None or a positive int, got {value!r}")
    return None if value is None else int(value)


def grid_axes(axes, dim: int, names) -> tuple:
    """A rectangular grid as `dim` 1-D axes, each finite, strictly increasing, >= 2 points."""
    axes = tuple(np.asarray(axis, np.float64) for axis in axes)
    if len(axes) != dim:
        raise InputError(f"the grid has {len(axes)} axes; expected {dim}, one per parameter "
                         f"{tuple(names)}")
    for axis, name in zip(axes, names):
        if axis.ndim != 1 or axis.size < 2:
            raise InputError(f"grid axis {name} has shape {axis.shape}; expected a 1-D array of "
                             f"at least 2 points")
        if not np.all(np.isfinite(axis)) or not np.all(np.diff(axis) > 0):
            raise InputError(f"grid axis {name} = {axis.tolist()} must be finite and strictly "
                             f"increasing")
    return axes


def truths(values, n_maps: int, dim: int) -> np.ndarray:
    """Physical truths `(n_maps, dim)`, one row per map, finite → float64."""
    values = np.asarray(values, np.float64)
    if values.shape != (n_maps, dim):
        raise InputError(f"truths has shape {values.shape}; expected ({n_maps}, {dim}), one row "
                         f"of {dim} physical parameters per map")
    first_non_finite(values, "truths", "row")
    return values


def point_counts(grid, dim: int, names) -> tuple:
    """`grid` as `dim` point counts per axis (ints >= 2): an int or a sequence of ints."""
    counts = (grid,) * dim if isinstance(grid, (int, np.integer)) else tuple(grid)
    if (len(counts) != dim or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
                                      and n >= 2 for n in counts)):
        raise InputError(f"grid = {counts!r}: expected {dim} point counts (ints >= 2), one "
                         f"per parameter {tuple(names)}")
    return tuple(int(n) for n in counts)
