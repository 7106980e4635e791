"""The summary-statistic baseline: its statistics, its fit, its calibration on maps of known
spectra, its refusals, and its files."""

import jax
import numpy as np
import pytest

from jglow import posterior
from jglow.data import PRIOR_BOX, synthetic_maps
from jglow.errors import InputError
from jglow.posterior.summary import (N_STATISTICS, SummaryLikelihood, fit_summary_likelihood,
                                     fit_to_statistics, minimum_training_maps, power_bin_edges,
                                     summary_statistics)
from jglow.stats import power_spectrum


def test_power_bins_cover_the_indices_up_to_nyquist():
    np.testing.assert_array_equal(power_bin_edges(16), np.arange(1, 10))
    np.testing.assert_array_equal(power_bin_edges(32), [1, 2, 3, 4, 5, 6, 8, 12, 17])
    with pytest.raises(InputError, match="maps of 8×8 pixels have 4 power-spectrum bins"):
        power_bin_edges(8)


def test_statistics_are_the_binned_log_power_and_the_pixel_moments():
    maps = np.asarray(synthetic_maps(2, 1, size=16, seed=3).maps)
    stats = summary_statistics(maps)
    assert stats.shape == (2, N_STATISTICS)
    y = np.log10(maps.astype(np.float64))
    _, pk, _ = power_spectrum(y, 25.0)
    np.testing.assert_allclose(stats[:, :8], np.log(np.asarray(pk)[:, :8]), rtol=1e-5)
    pixels = y.reshape(2, -1)
    np.testing.assert_allclose(stats[:, 8], pixels.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats[:, 9], np.log(pixels.std(axis=1)), rtol=1e-6)
    centred = (pixels - pixels.mean(axis=1, keepdims=True)) / pixels.std(axis=1, keepdims=True)
    np.testing.assert_allclose(stats[:, 10], np.mean(centred ** 3, axis=1), atol=1e-9)
    np.testing.assert_allclose(stats[:, 11], np.mean(centred ** 4, axis=1) - 3, atol=1e-9)


def test_the_fit_recovers_a_quadratic_mean_and_the_residual_covariance():
    """Statistics made exactly quadratic in θ plus Gaussian noise of known covariance."""
    rng = np.random.default_rng(0)
    n = 4000
    theta = rng.uniform(*np.array(PRIOR_BOX).T, size=(n, 2))
    u = 2 * (theta - np.array([0.1, 0.6])) / 0.4 - 1
    features = np.stack([np.ones(n), u[:, 0], u[:, 1], u[:, 0] ** 2, u[:, 0] * u[:, 1],
                         u[:, 1] ** 2], axis=1)
    coefficients = rng.normal(size=(6, N_STATISTICS))
    scale = np.linspace(0.1, 1.0, N_STATISTICS)
    stats = features @ coefficients + scale * rng.normal(size=(n, N_STATISTICS))
    fitted = fit_to_statistics(stats, theta, PRIOR_BOX)
    # the coefficients' standard errors are about 3 scale / sqrt(n) = 0.05 scale
    assert np.all(np.abs(np.asarray(fitted.coefficients) - coefficients) < 0.2 * scale)
    hartlap = (n - N_STATISTICS - 2) / (n - 1)
    np.testing.assert_allclose(np.diag(np.linalg.inv(np.asarray(fitted.precision))) * hartlap,
                               scale ** 2, rtol=0.06)


@pytest.fixture(scope="module")
def lognormal_baseline():
    train = synthetic_maps(300, 15, size=16, seed=0)
    return fit_summary_likelihood(np.asarray(train.maps), train.params, PRIOR_BOX)


def test_on_lognormal_maps_the_baseline_is_calibrated_and_narrower_than_the_prior(
        lognormal_baseline):
    test = synthetic_maps(240, 1, size=16, seed=77)
    truths = np.asarray(test.params, np.float64)
    posts = posterior.grid_posteriors(lognormal_baseline, np.asarray(test.maps), grid=30,
                                      box=PRIOR_BOX, map_batch=80, truths=truths, zoom=True)
    summary = posterior.calibrate(posts).summary()
    for level, entry in summary["coverage"].items():
        assert entry["is_nominal"], (level, entry)
    assert summary["inside_band"]
    stds = np.array([p.summary()["std"] for p in posts])
    prior_std = 0.4 / np.sqrt(12)
    assert np.all(stds.mean(axis=0) < 0.9 * prior_std)  # Ωm 0.86, σ8 0.34 of it at 16×16
    errors = np.array([p.summary()["mean"] for p in posts]) - truths
    assert np.all(np.sqrt(np.mean(errors ** 2, axis=0)) < 0.9 * prior_std)


def test_a_training_split_too_small_for_the_covariance_is_refused():
    few = synthetic_maps(1, 15, size=16, seed=0)
    with pytest.raises(InputError, match=f"needs at least {minimum_training_maps()} training "
                                         f"maps to fit a 12×12 covariance.*got 15"):
        fit_summary_likelihood(np.asarray(few.maps), few.params, PRIOR_BOX)


def test_the_likelihood_is_a_gaussian_of_the_statistics_and_differentiable(lognormal_baseline):
    maps = np.asarray(synthetic_maps(2, 1, size=16, seed=5).maps)
    thetas = np.array([[0.2, 0.7], [0.4, 0.9], [0.3, 0.8]], np.float32)
    table = np.asarray(lognormal_baseline(maps, thetas))
    assert table.shape == (2, 3)
    stats = summary_statistics(maps)
    mean = np.asarray(lognormal_baseline.mean(thetas))
    precision = np.asarray(lognormal_baseline.precision, np.float64)
    sign, log_det = np.linalg.slogdet(precision)
    for b in range(2):
        for m in range(3):
            r = stats[b] - mean[m]
            expected = (0.5 * log_det - 0.5 * N_STATISTICS * np.log(2 * np.pi)
                        - 0.5 * r @ precision @ r)
            assert table[b, m] == pytest.approx(expected, rel=1e-4, abs=1e-3)
    gradient = jax.grad(lambda t: lognormal_baseline(maps[:1], t[None])[0, 0])(thetas[0])
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)


def test_save_and_load_round_trip(lognormal_baseline, tmp_path):
    lognormal_baseline.save(tmp_path / "baseline.json")
    loaded = SummaryLikelihood.load(tmp_path / "baseline.json")
    maps = np.asarray(synthetic_maps(1, 2, size=16, seed=9).maps)
    thetas = np.array([[0.25, 0.75]], np.float32)
    np.testing.assert_array_equal(loaded(maps, thetas), lognormal_baseline(maps, thetas))
    np.testing.assert_allclose(loaded.box, PRIOR_BOX, rtol=1e-6)
    (tmp_path / "bad.json").write_text('{"coefficients": []}')
    with pytest.raises(InputError, match="bad.json: not a summary-statistic baseline"):
        SummaryLikelihood.load(tmp_path / "bad.json")
