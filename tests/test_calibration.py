"""Credible levels at the truth, zoomed grids and the expected-coverage curve, each against an
analytic answer or a calibrated likelihood."""

import jax.numpy as jnp
import numpy as np
import pytest

from jglow import posterior
from jglow.data import PRIOR_BOX, sample_synthetic
from jglow.posterior.calibration import Calibration, simultaneous_confidence
from jglow.posterior.density import zoom_region

BOX = np.array(PRIOR_BOX)


def gaussian(mean, std, rho):
    """`(log_likelihood, precision)`: a 2-D Gaussian log-density in θ (up to a constant) as a
    likelihood `(maps (B, H, W), thetas (M, 2)) -> (B, M)` that ignores the maps."""
    cov = np.array([[std[0] ** 2, rho * std[0] * std[1]], [rho * std[0] * std[1], std[1] ** 2]])
    precision = np.linalg.inv(cov)

    def log_likelihood(maps, thetas):
        d = thetas - jnp.asarray(mean, jnp.float32)
        q = jnp.einsum("mi,ij,mj->m", d, jnp.asarray(precision, jnp.float32), d)
        return jnp.broadcast_to(-0.5 * q, (maps.shape[0], thetas.shape[0]))

    return log_likelihood, precision


def blank_maps(n):
    return np.ones((n, 2, 2), np.float32)


# --- the credible level at the truth ---------------------------------------------------------

def test_credible_level_at_the_truth_is_the_analytic_gaussian_level():
    """Flat prior, truths between grid points: the mass denser than the density at the truth is
    1 − exp(−r²/2), r the Mahalanobis distance, to 1e-3 on a grid of ~50 cells per std."""
    mean, std = np.array([0.3, 0.8]), np.array([0.037, 0.033])
    likelihood, precision = gaussian(mean, std, rho=0.5)
    truths = mean + np.array([[0.011, -0.007], [0.04, 0.03], [-0.002, 0.013], [-0.05, -0.06],
                              [0.07, -0.03]])
    posteriors = posterior.grid_posteriors(likelihood, blank_maps(5), grid=500, truths=truths,
                                           map_batch=5)
    for post, truth in zip(posteriors, truths):
        assert post.cell_index(truth) is not None and post.cells_per_std.min() > 40
        r2 = (truth - mean) @ precision @ (truth - mean)
        assert post.credibility() == pytest.approx(1.0 - np.exp(-r2 / 2), abs=1e-3)
        assert post.credibility(truth) == post.credibility()
        # the density at the truth is the Gaussian's, normalised by the grid's Riemann sum
        log_density = -r2 / 2 - np.log(2 * np.pi * np.prod(std) * np.sqrt(1 - 0.5**2))
        assert post.truth_log_density == pytest.approx(log_density, abs=1e-4)
    levels = [p.credibility() for p in posteriors]
    assert min(levels) < 0.3 and max(levels) > 0.9  # the truths span the range of levels


def test_truths_outside_the_box_have_level_one_and_outside_the_grid_are_ranked():
    likelihood, precision = gaussian(np.array([0.3, 0.99]), (0.03, 0.03), rho=0.0)
    wide = (np.linspace(0.0, 0.6, 31), np.linspace(0.5, 1.1, 31))
    beyond = [0.31, 1.005]  # near the peak, in a dense cell, but outside the prior box
    outside_box = posterior.grid_posterior(likelihood, blank_maps(1)[0], grid=wide, truth=beyond)
    assert outside_box.cell_credibility(beyond) < 0.3 and outside_box.credibility() == 1.0
    narrow = (np.linspace(0.25, 0.35, 21), np.linspace(0.93, 0.985, 21))
    truth = np.array([0.32, 0.999])  # in the box, beyond the grid's last cell edge 0.9864
    post = posterior.grid_posterior(likelihood, blank_maps(1)[0], grid=narrow, truth=truth)
    assert post.cell_index(truth) is None and post.cell_credibility(truth) == 1.0
    points = posterior.grid_points(post.axes) - [0.3, 0.99]
    r2_cells = np.einsum("mi,ij,mj->m", points, precision, points).reshape(21, 21)
    r2_truth = (truth - [0.3, 0.99]) @ precision @ (truth - [0.3, 0.99])
    expected = post.probability[r2_cells < r2_truth].sum()
    assert 0.05 < expected < 0.95
    assert post.credibility() == pytest.approx(expected, abs=1e-9)


def test_the_truth_log_prior_comes_from_the_same_callable():
    likelihood, _ = gaussian(np.array([0.3, 0.8]), (0.05, 0.05), rho=0.0)
    tilted = lambda th: 10.0 * th[:, 0]  # noqa: E731
    post = posterior.grid_posterior(likelihood, blank_maps(1)[0], grid=40, truth=[0.28, 0.83],
                                    log_prior=tilted)
    assert post.truth_log_prior == pytest.approx(2.8, rel=1e-6)
    expected = post.probability[post.log_posterior > post.truth_log_likelihood + 2.8].sum()
    assert post.credibility() == pytest.approx(expected)
    assert post.summary()["truth"]["credibility"] == post.credibility()


def test_credibility_needs_the_evaluated_truth():
    likelihood, _ = gaussian(np.array([0.3, 0.8]), (0.05, 0.05), rho=0.0)
    plain = posterior.grid_posterior(likelihood, blank_maps(1)[0], grid=10)
    with pytest.raises(ValueError, match=r"no evaluated truth.*cell_credibility"):
        plain.credibility([0.3, 0.8])
    with pytest.raises(ValueError, match=r"posterior 0 has no evaluated truth"):
        posterior.calibrate([plain])
    summary = plain.summary([0.3, 0.8])["truth"]
    assert "credibility" not in summary and 0.0 <= summary["cell_credibility"] <= 1.0
    evaluated = posterior.grid_posterior(likelihood, blank_maps(1)[0], grid=10, truth=[0.3, 0.8])
    with pytest.raises(ValueError, match=r"theta = \[0.2, 0.7\] is not the evaluated truth"):
        evaluated.credibility([0.2, 0.7])
    with pytest.raises(ValueError, match=r"theta = \[0.2, 0.7\] is not the evaluated truth"):
        posterior.calibrate([evaluated], [[0.2, 0.7]])
    with pytest.raises(ValueError, match=r"truths has shape \(2, 2\); expected \(1, 2\)"):
        posterior.grid_posteriors(likelihood, blank_maps(1), grid=10, truths=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"truths: row 0 has the non-finite value nan"):
        posterior.grid_posteriors(likelihood, blank_maps(1), grid=10, truths=[[np.nan, 0.8]])
    with pytest.raises(ValueError, match=r"log_prior is an array of shape \(10, 10\).*at truths"):
        posterior.grid_posteriors(likelihood, blank_maps(1), grid=10, truths=[[0.3, 0.8]],
                                  log_prior=np.zeros((10, 10)))


# --- zoomed grids ----------------------------------------------------------------------------

def test_zoom_spends_at_most_the_evaluations_of_the_plain_grid():
    assert posterior.zoom_counts(30) == ((10, 10), (28, 28))
    assert posterior.zoom_counts(5) == ((2, 2), (4, 4))
    for grid in (3, 4, 10, 17, 30, 64, (5, 40)):
        coarse, fine = posterior.zoom_counts(grid)
        budget = np.prod(np.broadcast_to(grid, 2))
        assert np.prod(coarse) + np.prod(fine) <= budget, grid
        assert np.prod(coarse) + np.prod(fine) >= 0.85 * budget or budget < 20, grid
    calls = []

    def counting(maps, thetas):
        calls.append((maps.shape[0], thetas.shape[0]))
        return jnp.zeros((maps.shape[0], thetas.shape[0]))

    truths = np.full((3, 2), [0.3, 0.8])
    posteriors = posterior.grid_posteriors(counting, blank_maps(3), grid=30, zoom=True,
                                           truths=truths)
    # one shared coarse call, then per map its fine grid and its truth
    assert calls == [(3, 100), (1, 28 * 28 + 1), (1, 28 * 28 + 1), (1, 28 * 28 + 1)]
    assert all(p.probability.shape == (28, 28) and p.zoom.coarse_shape == (10, 10)
               for p in posteriors)
    with pytest.raises(ValueError, match=r"grid = \(2, 2\): a zoomed grid needs at least 3"):
        posterior.grid_posteriors(counting, blank_maps(1), grid=2, zoom=True)
    with pytest.raises(ValueError, match=r"grid = .*expected 2 point counts"):
        posterior.grid_posteriors(counting, blank_maps(1), grid=(np.linspace(0.1, 0.5, 5),) * 2,
                                  zoom=True)
    with pytest.raises(ValueError, match=r"tail = 0.0: expected a mass in \(0, 1\)"):
        posterior.grid_posteriors(counting, blank_maps(1), zoom=True, tail=0.0)
    with pytest.raises(ValueError, match=r"log_prior is an array.*on a zoomed grid"):
        posterior.grid_posteriors(counting, blank_maps(1), zoom=True, log_prior=np.zeros(900))


def test_zoomed_grid_resolves_a_narrow_gaussian_that_the_plain_grid_misses():
    """std 0.5 cells of the plain 30×30 grid, peak on a grid point: the plain grid's std is off
    by ~7%; the zoomed grid, with fewer evaluations, gets mean and std to 1% of the std."""
    spacing = 0.4 / 30
    mean = np.array([0.1 + 14.5 * spacing, 0.6 + 16.5 * spacing])
    std = np.array([0.5, 0.55]) * spacing
    likelihood, precision = gaussian(mean, std, rho=0.3)
    truth = mean + np.array([0.3, -0.2]) * spacing
    plain = posterior.grid_posterior(likelihood, blank_maps(1)[0], grid=30, truth=truth)
    zoomed = posterior.grid_posterior(likelihood, blank_maps(1)[0], grid=30, truth=truth,
                                      zoom=True)
    assert np.all(np.abs(zoomed.mean - mean) < 0.01 * std)
    np.testing.assert_allclose(zoomed.std, std, rtol=0.01)
    assert np.max(np.abs(plain.std / std - 1)) > 0.01
    assert np.all(zoomed.cells_per_std > 1) and np.all(plain.cells_per_std < 0.6)
    r2 = (truth - mean) @ precision @ (truth - mean)
    assert abs(zoomed.credibility() - (1 - np.exp(-r2 / 2))) < abs(
        plain.credibility() - (1 - np.exp(-r2 / 2)))
    summary = zoomed.summary()
    assert summary["zoom_touches_box"] is False and summary["zoom"]["coarse_shape"] == [10, 10]
    assert summary["grid_shape"] == [28, 28] and len(summary["cells_per_std"]) == 2


def test_zoom_region_holds_the_coarse_mass_and_flags_the_box_edge():
    likelihood, _ = gaussian(np.array([0.3, 0.8]), (0.02, 0.01), rho=0.0)
    coarse = posterior.grid_posterior(likelihood, blank_maps(1)[0], grid=10)
    region, touches = zoom_region(coarse, 1e-6, PRIOR_BOX)
    spacing = 0.04
    assert not touches
    for (low, high), axis, marginal in zip(region, coarse.axes, coarse.marginals):
        inside = (axis > low) & (axis < high)
        assert marginal[~inside].sum() < 1e-6
        assert low > axis[0] and high < axis[-1]
    hpd = coarse.hpd_mask(1 - 1e-6)
    for d, ((low, high), axis) in enumerate(zip(region, coarse.axes)):
        held = np.flatnonzero(hpd.any(axis=1 - d))  # the HPD cells' rows (columns) …
        # … bounded by their cell edges, padded by one coarse cell on each side
        assert low == pytest.approx(axis[held[0]] - 1.5 * spacing)
        assert high == pytest.approx(axis[held[-1]] + 1.5 * spacing)
    edge, _ = gaussian(np.array([0.105, 0.8]), (0.02, 0.02), rho=0.0)
    post = posterior.grid_posterior(edge, blank_maps(1)[0], grid=30, zoom=True)
    assert post.zoom_touches_box and post.summary()["zoom_touches_box"]
    assert post.zoom.region[0][0] == 0.1 and post.axes[0][0] > 0.1


# --- the expected-coverage curve -------------------------------------------------------------

def test_expected_coverage_band_and_rank_histograms_of_known_values():
    n = 200
    uniform = (np.arange(n) + 0.5) / n
    ranks = np.stack([uniform, uniform**2], axis=1)
    calibration = Calibration(uniform, ranks, np.zeros(n, int))
    levels = np.linspace(0, 1, 101)
    np.testing.assert_allclose(calibration.expected_coverage(levels), levels, atol=0.5 / n)
    assert calibration.max_coverage_deviation() <= 0.5 / n + 1e-12 and calibration.inside_band()
    low, high = calibration.coverage_band(levels)
    assert low[0] == high[0] == 0.0 and low[-1] == high[-1] == 1.0
    pointwise = calibration.interval(0.5)  # one level alone: narrower than the curve's band
    assert low[50] < pointwise[0] and pointwise[1] < high[50]
    assert calibration.interval(0.5, simultaneous_confidence(n, 0.99, tuple(levels))) == (
        low[50], high[50])
    histograms = calibration.rank_histograms(10)
    np.testing.assert_array_equal(histograms[0], np.full(10, 20))
    np.testing.assert_array_equal(histograms[1], np.diff(np.ceil(np.sqrt(np.arange(11) / 10) * n
                                                                 - 0.5)).astype(int))
    assert calibration.rank_band(10) == (10, 32)  # central 99% of Binomial(200, 0.1)
    summary = calibration.summary()
    assert summary["rank_histograms"]["inside_band"] == {"Omega_m": True, "sigma_8": False}
    overconfident = Calibration(np.sqrt(uniform), ranks, np.zeros(n, int))  # levels too high
    deviation = np.max(np.abs(levels**2 - levels))
    assert overconfident.max_coverage_deviation() == pytest.approx(deviation, abs=1 / n)
    assert not overconfident.inside_band()
    summary = overconfident.summary()
    assert summary["max_deviation"] == overconfident.max_coverage_deviation()
    assert summary["inside_band"] is False
    assert len(summary["expected_coverage"]["empirical"]) == 101
    assert summary["expected_coverage"]["band_low"][50] == low[50]


@pytest.fixture(scope="module")
def prior_maps():
    """240 synthetic 16×16 maps with truths drawn uniformly from the prior box."""
    truths = np.random.default_rng(8).uniform(*BOX.T, (240, 2))
    return sample_synthetic(truths, 1, size=16, seed=9), truths


def test_exact_likelihood_coverage_curve_is_inside_its_band_where_snapping_is_not(prior_maps):
    """The exact likelihood on zoomed grids of 20×20 evaluations: the expected-coverage curve is
    inside its pointwise 99% band at all 101 levels, and the rank histograms inside theirs.
    Snapping each truth to its cell of a plain 10×10 grid (one cell per σ8 std) puts it too
    often in the densest cells: the same data leaves the band."""
    maps, truths = prior_maps
    zoomed = posterior.grid_posteriors(posterior.SyntheticLikelihood(), maps, grid=20,
                                       truths=truths, zoom=True, map_batch=len(maps))
    calibration = posterior.calibrate(zoomed)
    summary = calibration.summary()
    assert calibration.inside_band(), summary["expected_coverage"]
    assert all(summary["rank_histograms"]["inside_band"].values()), summary["rank_histograms"]
    assert all(entry["is_nominal"] for entry in summary["coverage"].values())
    coarse = posterior.grid_posteriors(posterior.SyntheticLikelihood(), maps, grid=10,
                                       map_batch=len(maps))
    snapped = Calibration(np.array([p.cell_credibility(t) for p, t in zip(coarse, truths)]),
                          calibration.marginal_ranks, calibration.n_nonfinite)
    assert not snapped.inside_band()
    assert snapped.max_coverage_deviation() > 1.5 * calibration.max_coverage_deviation()


def test_plot_coverage_is_a_small_png(tmp_path):
    n = 100
    rng = np.random.default_rng(0)
    calibrations = {name: Calibration(rng.uniform(size=n), rng.uniform(size=(n, 2)),
                                      np.zeros(n, int), ("Omega_m", "sigma_8"))
                    for name in ("model", "exact")}
    figure = posterior.plot_coverage(calibrations)
    assert len(figure.axes) == 3
    assert figure.axes[0].get_legend() is not None
    figure.savefig(tmp_path / "coverage.png", dpi=100)
    assert 5_000 < (tmp_path / "coverage.png").stat().st_size < 100_000


def test_the_simultaneous_band_holds_a_calibrated_curve_as_often_as_it_says():
    """Calibrated curves (uniform credibilities) of 300 maps leave the 99% band about 1% of the
    time; the pointwise 99% intervals at the same 101 levels are left far more often."""
    levels = np.linspace(0, 1, 101)
    left_band = left_pointwise = 0
    for seed in range(200):
        calibration = Calibration(np.random.default_rng(seed).uniform(size=300),
                                  np.zeros((300, 2)), np.zeros(300, int))
        curve = calibration.expected_coverage(levels)
        low, high = calibration.interval(levels, 0.99)
        left_pointwise += not np.all((low <= curve) & (curve <= high))
        left_band += not calibration.inside_band()
    assert left_band <= 6 and left_pointwise >= 15
