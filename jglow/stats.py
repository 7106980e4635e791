r"""Power spectra of 2-D maps in Pylians' `Pk_plane` conventions, and comparisons of spectra.

`power_spectrum(maps, box_size)` on maps `δ` of `n × n` pixels over a periodic box of side
`L` Mpc/h (SPEC §4):

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
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


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


@jax.jit
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
