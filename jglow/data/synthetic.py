r"""Synthetic CAMELS-like HI maps with an exact likelihood.

The generator, for maps of `n × n` pixels over a periodic box of side `L` Mpc/h
(defaults `n = 64`, `L = 25`), with parameters `θ = (Ωm, σ8)`:

* Wavenumbers. `kF = 2π/L`; the DFT mode with integer frequencies `(a, b)` (numpy's
  `fftfreq(n) * n` order) has `k = kF·sqrt(a² + b²)` in h/Mpc, and `k_eff = max(k, kF)`:
  the DC mode is given the variance of the fundamental, so the map mean fluctuates from map
  to map and the covariance is non-degenerate.
* Shape. `S(k; Ωm) = k^{n_s} · T(k/Γ)²` with `Γ = Ωm·h`, `h = HUBBLE = 0.7`,
  `n_s = N_S = 0.96` and the BBKS transfer function
  `T(q) = ln(1 + 2.34 q)/(2.34 q) · [1 + 3.89 q + (16.1 q)² + (5.46 q)³ + (6.71 q)⁴]^(−1/4)`
  (the 3-D ΛCDM shape, used directly as the spectrum of the 2-D field).
* Amplitude. `P(k; θ) = (A·σ8)² · L_ref² · S(k; Ωm) / Σ_ref S(k_eff; Ωm)` in (Mpc/h)², where
  `Σ_ref` runs over all `64 × 64` DFT modes of the reference box `L_ref = 25` Mpc/h (DC at
  its fundamental) and `A = AMPLITUDE = 1` dex. So on the reference grid the pixel variance of
  `log10(map)` is exactly `(A·σ8)²` (a standard deviation of 0.6–1.0 dex across the prior);
  other grids sample the same continuum `P(k)` (a smaller or coarser grid has less variance).
* Field. Per-mode variance `λ_k = P(k_eff; θ)·n²/L²` and
  `y = log10(map) = μ + IDFT[sqrt(λ_k) · DFT(w)]` with `w ~ N(0, I)` white noise on the
  `n × n` pixels and `μ = LOG10_MEAN = 8` (the DFT unnormalised forward, `1/n²` on the
  inverse, as numpy). `λ_k = λ_{−k}`, so `y` is real and exactly Gaussian with the circulant
  covariance `C = DFT⁻¹ diag(λ) DFT`; `map = 10^y` is lognormal. With this normalisation
  the Pylians-convention power spectrum of `y − μ` (see `jglow.stats.power_spectrum`) has
  expectation `P(k_eff)` mode by mode.
* Exact density, in nats, of one raw map:
  `log p(map | θ) = −½ Σ_k |DFT(y − μ)_k|² / (n² λ_k) − ½ Σ_k log λ_k − ½ n² log 2π
  − Σ_pixels ln(map · ln 10)`, the sums over all `n²` modes and pixels; the last term is the
  Jacobian of `map = 10^y`. Maps are independent given `θ`.

Parameters of `synthetic_maps` are drawn on a Latin hypercube over `PRIOR_BOX`, one point
per simulation, shared by its `maps_per_sim` maps.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jglow.compilation import jit
from jglow.data.mapset import MapSet
from jglow.data.prior import PRIOR_BOX, latin_hypercube

HUBBLE = 0.7
"""Dimensionless Hubble constant `h` in the shape parameter `Γ = Ωm·h`."""
N_S = 0.96
"""Primordial spectral index."""
AMPLITUDE = 1.0
"""`A`: the standard deviation of `log10(map)` on the reference grid is `A·σ8` dex."""
LOG10_MEAN = 8.0
"""`μ`: the mean of `log10(map)`, map in (M⊙/h)/(Mpc/h)² like CAMELS HI column densities."""
REFERENCE_SIZE = 64
"""Pixels per side of the grid on which the amplitude is normalised."""
REFERENCE_BOX = 25.0
"""Side in Mpc/h of the box on which the amplitude is normalised."""

_GENERATION_CHUNK = 1024  # maps drawn per FFT batch in `sample_synthetic`


def _integer_radii(n, half):
    """`sqrt(a² + b²)` for the DFT frequencies `(a, b)` of an `n × n` grid, numpy float64.

    Shape `(n, n // 2 + 1)` (the rfft2 half plane) if `half`, else `(n, n)`.
    """
    a = np.rint(np.fft.fftfreq(n) * n)
    b = np.rint(np.fft.rfftfreq(n) * n) if half else a
    return np.hypot(a[:, None], b[None, :])


def _log_bbks_transfer(q):
    """`log T(q)` of the BBKS transfer function, `q = k / Γ` (any shape)."""
    poly = 1.0 + 3.89 * q + (16.1 * q) ** 2 + (5.46 * q) ** 3 + (6.71 * q) ** 4
    return jnp.log(jnp.log1p(2.34 * q) / (2.34 * q)) - 0.25 * jnp.log(poly)


def _log_shape(k, omega_m):
    """`log S(k; Ωm) = n_s log k + 2 log T(k / (Ωm h))`, broadcasting `k` against `omega_m`."""
    return N_S * jnp.log(k) + 2.0 * _log_bbks_transfer(k / (omega_m * HUBBLE))


def _log_amplitude(params):
    """`log[(A σ8)² L_ref² / Σ_ref S(k_eff; Ωm)]` for `params` `(..., 2)`; shape `(...)`."""
    params = jnp.asarray(params, jnp.float32)
    k_fundamental = 2.0 * math.pi / REFERENCE_BOX
    k_ref = k_fundamental * np.maximum(_integer_radii(REFERENCE_SIZE, half=False), 1.0).ravel()
    log_norm = jax.nn.logsumexp(_log_shape(k_ref, params[..., 0, None]), axis=-1)
    return 2.0 * jnp.log(AMPLITUDE * params[..., 1] * REFERENCE_BOX) - log_norm


@jit
def synthetic_spectrum(k, params):
    """The generator's power spectrum `P(k; Ωm, σ8)` of `log10(map)` in (Mpc/h)².

    Args:
      k: `(K,)` wavenumbers in h/Mpc, positive.
      params: `(..., 2)` physical `(Ωm, σ8)`.
    Returns:
      `(..., K)` float32. `P(k)` is the expectation of the Pylians-convention estimator
      (`jglow.stats.power_spectrum`) of `log10(map) − LOG10_MEAN` for one mode at `k ≥ kF`.
    """
    params = jnp.asarray(params, jnp.float32)
    k = jnp.asarray(k, jnp.float32)
    return jnp.exp(_log_amplitude(params)[..., None] + _log_shape(k, params[..., 0, None]))


def _log_mode_variance(params, size, box_size):
    """`log λ_k` on the rfft2 half plane: `(..., size, size // 2 + 1)` for `params` `(..., 2)`."""
    params = jnp.asarray(params, jnp.float32)
    k_eff = (2.0 * math.pi / box_size) * np.maximum(_integer_radii(size, half=True), 1.0)
    log_shape = _log_shape(k_eff, params[..., 0, None, None])
    return (_log_amplitude(params)[..., None, None] + log_shape
            + 2.0 * jnp.log(size / box_size))


def _half_plane_multiplicity(size):
    """`(size, size // 2 + 1)` float32: how many full-plane DFT modes each rfft2 mode stands for.

    Columns `b = 0` and (for even `size`) `b = size / 2` are their own mirror images (1);
    every other column also stands for its mirror `−b` (2).
    """
    mult = np.full((size, size // 2 + 1), 2.0, np.float32)
    mult[:, 0] = 1.0
    if size % 2 == 0:
        mult[:, -1] = 1.0
    return mult


def _check_square_stack(maps, name="maps"):
    """`maps` must be `(N, n, n)`; returns `n`."""
    shape = tuple(maps.shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"{name} must have shape (N, n, n) (square maps), got {shape}")
    return shape[1]


def _check_params(params, n_maps):
    """`params` must be `(2,)` or `(n_maps, 2)`."""
    shape = tuple(params.shape)
    if shape not in ((2,), (n_maps, 2)):
        raise ValueError(f"params must have shape (2,) or ({n_maps}, 2) (Ωm, σ8), got {shape}")


@jit
def _log_prob(maps, params, box_size):
    """`synthetic_log_prob` after its shape checks: maps `(N, n, n)`, params `(2,)` or `(N, 2)`."""
    size = maps.shape[-1]
    n_pix = size * size
    power = jnp.abs(jnp.fft.rfft2(jnp.log10(maps) - LOG10_MEAN)) ** 2
    log_var = _log_mode_variance(params, size, box_size)
    mult = _half_plane_multiplicity(size)
    quad = jnp.sum(mult * power * jnp.exp(-log_var), axis=(-2, -1)) / n_pix
    log_det = jnp.sum(mult * log_var, axis=(-2, -1))
    log_jacobian = jnp.sum(jnp.log(maps), axis=(1, 2)) + n_pix * math.log(math.log(10.0))
    return -0.5 * (quad + log_det + n_pix * math.log(2.0 * math.pi)) - log_jacobian


def synthetic_log_prob(maps, params, box_size=25.0):
    """Exact log density in nats of raw maps under the synthetic generator (module docstring).

    Pure jnp: jit-able and vmappable, e.g. over a parameter grid
    `jax.vmap(lambda th: synthetic_log_prob(maps, th))(grid)` → `(G, N)`.

    Args:
      maps: `(N, n, n)` raw, strictly positive maps (non-positive pixels give NaN / −inf).
      params: `(N, 2)` physical `(Ωm, σ8)` of each map, or `(2,)` shared by all maps.
      box_size: side of the box in Mpc/h.
    Returns:
      `(N,)` float32 `log p(map | θ)`, including the Jacobian of `map = 10^y`.
    """
    maps = jnp.asarray(maps, jnp.float32)
    params = jnp.asarray(params, jnp.float32)
    _check_square_stack(maps)
    _check_params(params, maps.shape[0])
    return _log_prob(maps, params, box_size)


@jit
def _coloured_maps(noise, params, box_size):
    """`10^(μ + IDFT[sqrt(λ_k) DFT(noise)])`: `(S, M, n, n)` for noise `(S, M, n, n)` and
    params `(S, 2)` (one parameter point per leading index, shared by its `M` maps)."""
    size = noise.shape[-1]
    std = jnp.exp(0.5 * _log_mode_variance(params, size, box_size))[:, None]
    field = jnp.fft.irfft2(std * jnp.fft.rfft2(noise), s=(size, size))
    return jnp.power(10.0, field + LOG10_MEAN)


def sample_synthetic(params, maps_per_sim=1, size=64, box_size=25.0, seed=0):
    """`maps_per_sim` synthetic maps per row of `params` (module docstring).

    Args:
      params: `(S, 2)` physical `(Ωm, σ8)`, one row per simulation.
      maps_per_sim: maps drawn per row; map `i` has the parameters of row `i // maps_per_sim`.
      size: pixels per side `n`.
      box_size: side of the box in Mpc/h.
      seed: anything `numpy.random.default_rng` accepts (an int, a `SeedSequence`).
    Returns:
      `(S · maps_per_sim, size, size)` float32 maps, strictly positive; deterministic in `seed`.
    """
    params = np.asarray(params, np.float32)
    if params.ndim != 2 or params.shape[1] != 2:
        raise ValueError(f"params must have shape (S, 2) (Ωm, σ8), got {params.shape}")
    rng = np.random.default_rng(seed)
    maps = np.empty((params.shape[0], maps_per_sim, size, size), np.float32)
    step = max(1, _GENERATION_CHUNK // maps_per_sim)
    for start in range(0, params.shape[0], step):
        part = slice(start, start + step)
        noise = rng.standard_normal(maps[part].shape, dtype=np.float32)
        maps[part] = _coloured_maps(noise, params[part], box_size)
    return maps.reshape(-1, size, size)


def synthetic_maps(n_sims, maps_per_sim=15, size=64, box_size=25.0, seed=0):
    """A synthetic CAMELS-like data set (module docstring), deterministic in `seed`.

    Args:
      n_sims: number of simulations, i.e. of Latin-hypercube points over `PRIOR_BOX`.
      maps_per_sim: maps per simulation, stored consecutively (map `i` is of sim
        `i // maps_per_sim`).
      size: pixels per side.
      box_size: side of the box in Mpc/h.
      seed: a non-negative int or a sequence of them (`numpy.random.SeedSequence` entropy); the
        design and the noise use independent child streams of it.
    Returns:
      `MapSet` with maps `(N, size, size)` float32 > 0, params `(N, 2)` (Ωm, σ8) and sim `(N,)`,
      `N = n_sims · maps_per_sim`.
    """
    design_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
    sim_params = latin_hypercube(n_sims, PRIOR_BOX, np.random.default_rng(design_seed))
    maps = sample_synthetic(sim_params, maps_per_sim, size, box_size, noise_seed)
    sim = np.repeat(np.arange(n_sims), maps_per_sim)
    return MapSet(maps, sim_params[sim], sim)
