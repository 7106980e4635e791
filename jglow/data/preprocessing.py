r"""Invertible, savable preprocessing of raw maps and physical parameters.

Maps: `y = log10(map)` (dex), `u = (y − center) / scale`, then

* `"minmax"`: `x = u`, with `center`, `scale` the midpoint and half-range of `y` over the
  training maps, so the training maps fill `[−1, 1]` exactly;
* `"sigmoid"` (the HIGlow paper's): `x = 2·sigmoid(u) − 1 = tanh(u / 2)` in `(−1, 1)`, with
  `center`, `scale` the mean and standard deviation of `y` over the training maps.

`x` gets a trailing channel axis: maps `(N, H, W)` ↔ `x` `(N, H, W, 1)`. The log-Jacobian
`forward_log_det(maps) = Σ_pixels log |∂x/∂map|` (nats) turns a model density of `x` into
one of raw maps: `log p(map) = log p(x) + forward_log_det(map)`.

Parameters: each column is mapped affinely from its prior interval (`PRIOR_BOX` for Ωm, σ8)
onto `[−1, 1]`.

Precision (float32): the round trip is exact to ~1e-6 relative for "minmax" (the log is taken
of `map / 10^center`, a number near 1). "sigmoid" stores `1 − |x|` with an absolute
resolution of ~6e-8, so maps more than ~3 standard deviations from the mean lose precision
(relative error ≈ 3e-8·ln10·scale / (1 − x²)), an intrinsic property of the squashing.

Bad input: `forward_maps` and `forward_log_det` raise `ValueError` naming the first map with
a non-positive or non-finite pixel when given concrete arrays. Under `jax.jit`/`vmap` (traced
input) nothing is checked: such pixels give NaN (negative) or −inf/inf (zero, inf) values.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jglow.compilation import jit
from jglow.data.prior import PRIOR_BOX, from_unit_box, to_unit_box
from jglow.data.validation import check_positive_chunk, check_positive_maps, map_chunks

METHODS = ("minmax", "sigmoid")
SIGMOID_RANGE = 3.0
"""With "sigmoid", the training maps' range is taken as `log10` within this many standard
deviations of their mean (`Preprocessing.trained_range`)."""
_LN10 = math.log(10.0)


def _check_rank(array, rank, expected, name):
    """`array` must have `rank` axes; `expected` describes the shape in the message."""
    if jnp.ndim(array) != rank:
        raise ValueError(f"{name} must have shape {expected}, got {jnp.shape(array)}")


def _check_concrete_maps(maps):
    """Raise `ValueError` naming the first bad map of a concrete `(N, H, W)` stack; no-op when
    traced."""
    _check_rank(maps, 3, "(N, H, W)", "maps")
    if not isinstance(maps, jax.core.Tracer):
        check_positive_maps(np.asarray(maps), "maps")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """A fitted map and parameter transform (module docstring). Immutable and hashable.

    Attributes:
      method: "minmax" or "sigmoid".
      center: dex; midpoint (minmax) or mean (sigmoid) of `log10` of the training maps.
      scale: dex, > 0; half-range (minmax) or standard deviation (sigmoid).
      box: `((low, high), …)` prior interval of each parameter column.
    """

    method: str
    center: float
    scale: float
    box: tuple = PRIOR_BOX

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not (math.isfinite(self.center) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"center must be finite and scale finite and > 0, got "
                             f"center={self.center!r}, scale={self.scale!r}")
        box = tuple((float(low), float(high)) for low, high in self.box)
        if not all(high > low for low, high in box):
            raise ValueError(f"box must be ((low, high), ...) with high > low, got {self.box!r}")
        object.__setattr__(self, "center", float(self.center))
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "box", box)

    def forward_maps(self, maps):
        """Raw maps `(N, H, W)` → model-space `x` `(N, H, W, 1)` float32."""
        _check_concrete_maps(maps)
        return _forward_maps(self, jnp.asarray(maps, jnp.float32))

    def inverse_maps(self, x):
        """Model-space `x` `(N, H, W, 1)` → raw maps `(N, H, W)` float32."""
        _check_rank(x, 4, "(N, H, W, 1)", "x")
        return _inverse_maps(self, jnp.asarray(x, jnp.float32))

    def forward_log_det(self, maps):
        """`log |det ∂x/∂maps|` in nats, `(N,)`, for raw maps `(N, H, W)`."""
        _check_concrete_maps(maps)
        return _forward_log_det(self, jnp.asarray(maps, jnp.float32))

    def _box_arrays(self, params, name):
        """`(low, high)` float32 `(D,)` arrays after checking `params`' last axis is `D`."""
        low, high = np.asarray(self.box, np.float32).T
        if jnp.ndim(params) < 1 or jnp.shape(params)[-1] != len(low):
            raise ValueError(f"{name} must have shape (..., {len(low)}) (one column per box "
                             f"interval {self.box}), got {jnp.shape(params)}")
        return low, high

    def forward_params(self, params):
        """Physical parameters `(..., D)` → conditions `z` in `[−1, 1]` on the box, `(..., D)`."""
        low, high = self._box_arrays(params, "params")
        return to_unit_box(jnp.asarray(params, jnp.float32), low, high)

    def inverse_params(self, z):
        """Conditions `z` `(..., D)` → physical parameters `(..., D)`."""
        low, high = self._box_arrays(z, "z")
        return from_unit_box(jnp.asarray(z, jnp.float32), low, high)

    def trained_range(self) -> tuple:
        """`(low, high)` in dex: the range of `log10` of the training maps' pixels ("minmax":
        all of them, model space `[−1, 1]`; "sigmoid": within `SIGMOID_RANGE` standard
        deviations of their mean)."""
        half = self.scale if self.method == "minmax" else SIGMOID_RANGE * self.scale
        return self.center - half, self.center + half

    def fraction_outside(self, maps) -> np.ndarray:
        """`(N,)` float64: the fraction of each raw map's pixels `(N, H, W)` whose `log10` lies
        outside `trained_range()`; pixels that are not positive and finite count as outside."""
        low, high = self.trained_range()
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.log10(np.asarray(maps, np.float64))
        inside = (y >= low) & (y <= high)
        return 1.0 - inside.reshape(len(y), -1).mean(axis=1)

    def to_dict(self):
        """A JSON-serialisable dict of plain strings, floats and lists."""
        return {"method": self.method, "center": self.center, "scale": self.scale,
                "box": [list(interval) for interval in self.box]}

    @classmethod
    def from_dict(cls, data):
        """The inverse of `to_dict`."""
        missing = {"method", "center", "scale", "box"} - set(data)
        if missing:
            raise ValueError(f"preprocessing dict lacks {sorted(missing)}; expected the keys "
                             f"method, center, scale, box of Preprocessing.to_dict()")
        return cls(data["method"], float(data["center"]), float(data["scale"]),
                   tuple(tuple(interval) for interval in data["box"]))


def _standardised(prep, maps):
    """`u = (log10(maps) − center) / scale`; the log is of `maps / 10^center` (near 1) for
    float32 precision."""
    return jnp.log10(maps / np.float32(10.0**prep.center)) / prep.scale


@jit(static_argnums=0)
def _forward_maps(prep, maps):
    """`Preprocessing.forward_maps` after its checks."""
    u = _standardised(prep, maps)
    x = u if prep.method == "minmax" else jnp.tanh(0.5 * u)
    return x[..., None]


@jit(static_argnums=0)
def _inverse_maps(prep, x):
    """`Preprocessing.inverse_maps` after its check."""
    x = x[..., 0]
    u = x if prep.method == "minmax" else 2.0 * jnp.arctanh(x)
    return np.float32(10.0**prep.center) * jnp.power(10.0, prep.scale * u)


@jit(static_argnums=0)
def _forward_log_det(prep, maps):
    """`Preprocessing.forward_log_det` after its checks."""
    log_dx = -jnp.log(maps) - math.log(prep.scale * _LN10)
    if prep.method == "sigmoid":
        u = _standardised(prep, maps)
        log_dx = log_dx + math.log(2.0) + jax.nn.log_sigmoid(u) + jax.nn.log_sigmoid(-u)
    return jnp.sum(log_dx, axis=(1, 2))


def _log10_moments(maps):
    """Min, max, mean and standard deviation of `log10(maps)` over all pixels (float64),
    read in chunks and checked for positive finite pixels."""
    low, high, total, total_sq, count = math.inf, -math.inf, 0.0, 0.0, 0
    for part in map_chunks(maps):
        chunk = np.asarray(maps[part])
        check_positive_chunk(chunk, part.start, "maps")
        y = np.log10(chunk, dtype=np.float64)
        low, high = min(low, y.min()), max(high, y.max())
        total, total_sq, count = total + y.sum(), total_sq + np.square(y).sum(), count + y.size
    mean = total / count
    return low, high, mean, math.sqrt(max(total_sq / count - mean**2, 0.0))


def fit_preprocessing(maps, method="minmax", box=PRIOR_BOX):
    """Fit the map transform on training maps `(N, H, W)` (array or memory map; read in chunks).

    Args:
      maps: raw training maps, strictly positive and finite (else `ValueError` naming the map).
      method: "minmax" (`log10` to `[−1, 1]`) or "sigmoid" (standardise, `2·sigmoid − 1`).
      box: prior interval of each parameter column, default `PRIOR_BOX` (Ωm, σ8).
    Returns:
      `Preprocessing`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_rank(maps, 3, "(N, H, W)", "maps")
    low, high, mean, std = _log10_moments(maps)
    if method == "minmax":
        return Preprocessing(method, 0.5 * (low + high), 0.5 * (high - low), box)
    return Preprocessing(method, mean, std, box)
