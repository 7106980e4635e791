"""The MapSet record, the synthetic generator and its exact likelihood."""

import dataclasses
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from jglow import data
from jglow.data.synthetic import AMPLITUDE, LOG10_MEAN

BOX = 25.0


def _grid(n):
    """Cell centres of an `n × n` grid over PRIOR_BOX, `(n², 2)` float32, Ωm major."""
    (om_lo, om_hi), (s8_lo, s8_hi) = data.PRIOR_BOX
    om = om_lo + (np.arange(n) + 0.5) * (om_hi - om_lo) / n
    s8 = s8_lo + (np.arange(n) + 0.5) * (s8_hi - s8_lo) / n
    return np.stack(np.meshgrid(om, s8, indexing="ij"), axis=-1).reshape(-1, 2).astype(np.float32)


def _grid_log_likelihood(maps, grid):
    """`(G, N)` float64 log-likelihood of each map at each grid point."""
    fn = jax.jit(jax.vmap(lambda theta: data.synthetic_log_prob(maps, theta)))
    return np.asarray(fn(grid), np.float64)


def _dense_covariance(theta, n, box=BOX):
    """The generator's covariance of log10(map) on an n × n grid, built densely in float64
    from the documented formula `C = DFT⁻¹ diag(λ) DFT`, `λ_k = P(k_eff)·n²/L²`."""
    freq = np.rint(np.fft.fftfreq(n) * n)
    radius = np.hypot(freq[:, None], freq[None, :]).ravel()
    k_eff = 2 * np.pi / box * np.maximum(radius, 1.0)
    lam = np.asarray(data.synthetic_spectrum(k_eff, theta), np.float64) * n**2 / box**2
    dft_1d = np.exp(-2j * np.pi * np.outer(freq, np.arange(n)) / n)
    dft = np.kron(dft_1d, dft_1d)                     # (modes, pixels), row-major both
    return np.real(dft.conj().T @ np.diag(lam) @ dft) / n**2


def test_data_and_stats_import_without_the_model():
    """`jglow/__init__.py` may import these eagerly: they must not import `jglow.model` back."""
    package_dir = pathlib.Path(data.__file__).resolve().parents[1]
    code = ("import sys, types; package = types.ModuleType('jglow'); "
            f"package.__path__ = [{str(package_dir)!r}]; sys.modules['jglow'] = package; "
            "import jglow.data, jglow.stats; "
            "assert not any(name.startswith('jglow.model') for name in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- MapSet

def test_mapset_is_immutable_and_validated():
    ms = data.MapSet(np.ones((4, 2, 2)), np.zeros((4, 2)), np.arange(4))
    assert ms.maps.dtype == np.float32 and ms.params.dtype == np.float32 and len(ms) == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        ms.maps = np.zeros((4, 2, 2))
    with pytest.raises(ValueError, match="read-only"):
        ms.maps[0, 0, 0] = 2.0
    with pytest.raises(ValueError, match=r"params must have shape \(4, D\).*got \(3, 2\)"):
        data.MapSet(np.ones((4, 2, 2)), np.zeros((3, 2)), np.arange(4))
    with pytest.raises(ValueError, match=r"sim must have shape \(4,\).*got \(5,\)"):
        data.MapSet(np.ones((4, 2, 2)), np.zeros((4, 2)), np.arange(5))
    with pytest.raises(ValueError, match=r"maps must have shape \(N, H, W\), got \(4, 4\)"):
        data.MapSet(np.ones((4, 4)), np.zeros((4, 2)), np.arange(4))


# -------------------------------------------------------------------------- generator

def test_synthetic_maps_record_and_design():
    n_sims, per_sim = 20, 3
    ms = data.synthetic_maps(n_sims, per_sim, size=8, seed=0)
    assert ms.maps.shape == (60, 8, 8) and ms.maps.dtype == np.float32
    assert ms.params.shape == (60, 2) and np.all(ms.maps > 0)
    np.testing.assert_array_equal(ms.sim, np.arange(60) // per_sim)
    sim_params = ms.params[::per_sim]
    np.testing.assert_array_equal(ms.params, np.repeat(sim_params, per_sim, axis=0))
    for axis, (low, high) in enumerate(data.PRIOR_BOX):   # Latin hypercube: one per stratum
        strata = np.floor((sim_params[:, axis] - low) / (high - low) * n_sims).astype(int)
        np.testing.assert_array_equal(np.sort(strata), np.arange(n_sims))


def test_synthetic_maps_deterministic_in_seed():
    a, b = data.synthetic_maps(4, 2, 8, seed=7), data.synthetic_maps(4, 2, 8, seed=7)
    c = data.synthetic_maps(4, 2, 8, seed=8)
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.allclose(a.maps, c.maps) and not np.allclose(a.params, c.params)


def test_larger_sigma8_gives_larger_log_map_variance():
    """On the reference grid (64², 25 Mpc/h) E[(log10 map − μ)²] = (A σ8)² exactly."""
    sigma8 = np.array([0.6, 1.0], np.float32)
    params = np.stack([np.full(2, 0.3, np.float32), sigma8], axis=1)
    maps = data.sample_synthetic(params, maps_per_sim=100, size=64, seed=0)
    y = np.log10(maps.reshape(2, 100, 64, 64)) - LOG10_MEAN
    pixel_variance = np.mean(y**2, axis=(1, 2, 3))
    np.testing.assert_allclose(pixel_variance, (AMPLITUDE * sigma8) ** 2, rtol=0.1)
    assert pixel_variance[1] / pixel_variance[0] > 2.0      # (1.0 / 0.6)² = 2.8
    per_map_variance = y.var(axis=(2, 3))
    assert np.median(per_map_variance[1]) > np.median(per_map_variance[0])


def test_sampler_covariance_matches_dense_covariance():
    theta, n = np.array([0.25, 0.9], np.float32), 4
    maps = data.sample_synthetic(theta[None], maps_per_sim=40000, size=n, seed=2)
    y = (np.log10(maps) - LOG10_MEAN).reshape(-1, n * n).astype(np.float64)
    cov = _dense_covariance(theta, n)
    assert np.abs(y.mean(axis=0)).max() < 4 * np.sqrt(cov.diagonal().max() / len(y))
    assert np.abs(np.cov(y.T) - cov).max() < 0.03 * cov.diagonal().max()


# ------------------------------------------------------------------------- likelihood

@pytest.mark.parametrize("n", [4, 5])
def test_log_prob_equals_dense_multivariate_normal(n):
    theta = np.array([0.35, 0.75], np.float32)
    maps = data.sample_synthetic(theta[None], maps_per_sim=3, size=n, seed=1)
    y = np.log10(maps.astype(np.float64)).reshape(3, -1)
    dense = multivariate_normal(np.full(n * n, LOG10_MEAN), _dense_covariance(theta, n)).logpdf(y)
    dense -= np.sum(np.log(maps.astype(np.float64) * np.log(10.0)), axis=(1, 2))
    np.testing.assert_allclose(data.synthetic_log_prob(maps, theta), dense, rtol=1e-5)
    np.testing.assert_allclose(data.synthetic_log_prob(maps, np.tile(theta, (3, 1))), dense,
                               rtol=1e-5)


def test_log_prob_jits_and_vmaps_over_a_grid():
    ms = data.synthetic_maps(2, 2, 8, seed=0)
    grid = _grid(3)
    batched = _grid_log_likelihood(ms.maps, grid)
    assert batched.shape == (9, 4)
    for g in (0, 4, 8):
        np.testing.assert_allclose(batched[g], data.synthetic_log_prob(ms.maps, grid[g]), rtol=1e-6)
    jitted = jax.jit(data.synthetic_log_prob)(ms.maps, ms.params, BOX)
    np.testing.assert_allclose(jitted, data.synthetic_log_prob(ms.maps, ms.params), rtol=1e-6)


def test_log_prob_refuses_bad_shapes():
    maps = np.ones((3, 8, 8), np.float32)
    with pytest.raises(ValueError,
                       match=r"params must have shape \(2,\) or \(3, 2\).*got \(2, 2\)"):
        data.synthetic_log_prob(maps, np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"maps must have shape \(N, n, n\).*got \(3, 8, 4\)"):
        data.synthetic_log_prob(np.ones((3, 8, 4)), np.ones(2))


def test_grid_posterior_is_calibrated():
    """The truth falls in the 68% / 95% highest-posterior regions at those rates (±3σ)."""
    n_sims = 200
    ms = data.synthetic_maps(n_sims, maps_per_sim=1, size=8, seed=1)
    log_like = _grid_log_likelihood(ms.maps, _grid(30))                 # (G, S)
    at_truth = np.asarray(data.synthetic_log_prob(ms.maps, ms.params), np.float64)
    post = np.exp(log_like - log_like.max(axis=0))
    post /= post.sum(axis=0)
    order = np.argsort(-post, axis=0)
    mass = np.cumsum(np.take_along_axis(post, order, axis=0), axis=0)
    sorted_log_like = np.take_along_axis(log_like, order, axis=0)
    for level in (0.68, 0.95):
        last = np.argmax(mass >= level, axis=0)            # last cell of the HPD region
        threshold = sorted_log_like[last, np.arange(n_sims)]
        coverage = np.mean(at_truth >= threshold)
        assert abs(coverage - level) < 3 * np.sqrt(level * (1 - level) / n_sims), (level, coverage)


def test_posterior_concentrates_as_maps_are_added():
    theta = np.array([0.3, 0.8], np.float32)
    maps = data.sample_synthetic(theta[None], maps_per_sim=16, size=16, seed=0)
    grid = _grid(50).astype(np.float64)
    log_like = _grid_log_likelihood(maps, grid.astype(np.float32))
    widths = []
    for count in (1, 4, 16):
        total = log_like[:, :count].sum(axis=1)
        post = np.exp(total - total.max())
        post /= post.sum()
        mean = post @ grid
        sd = np.sqrt(post @ (grid - mean) ** 2)
        widths.append(sd)
    widths = np.array(widths)
    assert np.all(np.diff(widths, axis=0) < 0), widths
    assert np.all(widths[-1] < 0.6 * widths[0]), widths
    assert np.all(np.abs(mean - theta) < 3 * widths[-1]), (mean, widths[-1])


# ----------------------------------------------------------------------------- recipe

def test_the_synthetic_data_spec_is_the_recipe_s_synthetic_maps():
    ms = data.load_mapset("synthetic", 8, 3)
    expected = data.synthetic_maps(3, data.MAPS_PER_SIM, size=8, box_size=data.BOX_SIZE,
                                   seed=data.SYNTHETIC_SEED)
    assert ms.maps.shape == (3 * 15, 8, 8) and data.MAPS_PER_SIM == 15
    np.testing.assert_array_equal(ms.maps, expected.maps)
    np.testing.assert_array_equal(ms.params, expected.params)


def test_unusable_data_specs_raise_naming_the_spec(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"data '.*nowhere': expected a simulator.*found no such file"):
        data.load_mapset(str(tmp_path / "nowhere"), 8, 3)
    np.save(tmp_path / "Maps_HI_a.npy", np.ones((15, 12, 12), np.float32))
    with pytest.raises(data.DataSpecError,
                       match=r"maps of shape \(15, 12, 12\) cannot be block-averaged to 8×8; "
                             r"expected \(N, n, n\) with n a multiple of 8"):
        data.load_mapset(str(tmp_path), 8, 3)
    np.save(tmp_path / "Images_HI_b.npy", np.ones((15, 16, 16), np.float32))
    with pytest.raises(data.DataSpecError,
                       match=r"holds several maps files \['Maps_HI_a.npy', 'Images_HI_b.npy'\]; "
                             r"pass one of them"):
        data.load_mapset(str(tmp_path), 8, 3)
    assert issubclass(data.DataSpecError, ValueError)
