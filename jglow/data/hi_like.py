r"""HI-like maps: a fast simulator of maps that look like CAMELS HI column densities.

No likelihood is known for these maps; they exist so that jglow can be developed, tested and
judged on maps like its users' (filaments and halos over many decades, four feedback parameters
to marginalise, a fixed set of simulations), beside the lognormal generator
(`jglow.data.synthetic`), whose likelihood is exact.

One simulation, for parameters θ = (Ωm, σ8, A_SN1, A_AGN1, A_SN2, A_AGN2), maps of `n × n`
pixels and a periodic box of side `L = 25` Mpc/h:

1. **Linear field.** A Gaussian density contrast on a `m³` mesh, `m = MESH_PER_PIXEL · n`,
   with the linear spectrum of `jglow.data.cosmology.linear_power(k; Ωm, σ8)` (Eisenstein–Hu,
   normalised to σ8) at redshift `REDSHIFT`: `δ_k = D · W_k · sqrt(P(k) / V_cell)`, `W` the DFT
   of unit white noise, so the binned power `V_cell² |δ_k|² / L³` estimates `D² P(k)`.
2. **2LPT.** A particle per cell moves from its grid point `q` to
   `x = q + D ψ₁(q) + D₂ ψ₂(q)` (`lpt_displacements`), periodic; a cloud-in-cell assignment
   gives the matter overdensity `ρ = 1 + δ` on the mesh.
3. **HI painting.** `ρ_HI = f_HI Ωb ρ_crit · ρ_s · [x_ion ρ_s + s(ρ_s)] · q(ρ_s)` per cell,
   with `ρ_s` the density smoothed by a Gaussian of radius `R_SN`:
   - self-shielding `s(ρ) = 1 / (1 + (ρ_ss/ρ)^4)`: gas above `ρ_ss` is neutral, below it is
     photo-ionised and its neutral fraction falls as `x_ion ρ` (`X_ION = 1e-4`), so voids are
     five or more decades fainter than halos;
   - the four feedback parameters, each on one documented property (`FEEDBACK` holds the
     numbers), strong enough to change the maps and partly degenerate with (Ωm, σ8):

     - A_SN1 (supernova energy): the smoothing radius `R_SN = 0.15 A_SN1^{0.5}` Mpc/h; moves
       the small-scale power.
     - A_AGN1 (AGN energy): HI removed above `ρ_AGN = 40 / A_AGN1`, `q = 1 / (1 + ρ/ρ_AGN)`;
       moves the brightest pixels.
     - A_SN2 (wind speed): the self-shielding threshold `ρ_ss = 5 A_SN2^{0.8}`; moves the faint
       floor and the filling factor of bright gas.
     - A_AGN2 (ejection speed): the amplitude `f_HI = 0.02 A_AGN2^{−0.5}`; moves the mean level.

     Ωm enters through the spectrum's shape, σ8 through the amplitude of the fluctuations,
     which sets how much gas exceeds the self-shielding threshold; so the mean level and the
     bright fraction move with σ8, A_SN2 and A_AGN2 alike, and the small-scale power with Ωm,
     σ8 and A_SN1 (the partial degeneracies a model must marginalise).
4. **Maps.** As CAMELS makes them: the mesh is cut into `SLABS_PER_AXIS = 5` slabs of 5 Mpc/h
   along each of the three axes, each slab projected into a column density (the integral of
   `ρ_HI` along the slab, (M⊙/h)/(Mpc/h)²) and block-averaged to `n × n`: 15 maps.

Parameters are drawn on a Latin hypercube as CAMELS draws them: Ωm, σ8 uniform in
`PRIOR_BOX`, A_SN1 and A_AGN1 log-uniform in [0.25, 4], A_SN2 and A_AGN2 log-uniform in [0.5, 2].
The parameters of seed `s` (an integer or a sequence of them) come from the random stream
`(s, 0)` and simulation `i`'s initial conditions from `(s, 1, i)`, so a simulation is the same
whatever the number of simulations run beside it.
"""

import concurrent.futures
import dataclasses
import os

import numpy as np
import scipy.fft
from tqdm import tqdm

from jglow.data import cosmology
from jglow.data.mapset import MapSet
from jglow.data.prior import PRIOR_BOX, latin_hypercube

BOX_SIZE = 25.0
"""Side of the periodic box in Mpc/h, CAMELS's."""
MAPS_PER_SIM = 15
SLABS_PER_AXIS = 5
"""Slabs of `BOX_SIZE / 5` = 5 Mpc/h along each axis, as CAMELS's 2-D maps."""
MESH_PER_PIXEL = 2
"""Mesh cells (and particles) per map pixel along each side."""
REDSHIFT = 0.0
"""The maps' redshift (the CAMELS Multifield HI maps are at z = 0)."""
RHO_CRIT = 2.775e11
"""Critical density today in (M⊙/h)/(Mpc/h)³."""
X_ION = 1e-4
"""Neutral fraction of photo-ionised gas at the mean density (it scales as the density)."""

FEEDBACK_BOX = ((0.25, 4.0), (0.25, 4.0), (0.5, 2.0), (0.5, 2.0))
"""Ranges of A_SN1, A_AGN1, A_SN2, A_AGN2 (each log-uniform), as in the CAMELS LH design."""
PARAMETER_NAMES = ("Omega_m", "sigma_8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2")


@dataclasses.dataclass(frozen=True)
class Feedback:
    """How the four feedback parameters enter the HI painting (module docstring's table).

    Attributes:
      smoothing: Mpc/h, smoothing radius at A_SN1 = 1; `smoothing_slope` its power of A_SN1.
      agn_density: overdensity above which HI is removed at A_AGN1 = 1 (it falls as 1/A_AGN1).
      shielding_density: self-shielding overdensity at A_SN2 = 1; `shielding_slope` its power.
      hi_fraction: HI mass per baryon mass in neutral gas at A_AGN2 = 1; `hi_fraction_slope`
        its power of A_AGN2.
    """

    smoothing: float = 0.15
    smoothing_slope: float = 0.5
    agn_density: float = 40.0
    shielding_density: float = 5.0
    shielding_slope: float = 0.8
    hi_fraction: float = 0.02
    hi_fraction_slope: float = -0.5


FEEDBACK = Feedback()


def draw_parameters(n_sims, rng):
    """`(n_sims, 6)` float64 parameters on a Latin hypercube: Ωm, σ8 uniform over `PRIOR_BOX`,
    the four feedback amplitudes log-uniform over `FEEDBACK_BOX`."""
    log_feedback = [tuple(np.log(interval)) for interval in FEEDBACK_BOX]
    table = latin_hypercube(n_sims, box=(*PRIOR_BOX, *log_feedback), rng=rng)
    table[:, 2:] = np.exp(table[:, 2:])
    return table


def _wavevectors(m, box):
    """The rfftn wavevector components `(kx, ky, kz)` in h/Mpc of an `m³` mesh, broadcastable
    to `(m, m, m // 2 + 1)`."""
    full = 2.0 * np.pi / box * np.rint(np.fft.fftfreq(m) * m)
    half = 2.0 * np.pi / box * np.rint(np.fft.rfftfreq(m) * m)
    return full[:, None, None], full[None, :, None], half[None, None, :]


def linear_density(white_noise, box, omega_m, sigma_8, growth=1.0):
    """The Fourier modes of a Gaussian linear density contrast with spectrum `growth² P(k)`.

    Args:
      white_noise: `(m, m, m)` unit Gaussian noise.
      box: side in Mpc/h. omega_m, sigma_8: the cosmology. growth: the linear growth factor D.
    Returns:
      `(m, m, m // 2 + 1)` complex128 rfftn modes of δ (the DC mode and, for even `m`, the
      modes with a Nyquist component are 0: all lie beyond the `m // 2 − 1` bins measured).
    """
    m = white_noise.shape[0]
    kx, ky, kz = _wavevectors(m, box)
    k = np.sqrt(kx * kx + ky * ky + kz * kz)
    k[0, 0, 0] = 1.0
    amplitude = growth * np.sqrt(cosmology.linear_power(k, omega_m, sigma_8) / (box / m) ** 3)
    amplitude[0, 0, 0] = 0.0
    if m % 2 == 0:  # Nyquist modes have no real derivative: zero, so 2LPT's gradients are exact
        amplitude[m // 2], amplitude[:, m // 2], amplitude[..., m // 2] = 0.0, 0.0, 0.0
    return scipy.fft.rfftn(white_noise, workers=-1) * amplitude


def binned_power(delta, box):
    """The spherically averaged power spectrum of a real field `delta (m, m, m)`.

    Bins of width `kF = 2π/box` by `floor(|k| / kF)`, DC dropped, half-space modes.
    Returns `(k, power, modes)`: mean |k| (h/Mpc), mean `V_cell² |δ_k|² / box³`
    ((Mpc/h)³) and the number of modes per bin, over the bins `1 .. m // 2 − 1`.
    """
    m = delta.shape[0]
    kx, ky, kz = _wavevectors(m, box)
    k = np.broadcast_to(np.sqrt(kx * kx + ky * ky + kz * kz), (m, m, m // 2 + 1))
    power = np.abs(scipy.fft.rfftn(delta, workers=-1)) ** 2 * (box / m) ** 6 / box ** 3
    weight = np.ones(k.shape)
    weight[..., 1:(m + 1) // 2] = 2.0  # planes kz > 0 stand for their conjugates too
    index = np.floor(k / (2.0 * np.pi / box) + 1e-9).astype(int).ravel()
    bins = m // 2
    modes = np.bincount(index, weight.ravel(), minlength=bins)[1:bins]
    k_mean = np.bincount(index, (weight * k).ravel(), minlength=bins)[1:bins] / modes
    p_mean = np.bincount(index, (weight * power).ravel(), minlength=bins)[1:bins] / modes
    return k_mean, p_mean, modes


def lpt_displacements(delta_k, box, growth, omega_m, a=1.0):
    """First- and second-order Lagrangian displacements of a linear field.

    With the potential `∇²φ = δ`: `ψ₁ = −∇φ` (so `∇·ψ₁ = −δ`) and `ψ₂ = ∇φ₂`,
    `∇²φ₂ = Σ_{i<j} (φ_ii φ_jj − φ_ij²)`; derivatives are exact in Fourier space.

    Args:
      delta_k: `(m, m, m // 2 + 1)` rfftn modes of the linear density today (growth 1).
      box: Mpc/h. growth: D at the output time. omega_m, a: for `D₂`.
    Returns:
      `(first, second)`, each `(3, m, m, m)` float32 in Mpc/h: `D ψ₁` and `D₂ ψ₂`
      (`D₂ = cosmology.second_order_growth`), to be added to the grid positions.
    """
    m = delta_k.shape[0]
    wavevector = [component.astype(np.float32) for component in _wavevectors(m, box)]
    k2 = sum(component ** 2 for component in wavevector)
    k2[0, 0, 0] = 1.0
    potential = (-delta_k / k2).astype(np.complex64)  # ∇²φ = δ

    def real(modes):
        return scipy.fft.irfftn(modes, s=(m, m, m), workers=-1)

    first = np.stack([real(-1j * kc * potential) for kc in wavevector])  # ψ₁ = −∇φ
    hessian = {(i, j): real(-(wavevector[i] * wavevector[j]) * potential)
               for i in range(3) for j in range(i, 3)}
    source = (hessian[0, 0] * (hessian[1, 1] + hessian[2, 2]) + hessian[1, 1] * hessian[2, 2]
              - hessian[0, 1] ** 2 - hessian[0, 2] ** 2 - hessian[1, 2] ** 2)
    potential_2 = scipy.fft.rfftn(source, workers=-1) / -k2
    potential_2[0, 0, 0] = 0.0
    second = np.stack([real(1j * kc * potential_2) for kc in wavevector])  # ψ₂ = ∇φ₂
    growth_2 = cosmology.second_order_growth(growth, a, omega_m)
    return np.float32(growth) * first, np.float32(growth_2) * second


def cloud_in_cell(positions, m, box):
    """Overdensity `ρ = n / n̄` `(m, m, m)` float64 of equal-mass particles at `positions (3, P)`
    (Mpc/h, periodic), assigned to an `m³` mesh by cloud-in-cell (mean exactly 1)."""
    cell = np.mod(positions.astype(np.float64) * (m / box), m)
    low = np.floor(cell)
    high_weight = cell - low
    low = low.astype(np.int64) % m
    index = (low, (low + 1) % m)
    weight = (1.0 - high_weight, high_weight)
    density = np.zeros(m ** 3)
    for x in (0, 1):
        for y in (0, 1):
            plane = index[x][0] * (m * m) + index[y][1] * m
            plane_weight = weight[x][0] * weight[y][1]
            for z in (0, 1):
                density += np.bincount(plane + index[z][2], plane_weight * weight[z][2],
                                       minlength=m ** 3)
    return density.reshape(m, m, m) * (m ** 3 / positions.shape[1])


def _smoothed(field, box, radius):
    """`field (m, m, m)` convolved with a periodic Gaussian of `radius` Mpc/h."""
    kx, ky, kz = _wavevectors(field.shape[0], box)
    kernel = np.exp(-0.5 * radius ** 2 * (kx * kx + ky * ky + kz * kz))
    modes = scipy.fft.rfftn(field, workers=-1) * kernel
    return scipy.fft.irfftn(modes, s=field.shape, workers=-1)


def hi_density(density, box, params, feedback=FEEDBACK):
    """HI mass density `(m, m, m)` in (M⊙/h)/(Mpc/h)³ painted from the matter overdensity
    `density (m, m, m)` with parameters `params (6,)` (module docstring, step 3)."""
    _, _, a_sn1, a_agn1, a_sn2, a_agn2 = params
    smooth = np.maximum(_smoothed(density, box, feedback.smoothing
                                  * a_sn1 ** feedback.smoothing_slope), 1e-3)
    shielding = feedback.shielding_density * a_sn2 ** feedback.shielding_slope
    neutral = X_ION * smooth + 1.0 / (1.0 + (shielding / smooth) ** 4)
    quenched = 1.0 / (1.0 + smooth * a_agn1 / feedback.agn_density)
    amplitude = feedback.hi_fraction * a_agn2 ** feedback.hi_fraction_slope
    return amplitude * cosmology.OMEGA_B * RHO_CRIT * smooth * neutral * quenched


def _slab_weights(m, slabs):
    """`(slabs, m)`: the fraction of mesh cell `j` that lies in slab `s` along one axis."""
    edges = np.arange(m + 1) / m
    low, high = np.arange(slabs)[:, None] / slabs, np.arange(1, slabs + 1)[:, None] / slabs
    overlap = np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0.0, None)
    return overlap * m


def project_slabs(field, box, size, slabs=SLABS_PER_AXIS):
    """Column densities `(3 · slabs, size, size)` of a 3-D density `field (m, m, m)`: the
    integral along each axis over each of `slabs` equal slabs (cells split between two slabs
    count in proportion), block-averaged from `m × m` to `size × size`. Axis 0's slabs come
    first, then axis 1's, then axis 2's (each in the order of the remaining two axes)."""
    m = field.shape[0]
    weights = _slab_weights(m, slabs) * (box / m)
    columns = [np.einsum("sj,jab->sab", weights, field),
               np.einsum("sj,ajb->sab", weights, field),
               np.einsum("sj,abj->sab", weights, field)]
    maps = np.concatenate(columns)
    factor = m // size
    return maps.reshape(len(maps), size, factor, size, factor).mean(axis=(2, 4))


def simulate(params, size, rng, box=BOX_SIZE, feedback=FEEDBACK):
    """The 15 maps `(15, size, size)` float32 of one simulation with parameters `params (6,)`;
    `rng` a `numpy.random.Generator` for its initial conditions."""
    omega_m, sigma_8 = params[:2]
    m = MESH_PER_PIXEL * size
    a = 1.0 / (1.0 + REDSHIFT)
    growth = cosmology.growth_factor(a, omega_m)
    delta_k = linear_density(rng.standard_normal((m, m, m)), box, omega_m, sigma_8)
    first, second = lpt_displacements(delta_k, box, growth, omega_m, a)
    grid = (np.indices((m, m, m), np.float32) + 0.5) * np.float32(box / m)
    positions = (grid + first + second).reshape(3, -1)
    density = cloud_in_cell(positions, m, box)
    return project_slabs(hi_density(density, box, params, feedback), box, size).astype(np.float32)


def hi_like_maps(n_sims, size=32, seed=0, columns=(0, 1), progress=False):
    """`n_sims` HI-like simulations of 15 maps each, as a `MapSet`.

    Args:
      n_sims: simulations (parameters on one Latin hypercube of `n_sims` points).
      size: pixels per side, a power of two; the mesh is `2 size` cells a side.
      seed: an integer or a sequence of them (module docstring: random streams).
      columns: which of the six parameters `MapSet.params` keeps (default Ωm, σ8).
      progress: show a tqdm progress bar.
    Returns:
      `MapSet` with maps `(15 n_sims, size, size)` float32 in (M⊙/h)/(Mpc/h)²,
      params `(15 n_sims, len(columns))`, sim `(15 n_sims,)`;
      `hi_like_parameters(n_sims, seed)` gives all six parameters of each simulation.
    """
    table = hi_like_parameters(n_sims, seed)
    maps = simulate_all(table, size, seed, progress)
    sim = np.repeat(np.arange(n_sims), MAPS_PER_SIM)
    return MapSet(maps, table[sim][:, list(columns)], sim)


def hi_like_parameters(n_sims, seed=0):
    """The `(n_sims, 6)` parameters of `hi_like_maps(n_sims, seed=seed)`."""
    _check_count(n_sims)
    return draw_parameters(n_sims, np.random.default_rng([*_entropy(seed), 0]))


def simulate_all(table, size, seed, progress=False):
    """Maps `(15 S, size, size)` float32 of the simulations with parameters `table (S, 6)`,
    simulation `i` from the random stream `(seed, 1, i)`; simulations run on one thread per CPU
    core (numpy and scipy's FFTs release the GIL), the result is the same as run one by one."""
    _check_size(size)

    def one(i):
        return simulate(table[i], size, np.random.default_rng([*_entropy(seed), 1, i]))

    out = np.empty((MAPS_PER_SIM * len(table), size, size), np.float32)
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        bar = tqdm(pool.map(one, range(len(table))), total=len(table),
                   desc="HI-like simulations", unit="sim", disable=not progress)
        for i, maps in enumerate(bar):
            out[MAPS_PER_SIM * i:MAPS_PER_SIM * (i + 1)] = maps
    return out


def _entropy(seed):
    """`seed` (an integer or a sequence of integers) as a list of integers."""
    return [int(s) for s in np.atleast_1d(seed)]


def _check_count(n_sims):
    if not isinstance(n_sims, (int, np.integer)) or n_sims < 1:
        raise ValueError(f"n_sims must be a positive integer, got {n_sims!r}")


def _check_size(size):
    if not isinstance(size, (int, np.integer)) or size < 4 or size & (size - 1):
        raise ValueError(f"size must be a power of two >= 4 (pixels per side), got {size!r}")
