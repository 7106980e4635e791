r"""A summary-statistic baseline: the Gaussian likelihood of a few numbers of each map.

What a field-level model must beat. For each raw map, `summary_statistics` gives
`8 + 4` numbers of `y = log10(map)`: the log of its power spectrum in 8 bins (Pylians
`Pk_plane` conventions, `jglow.stats.power_spectrum`, merged into bins spaced evenly in log k
from the fundamental to the Nyquist wavenumber) and four one-point moments of the pixels (the
mean, the log of the standard deviation, the skewness and the excess kurtosis).

The likelihood of the statistics `s` of one map is `N(s; μ(θ), Σ)`:

* `μ(θ)` is a quadratic polynomial in the box coordinates `u = to_unit_box(θ)` (1, u₁, u₂, u₁²,
  u₁u₂, u₂²), fitted by least squares to the training maps: the statistics move smoothly with
  (Ωm, σ8) across the prior box, and a quadratic captures that with 6 coefficients per number.
* `Σ` is the pooled covariance of the fit's residuals over all training maps, with the Hartlap
  factor `(N − p − 2) / (N − 1)` on its inverse (`N` maps, `p` numbers). One covariance for all
  θ: the log transforms make the scatter of these numbers nearly independent of θ, a θ-dependent
  covariance fitted from a thousand simulations would add noise, and a constant one carries no
  spurious information through its determinant. The residuals of maps from simulations with
  different feedback (or other nuisance) parameters hold that variation too, so the baseline
  marginalises it as the data set samples it.

`SummaryLikelihood` follows the likelihood protocol of `jglow.posterior.likelihood` (raw maps
`(B, H, W)`, physical `thetas (M, D)` → `(B, M)` nats), so the grid posteriors, the calibration
and the figures treat it as they treat the flow. Its values are densities of the statistics,
not of the maps: posteriors and calibration are comparable, likelihood values are not.
"""

import json
import pathlib

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jglow.data.prior import to_unit_box
from jglow.errors import InputError
from jglow.stats import power_spectrum

N_POWER_BINS = 8
MOMENTS = ("mean", "log_std", "skewness", "excess_kurtosis")
N_STATISTICS = N_POWER_BINS + len(MOMENTS)
STATISTICS_CHUNK = 512
"""Maps whose statistics are computed at a time (bounded memory for any number of maps)."""


def power_bin_edges(size, n_bins=N_POWER_BINS):
    """Edges `(n_bins + 1,)` in units of the fundamental kF over the Pylians bin indices
    `1 .. size // 2`: spaced evenly in log from 1 to `size // 2 + 1`, each bin at least one
    index wide."""
    if size // 2 < n_bins:
        raise InputError(f"maps of {size}×{size} pixels have {size // 2} power-spectrum bins "
                         f"up to the Nyquist wavenumber; expected at least {n_bins}")
    edges = [1]
    for target in np.geomspace(1, size // 2 + 1, n_bins + 1)[1:]:
        edges.append(max(edges[-1] + 1, int(round(target))))
    edges[-1] = size // 2 + 1
    return np.array(edges)


def summary_statistics(maps, box_size=25.0):
    """The `N_STATISTICS` summary numbers of each raw map (module docstring).

    Args:
      maps: `(N, n, n)` positive raw maps; box_size: their side in Mpc/h.
    Returns:
      `(N, 12)` float64: log P(k) of `log10(map)` in 8 bins ((Mpc/h)² dex², natural log),
      then the mean (dex), log standard deviation, skewness and excess kurtosis of its pixels.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise InputError(f"maps must have shape (N, n, n), got {maps.shape}")
    edges = power_bin_edges(maps.shape[1])
    return np.concatenate([_statistics(maps[start:start + STATISTICS_CHUNK], edges, box_size)
                           for start in range(0, len(maps), STATISTICS_CHUNK)])


def _statistics(maps, edges, box_size):
    """`summary_statistics` of a few maps `(N, n, n)` with power bins `edges`."""
    y = np.log10(maps.astype(np.float64))
    _, pk, modes = power_spectrum(y, box_size)
    pk, modes = np.asarray(pk, np.float64), np.asarray(modes, np.float64)
    index = np.arange(1, pk.shape[1] + 1)  # Pylians bin i holds floor(|k| / kF) = i
    groups = [(index >= lo) & (index < hi) for lo, hi in zip(edges[:-1], edges[1:])]
    binned = np.stack([(pk[:, g] * modes[g]).sum(axis=1) / modes[g].sum() for g in groups],
                      axis=1)
    pixels = y.reshape(len(y), -1)
    mean = pixels.mean(axis=1)
    centred = pixels - mean[:, None]
    variance = np.mean(centred ** 2, axis=1)
    skewness = np.mean(centred ** 3, axis=1) / variance ** 1.5
    kurtosis = np.mean(centred ** 4, axis=1) / variance ** 2 - 3.0
    return np.column_stack([np.log(binned), mean, 0.5 * np.log(variance), skewness, kurtosis])


def quadratic_features(u):
    """`(..., 6)` features `1, u₁, u₂, u₁², u₁u₂, u₂²` of box coordinates `u (..., 2)`."""
    u1, u2 = u[..., 0], u[..., 1]
    xp = jnp if isinstance(u, jax.Array) else np
    return xp.stack([xp.ones_like(u1), u1, u2, u1 * u1, u1 * u2, u2 * u2], axis=-1)


@flax.struct.dataclass
class SummaryLikelihood:
    """`log N(s(map); μ(θ), Σ)` of the summary statistics `s` (module docstring).

    Attributes:
      coefficients: `(6, 12)` the quadratic mean's coefficients.
      precision: `(12, 12)` the Hartlap-corrected inverse covariance.
      log_norm: the Gaussian's log normalisation `−½ log det(2π Σ_H)`.
      low, high: `(2,)` the prior box (physical units).
      box_size: the maps' side in Mpc/h.
    """

    coefficients: jax.Array
    precision: jax.Array
    log_norm: jax.Array
    low: jax.Array
    high: jax.Array
    box_size: float = flax.struct.field(pytree_node=False, default=25.0)

    @property
    def box(self):
        """The prior box `((low, high), …)` it was fitted over."""
        return tuple(zip(np.asarray(self.low).tolist(), np.asarray(self.high).tolist()))

    def mean(self, thetas):
        """`μ(θ)` `(M, 12)` at physical `thetas (M, 2)`."""
        u = to_unit_box(jnp.asarray(thetas, jnp.float32), self.low, self.high)
        return quadratic_features(u) @ self.coefficients

    def __call__(self, maps, thetas):
        """Raw maps `(B, n, n)`, physical `thetas (M, 2)` → `(B, M)` float32 nats."""
        stats = jnp.asarray(summary_statistics(np.asarray(maps), self.box_size), jnp.float32)
        return _gaussian_table(self, stats, jnp.asarray(thetas, jnp.float32))

    def save(self, path):
        """Write the fitted numbers to `path` (JSON)."""
        record = {name: np.asarray(getattr(self, name)).tolist()
                  for name in ("coefficients", "precision", "log_norm", "low", "high")}
        record["box_size"] = self.box_size
        pathlib.Path(path).write_text(json.dumps(record))

    @classmethod
    def load(cls, path):
        """The `SummaryLikelihood` written by `save` at `path`."""
        try:
            record = json.loads(pathlib.Path(path).read_text())
            arrays = {name: jnp.asarray(record[name], jnp.float32)
                      for name in ("coefficients", "precision", "log_norm", "low", "high")}
            return cls(**arrays, box_size=float(record["box_size"]))
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{path}: not a summary-statistic baseline written by "
                             f"SummaryLikelihood.save ({error!r})") from None


@jax.jit
def _gaussian_table(likelihood, stats, thetas):
    """`(B, M)`: `log N(stats_b; μ(θ_m), Σ)` for `stats (B, 12)`, `thetas (M, 2)`."""
    residual = stats[:, None, :] - likelihood.mean(thetas)[None, :, :]
    quadratic = jnp.einsum("bmi,ij,bmj->bm", residual, likelihood.precision, residual)
    return likelihood.log_norm - 0.5 * quadratic


def fit_summary_likelihood(maps, params, box, box_size=25.0):
    """Fit the baseline to training maps: `fit_to_statistics` of their `summary_statistics`.

    Args:
      maps: `(N, n, n)` raw training maps; params: `(N, 2)` their physical (Ωm, σ8).
      box: the prior box `((low, high), (low, high))`; box_size: the maps' side in Mpc/h.
    Returns:
      `SummaryLikelihood`.
    Raises:
      InputError: fewer than `minimum_training_maps()` maps (too few for the covariance of 12
        numbers), or statistics that are not finite.
    """
    _check_count(len(params))
    return fit_to_statistics(summary_statistics(maps, box_size), params, box, box_size)


def fit_to_statistics(stats, params, box, box_size=25.0):
    """The `SummaryLikelihood` of statistics `stats (N, 12)` of maps with physical parameters
    `params (N, 2)`: the least-squares quadratic mean and the Hartlap-corrected pooled residual
    covariance (module docstring). Raises `InputError` as `fit_summary_likelihood`."""
    params = np.asarray(params, np.float64)
    n_maps = len(params)
    _check_count(n_maps)
    if not np.all(np.isfinite(stats)):
        bad = int(np.argmax(~np.all(np.isfinite(stats), axis=1)))
        raise InputError(f"summary statistics of training map {bad} are not finite: "
                         f"{stats[bad].tolist()}")
    low, high = np.asarray(box, np.float64).T
    features = quadratic_features(to_unit_box(params, low, high))
    coefficients, *_ = np.linalg.lstsq(features, stats, rcond=None)
    residual = stats - features @ coefficients
    covariance = residual.T @ residual / (n_maps - features.shape[1])
    hartlap = (n_maps - N_STATISTICS - 2) / (n_maps - 1)
    precision = hartlap * np.linalg.inv(covariance)
    _, log_det_precision = np.linalg.slogdet(precision)
    log_norm = 0.5 * log_det_precision - 0.5 * N_STATISTICS * np.log(2 * np.pi)
    as32 = lambda a: jnp.asarray(a, jnp.float32)
    return SummaryLikelihood(as32(coefficients), as32(precision), as32(log_norm), as32(low),
                             as32(high), float(box_size))


def _check_count(n_maps):
    if n_maps < minimum_training_maps():
        raise InputError(f"the summary-statistic baseline needs at least "
                         f"{minimum_training_maps()} training maps to fit a {N_STATISTICS}×"
                         f"{N_STATISTICS} covariance beside a quadratic mean; got {n_maps}")


def minimum_training_maps():
    """The fewest training maps the fit accepts: 4 × (12 numbers + 6 mean coefficients)."""
    return 4 * (N_STATISTICS + 6)
