r"""Power spectra of 2-D maps in Pylians' `Pk_plane` conventions, and comparisons of spectra.

`power_spectrum(maps, box_size)` on maps `δ` of `n × n` pixels over a periodic box of side
`L` Mpc/h:

* The field is used as given: not divided by its mean, the mean not subtracted (it only
  enters the DC mode, which is dropped). No mass-assignment correction (Pylians `MAS='None'`).
* `δ_k = Σ_x δ_x e^{−2πi k·x/n}` (unnormalised DFT). Modes: `k_x` over all `n` frequencies
  (first map axis), `k_y ≥ 0` (second map axis, the rfft half plane); on the lines
  `k_y = 0` and (even `n`) `k_y = n/2` only `k_x ≥ 0` is kept, `k_x = n/2` counted as
  positive. These are Pylians' independent modes: every mode of the full plane is one of
  them or the complex conjugate of one.
* Bin of a mode: `floor(|k| / kF)`, `kF = 2π/L`, `|k|` in units of `kF` as integer
  frequencies. Bin 0 holds only the DC mode and is dropped; bins `1 … K` are kept with
  `K = floor(sqrt(2)·(n // 2))`, i.e. up to the corner of the grid (as Pylians), not only
  to the Nyquist radius `kN = (n // 2)·kF`: bins above `kN` hold only the corner modes.
* `k` of a bin is the mean `|k|` of its modes (h/Mpc); `P = ⟨|δ_k|²⟩ (L/n²)²` averaged
  over its modes, in (Mpc/h)² times the units of `δ` squared; `nmodes` is their number.

Parseval: with `m_j` the self-conjugate non-DC modes (`k = (n/2, 0), (0, n/2), (n/2, n/2)`
for even `n`; none for odd `n`),
`L² var(δ) = 2 Σ_bins nmodes·P − (L/n²)² Σ_j |δ_{m_j}|²`.

Comparisons of a generated set with a true one (the emulator checks of `train.evaluate`):
`r2_score` (the HIGlow R² of the mean spectrum), `spectrum_ratios` (per-k ratios of means and
standard deviations), `within_standard_errors` (fraction of k bins whose means agree within
`n` standard errors), `score_summary` (median, mean, 10th percentile, fraction above a threshold
of per-simulation scores), `pixel_pdfs` and `ks_distance` (one-point distributions).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jglow.compilation import jit


def _independent_modes(n):
    """Pylians' independent modes of an `n × n` grid in the rfft2 layout `(n, n // 2 + 1)`.

    Returns `(flat_index, bin_index, radius, n_bins)`: positions in the flattened rfft2
    output, bin minus one (DC excluded) and `|k|` in units of kF, each `(M,)` numpy over the
    `M` non-DC modes, and the number of bins `K`.
    """
    kx = np.arange(n)
    kx = np.where(kx > n // 2, kx - n, kx)          # 0, 1, …, n // 2, …, −1 (n // 2 positive)
    ky = np.arange(n // 2 + 1)
    kx_grid, ky_grid = np.meshgrid(kx, ky, indexing="ij")
    mirrored_line = (ky_grid == 0) | ((n % 2 == 0) & (ky_grid == n // 2))
    radius = np.hypot(kx_grid, ky_grid)
    keep = ~(mirrored_line & (kx_grid < 0)) & (radius > 0)
    flat_index = np.flatnonzero(keep)
    radius = radius.ravel()[flat_index]
    bin_index = np.floor(radius).astype(np.int32) - 1
    return flat_index, bin_index, radius, int(math.isqrt(2 * (n // 2) ** 2))


@jit
def _power_spectrum(maps, box_size):
    """`power_spectrum` after its shape check, maps `(N, n, n)` float32."""
    n = maps.shape[1]
    flat_index, bin_index, radius, n_bins = _independent_modes(n)
    nmodes = np.bincount(bin_index, minlength=n_bins)
    mean_radius = np.bincount(bin_index, weights=radius, minlength=n_bins) / nmodes
    # Rescale each map by its largest |value| so |δ_k|² cannot overflow float32.
    scale = jax.lax.stop_gradient(jnp.max(jnp.abs(maps), axis=(1, 2)))
    scale = jnp.where(scale > 0, scale, 1.0)
    modes = jnp.fft.rfft2(maps / scale[:, None, None]).reshape(maps.shape[0], -1)[:, flat_index]
    power = jax.ops.segment_sum(jnp.abs(modes.T) ** 2, bin_index, num_segments=n_bins).T
    pk = power / nmodes * (scale[:, None] * box_size / n**2) ** 2
    k = jnp.asarray(mean_radius, jnp.float32) * (2.0 * math.pi / box_size)
    return k, pk, jnp.asarray(nmodes, jnp.int32)


def power_spectrum(maps, box_size=25.0):
    """Power spectra of square periodic maps in Pylians `Pk_plane` conventions (module docstring).

    Batched and jit-able (`box_size` may be traced; the binning depends on the shape only).

    Args:
      maps: `(N, n, n)` fields (e.g. `log10` HI maps, or overdensities).
      box_size: side `L` of the box in Mpc/h.
    Returns:
      `k` `(K,)` float32 mean `|k|` per bin in h/Mpc, `pk` `(N, K)` float32 in (Mpc/h)² times
      the field's units squared, `nmodes` `(K,)` int32, with `K = floor(sqrt(2)·(n // 2))`.
    """
    maps = jnp.asarray(maps, jnp.float32)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"maps must have shape (N, n, n) (square maps), got {tuple(maps.shape)}")
    return _power_spectrum(maps, box_size)


def _check_spectra(pk, name):
    """`pk` must be a set of spectra `(N, K)`."""
    if jnp.ndim(pk) != 2:
        raise ValueError(f"{name} must have shape (N, K) (a set of spectra), got {jnp.shape(pk)}")


def mean_std_power(pk):
    """Mean and standard deviation (ddof 0) over a set of spectra `pk` `(N, K)`: two `(K,)`."""
    _check_spectra(pk, "pk")
    return jnp.mean(pk, axis=0), jnp.std(pk, axis=0)


def r2_score(pk_gen, pk_true):
    """The HIGlow paper's R² of generated against true spectra (linear P, unweighted over k).

    With `Ḡ_k` and `T̄_k` the means over maps of `pk_gen` `(N_gen, K)` and `pk_true`
    `(N_true, K)`: `R² = 1 − Σ_k (Ḡ_k − T̄_k)² / Σ_k (T̄_k − mean_k T̄)²`. 1 is a perfect
    match; it is negative when `Ḡ` misses `T̄` by more than `T̄` varies across bins.
    Returns a scalar.
    """
    _check_spectra(pk_gen, "pk_gen")
    _check_spectra(pk_true, "pk_true")
    mean_gen, mean_true = jnp.mean(pk_gen, axis=0), jnp.mean(pk_true, axis=0)
    residual = jnp.sum((mean_gen - mean_true) ** 2)
    total = jnp.sum((mean_true - jnp.mean(mean_true)) ** 2)
    return 1.0 - residual / total


def spectrum_ratios(pk_gen, pk_true):
    """Ratios of generated to true spectra, bin by bin.

    Args:
      pk_gen: `(N_gen, K)` generated spectra; pk_true: `(N_true, K)` true spectra (same bins).
    Returns:
      `(mean_ratio, std_ratio)`, two `(K,)`: `Ḡ_k / T̄_k` of the means over maps and
      `σ(G)_k / σ(T)_k` of the standard deviations (ddof 0). 1 is a perfect match.
    """
    _check_spectra(pk_gen, "pk_gen")
    _check_spectra(pk_true, "pk_true")
    (mean_gen, std_gen), (mean_true, std_true) = mean_std_power(pk_gen), mean_std_power(pk_true)
    return mean_gen / mean_true, std_gen / std_true


def within_standard_errors(pk_gen, pk_true, n_se=2.0):
    """Fraction of k bins where the generated mean lies within `n_se` standard errors of the true.

    The standard error is that of the difference of the two means, `sqrt(s_G²/N_gen +
    s_T²/N_true)` with sample standard deviations `s` (ddof 1), so both sets need at least two
    spectra. When both are drawn from one distribution the difference is, for many maps, Gaussian
    with that standard deviation: a perfect generator scores about 0.954 for `n_se = 2`.

    Args:
      pk_gen: `(N_gen, K)` generated spectra; pk_true: `(N_true, K)` true spectra.
      n_se: the tolerance in standard errors.
    Returns:
      A scalar in [0, 1] (a bin is inside when `|Ḡ_k − T̄_k| <= n_se · SE_k`).
    """
    _check_spectra(pk_gen, "pk_gen")
    _check_spectra(pk_true, "pk_true")
    if min(jnp.shape(pk_gen)[0], jnp.shape(pk_true)[0]) < 2:
        raise ValueError(f"standard errors need at least 2 spectra per set, got "
                         f"{jnp.shape(pk_gen)[0]} generated and {jnp.shape(pk_true)[0]} true")
    mean_gen, mean_true = jnp.mean(pk_gen, axis=0), jnp.mean(pk_true, axis=0)
    variance = (jnp.var(pk_gen, axis=0, ddof=1) / pk_gen.shape[0]
                + jnp.var(pk_true, axis=0, ddof=1) / pk_true.shape[0])
    return jnp.mean(jnp.abs(mean_gen - mean_true) <= n_se * jnp.sqrt(variance))


def score_summary(scores, threshold=0.9):
    """Summary of per-simulation scores (e.g. R²) `(S,)`; NaN scores are counted, not summarised.

    Returns:
      A dict of floats: `median`, `mean`, `p10` (10th percentile) and `fraction_above`
      (the fraction of all `S` scores above `threshold`, NaN counting as not above) over the
      finite scores, with `threshold`, `n` (= S) and `n_nan`.
    """
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must have shape (S,) with S >= 1, got {scores.shape}")
    finite = scores[np.isfinite(scores)]
    summary = (dict(median=np.median(finite), mean=np.mean(finite),
                    p10=np.percentile(finite, 10)) if finite.size
               else dict(median=np.nan, mean=np.nan, p10=np.nan))
    return {**{name: float(value) for name, value in summary.items()},
            "fraction_above": float(np.mean(scores > threshold)), "threshold": float(threshold),
            "n": int(scores.size), "n_nan": int(scores.size - finite.size)}


def _finite_values(values):
    """The finite entries of `values` (any shape) as a flat float32 array."""
    values = np.asarray(values, np.float32).ravel()
    return values[np.isfinite(values)]


def _check_nonempty(values_true, values_gen, name):
    if not values_true.size or not values_gen.size:
        raise ValueError(f"{name} needs finite values in both sets, got {values_true.size} "
                         f"true and {values_gen.size} generated")


def pixel_pdfs(values_true, values_gen, bins=60):
    """Histogram densities of two sets of pixel values on common bins.

    Args:
      values_true, values_gen: arrays of any shape (e.g. `log10` maps in dex); only finite
        values count.
      bins: number of equal bins spanning the finite values of both sets.
    Returns:
      `(edges (bins + 1,), density_true (bins,), density_gen (bins,))`, numpy; each density
      integrates to 1 over the edges (units: 1 / units of the values).
    """
    values_true, values_gen = _finite_values(values_true), _finite_values(values_gen)
    _check_nonempty(values_true, values_gen, "pixel_pdfs")
    both = np.concatenate([values_true, values_gen])
    edges = np.histogram_bin_edges(both, bins, range=(both.min(), both.max()))
    density_true, _ = np.histogram(values_true, edges, density=True)
    density_gen, _ = np.histogram(values_gen, edges, density=True)
    return edges, density_true, density_gen


def ks_distance(values_true, values_gen):
    """The Kolmogorov–Smirnov distance of two sets of values (any shapes, finite values only):
    the largest difference of their empirical CDFs, a float in [0, 1] (0 for identical sets, 1
    for disjoint ones)."""
    values_true = np.sort(_finite_values(values_true))
    values_gen = np.sort(_finite_values(values_gen))
    _check_nonempty(values_true, values_gen, "ks_distance")
    points = np.concatenate([values_true, values_gen])
    cdf_true = np.searchsorted(values_true, points, side="right") / values_true.size
    cdf_gen = np.searchsorted(values_gen, points, side="right") / values_gen.size
    return float(np.max(np.abs(cdf_true - cdf_gen)))
