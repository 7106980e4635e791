r"""Linear ΛCDM theory for the HI-like simulator: the Eisenstein–Hu transfer function, the
linear matter power spectrum normalised to σ8, and the linear growth factors.

Units: wavenumbers `k` in h/Mpc, lengths in Mpc/h, power in (Mpc/h)³. The cosmology is flat
ΛCDM with CAMELS's fixed parameters (`OMEGA_B`, `HUBBLE`, `N_S`); Ωm and σ8 vary.

* Transfer function: the "no-wiggle" fit of Eisenstein & Hu 1998 (ApJ 496, 605, eqs. 26 and
  28–31), which keeps the baryons' suppression of small-scale power but not the acoustic
  oscillations (at k < 0.3 h/Mpc, where they live, a 25 Mpc/h box has a handful of modes).
* Spectrum: `P(k) = A k^{n_s} T(k)²`, `A` such that the rms of the linear density in spheres
  of 8 Mpc/h is σ8 (`sigma_r`, top-hat window).
* Growth: `D(a) ∝ H(a) ∫₀^a da' / (a' H(a'))³` normalised to `D(1) = 1` (Heath 1977), and the
  second-order growth `D₂ = −(3/7) D² Ωm(a)^{−1/143}` (Bouchet et al. 1995) that 2LPT uses.
"""

import numpy as np

OMEGA_B = 0.049
"""Baryon density of the CAMELS simulations."""
HUBBLE = 0.6711
"""Dimensionless Hubble constant h of the CAMELS simulations."""
N_S = 0.9624
"""Primordial spectral index of the CAMELS simulations."""
T_CMB = 2.7255
"""CMB temperature in K."""

_LOG_K_GRID = np.linspace(np.log(1e-5), np.log(1e3), 8001)
"""ln k of the quadrature grid of `sigma_r` (k in h/Mpc)."""


def eisenstein_hu_transfer(k, omega_m, omega_b=OMEGA_B, h=HUBBLE, t_cmb=T_CMB):
    """The no-wiggle Eisenstein–Hu transfer function `T(k)` (dimensionless, → 1 as k → 0).

    Args:
      k: wavenumbers in h/Mpc, any shape, > 0.
      omega_m, omega_b: matter and baryon densities today; h: the Hubble constant / 100.
    Returns:
      `T(k)`, float64, the shape of `k`.
    """
    k = np.asarray(k, np.float64)
    omh2, ombh2, baryon_fraction = omega_m * h * h, omega_b * h * h, omega_b / omega_m
    theta = t_cmb / 2.7
    sound_horizon = 44.5 * np.log(9.83 / omh2) / np.sqrt(1.0 + 10.0 * ombh2 ** 0.75)  # Mpc
    alpha = (1.0 - 0.328 * np.log(431.0 * omh2) * baryon_fraction
             + 0.38 * np.log(22.3 * omh2) * baryon_fraction ** 2)
    k_mpc = k * h
    gamma = omega_m * h * (alpha + (1.0 - alpha) / (1.0 + (0.43 * k_mpc * sound_horizon) ** 4))
    q = k * theta ** 2 / gamma
    log_term = np.log(2.0 * np.e + 1.8 * q)
    return log_term / (log_term + (14.2 + 731.0 / (1.0 + 62.5 * q)) * q * q)


def top_hat_window(x):
    """The Fourier transform of a unit-volume sphere, `3 (sin x − x cos x) / x³` (→ 1 at 0)."""
    x = np.asarray(x, np.float64)
    small = np.abs(x) < 1e-3
    safe = np.where(small, 1.0, x)
    exact = 3.0 * (np.sin(safe) - safe * np.cos(safe)) / safe ** 3
    return np.where(small, 1.0 - x * x / 10.0, exact)


def _unnormalised_spectrum(k, omega_m):
    """`k^{n_s} T(k)²`: the linear spectrum's shape, in arbitrary units."""
    return np.asarray(k, np.float64) ** N_S * eisenstein_hu_transfer(k, omega_m) ** 2


def sigma_r(power, radius=8.0):
    """The rms of a linear density field in top-hat spheres of `radius` Mpc/h,
    `σ²(R) = ∫ k³ P(k) W(kR)² / (2π²) d ln k`, for `power` a function of k (h/Mpc) giving
    (Mpc/h)³. Trapezoidal in ln k over [1e-5, 1e3] h/Mpc (8,001 points)."""
    k = np.exp(_LOG_K_GRID)
    integrand = k ** 3 * power(k) * top_hat_window(k * radius) ** 2 / (2.0 * np.pi ** 2)
    return float(np.sqrt(np.trapezoid(integrand, _LOG_K_GRID)))


def linear_power(k, omega_m, sigma_8):
    """The linear matter power spectrum today, `P(k)` in (Mpc/h)³ at `k` in h/Mpc (any shape),
    normalised so that `sigma_r(P, 8) = sigma_8`."""
    unit = sigma_r(lambda q: _unnormalised_spectrum(q, omega_m))
    return (sigma_8 / unit) ** 2 * _unnormalised_spectrum(k, omega_m)


def omega_m_at(a, omega_m):
    """Ωm(a) of flat ΛCDM at scale factor `a`."""
    matter = omega_m / a ** 3
    return matter / (matter + 1.0 - omega_m)


def growth_factor(a, omega_m, points=4001):
    """The linear growth factor `D(a)`, normalised to `D(1) = 1`, of flat ΛCDM.

    `D(a) ∝ E(a) ∫₀^a da' / (a' E(a'))³` with `E(a) = sqrt(Ωm a⁻³ + 1 − Ωm)`; trapezoidal on
    `points` nodes uniform in `a'`.
    """
    def unnormalised(end):
        nodes = np.linspace(0.0, end, points)[1:]
        hubble = np.sqrt(omega_m / nodes ** 3 + 1.0 - omega_m)
        integrand = 1.0 / (nodes * hubble) ** 3
        # ∫₀^{a₁} behaves as a^{3/2} / (3/2 Ωm^{3/2}) near 0: added for the first interval.
        head = nodes[0] ** 1.5 / (1.5 * omega_m ** 1.5)
        return np.sqrt(omega_m / end ** 3 + 1.0 - omega_m) * (head + np.trapezoid(integrand,
                                                                                   nodes))
    return float(unnormalised(a) / unnormalised(1.0))


def second_order_growth(growth, a, omega_m):
    """`D₂ = −(3/7) D² Ωm(a)^{−1/143}`: the growth of the second-order Lagrangian displacement."""
    return -3.0 / 7.0 * growth ** 2 * omega_m_at(a, omega_m) ** (-1.0 / 143.0)
