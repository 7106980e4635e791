"""The posterior over (Ωm, σ8): grid likelihoods, grid posteriors, gradient MAP and sampler,
calibration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

import jglow
from jglow import posterior
from jglow.data import PRIOR_BOX, fit_preprocessing, sample_synthetic, synthetic_maps

N_CONDITIONS = 12  # not a multiple of the chunk size 7: the padding is exercised


def perturbed(params, scale=0.05, seed=1):
    """Every trainable leaf plus `scale`·N(0, 1) noise, so no coupling or injector is zero
    (numpy draws: a JAX draw per leaf shape would compile for seconds each)."""
    rng = np.random.default_rng(seed)
    leaves, tree = jax.tree_util.tree_flatten(params)
    mask = jax.tree_util.tree_leaves(jglow.trainable_mask(params))
    moved = [leaf + np.float32(scale) * rng.standard_normal(leaf.shape, np.float32) if trainable
             else leaf for leaf, trainable in zip(leaves, mask)]
    return jax.tree_util.tree_unflatten(tree, moved)


@pytest.fixture(scope="module")
def setup():
    """A perturbed tiny model, its preprocessing, raw maps and their model-space images, and
    conditions partly outside the box (model space) with their physical parameters."""
    config = tiny_config()
    data = synthetic_maps(3, 1, size=16, seed=5)
    preprocessing = fit_preprocessing(data.maps)
    x = np.asarray(preprocessing.forward_maps(data.maps))
    zs = np.random.default_rng(2).uniform(-1.2, 1.2, (N_CONDITIONS, 2)).astype(np.float32)
    params = perturbed(jglow.init(jax.random.PRNGKey(0), config, x, zs[:3]))
    return params, preprocessing, data.maps, x, zs


@pytest.fixture(scope="module")
def loop_log_prob(setup):
    """`(B, M)`: `jglow.log_prob` of each map at each condition, one pair at a time."""
    params, _, _, x, zs = setup
    return np.array([[float(jglow.log_prob(params, x[b:b + 1], zs[m:m + 1], True)[0])
                      for m in range(len(zs))] for b in range(len(x))])


@pytest.mark.parametrize("chunk_size", [1, 7, N_CONDITIONS])
def test_grid_log_prob_equals_a_loop_over_log_prob_for_any_chunk_size(setup, loop_log_prob,
                                                                        chunk_size):
    params, _, _, x, zs = setup
    grid = np.asarray(posterior.grid_log_prob(params, x[0], zs, chunk_size=chunk_size))
    assert grid.shape == (N_CONDITIONS,)
    assert np.ptp(loop_log_prob[0]) > 1.0  # the conditions matter: not a trivial model
    np.testing.assert_allclose(grid, loop_log_prob[0], rtol=1e-5)


def test_a_batch_of_maps_equals_the_maps_one_by_one(setup, loop_log_prob):
    params, _, _, x, zs = setup
    batch = np.asarray(posterior.grid_log_prob(params, x, zs))
    singles = np.stack([posterior.grid_log_prob(params, one, zs, chunk_size=7) for one in x])
    assert batch.shape == (len(x), N_CONDITIONS)
    np.testing.assert_allclose(batch, singles, rtol=1e-5)
    np.testing.assert_allclose(batch, loop_log_prob, rtol=1e-5)


def test_model_likelihood_of_raw_maps_adds_the_preprocessing_jacobian(setup, loop_log_prob):
    params, preprocessing, maps, _, zs = setup
    likelihood = posterior.ModelLikelihood(params, preprocessing, chunk_size=7)
    thetas = preprocessing.inverse_params(zs)
    got = np.asarray(likelihood(maps[:1], thetas))[0]
    expected = loop_log_prob[0] + float(preprocessing.forward_log_det(maps[:1])[0])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (lambda x, zs: (x.at[1, 3, 4, 0].set(jnp.nan), zs), r"x: map 1 has the non-finite value nan"),
    (lambda x, zs: (x[:, :8], zs), r"x must have shape \(16, 16, 1\).*got \(3, 8, 16, 1\)"),
    (lambda x, zs: (x, zs[:, :1]), r"zs must have shape \(M, 2\).*got \(12, 1\)"),
    (lambda x, zs: (x, jnp.concatenate([zs, zs[:, :1]], 1)),
     r"zs must have shape \(M, 2\).*got \(12, 3\)"),
    (lambda x, zs: (x, zs[:0]), r"zs is empty \(shape \(0, 2\)\)"),
    (lambda x, zs: (x, zs.at[4, 1].set(jnp.inf)), r"zs: point 4 has the non-finite value inf"),
])
def test_grid_log_prob_refuses_bad_input_naming_it(setup, bad, message):
    params, _, _, x, zs = setup
    x, zs = bad(jnp.asarray(x), jnp.asarray(zs))
    with pytest.raises(ValueError, match=message):
        posterior.grid_log_prob(params, x, zs)


def test_grid_log_prob_refuses_a_bad_chunk_size(setup):
    params, _, _, x, zs = setup
    with pytest.raises(ValueError, match=r"chunk_size must be None or a positive int, got 0"):
        posterior.grid_log_prob(params, x, zs, chunk_size=0)


@pytest.mark.parametrize("per_chunk, n_conditions, n_maps, expected", [
    (256, 900, 1, 225), (256, 10_000, 1, 250), (256, 256, 1, 256), (256, 257, 1, 129),
    (256, 12, 1, 12), (256, 900, 3, 82), (256, 900, 100, 2), (256, 900, 300, 1),
    (64, 900, 1, 60), (64, 10_000, 1, 64), (64, 65, 1, 33), (64, 900, 3, 21), (64, 900, 100, 1)])
def test_default_chunks_are_balanced(per_chunk, n_conditions, n_maps, expected):
    """At most `per_chunk` evaluations per chunk, and less than one padded condition per chunk."""
    size = posterior.grid.default_chunk_size(n_conditions, n_maps, per_chunk)
    n_chunks = -(-n_conditions // size)
    assert size == expected
    assert size * n_maps <= max(per_chunk, n_maps) and n_chunks * size - n_conditions < n_chunks


def test_default_chunks_are_larger_with_the_fused_coupling_kernel(monkeypatch):
    from jglow import native_coupling
    expected = 256 if native_coupling.registered() else 64
    assert posterior.grid.evaluations_per_chunk() == expected
    assert posterior.grid.default_chunk_size(900, 1) == (225 if expected == 256 else 60)
    monkeypatch.setattr(native_coupling, "registered", lambda: False)
    assert posterior.grid.evaluations_per_chunk() == 64


# --- grid posteriors on the exact synthetic likelihood -----------------------------------------

EXACT = posterior.SyntheticLikelihood()
TRUTH = np.array([0.3, 0.8])


@pytest.fixture(scope="module")
def sharp_map():
    """One 32×32 synthetic map at `TRUTH`."""
    return sample_synthetic(TRUTH[None], 1, size=32, seed=11)[0]


@pytest.fixture(scope="module")
def fine_posterior(sharp_map):
    return posterior.grid_posterior(EXACT, sharp_map, grid=60, truth=TRUTH)


def test_grid_posterior_is_normalised_and_its_summaries_are_consistent(fine_posterior):
    post = fine_posterior
    assert post.probability.shape == (60, 60)
    assert post.probability.sum() == pytest.approx(1.0, abs=1e-12)
    for marginal, density, axis in zip(post.marginals, post.marginal_densities, post.axes):
        assert marginal.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.sum(density * np.diff(posterior.density.cell_edges(axis))) == pytest.approx(1.0)
    assert np.sum(post.density * posterior.density.cell_volumes(post.axes)) == pytest.approx(1.0)
    inner, outer = post.hpd_mask(0.68), post.hpd_mask(0.95)
    assert np.all(outer[inner]) and outer.sum() > inner.sum()
    for level, mask in ((0.68, inner), (0.95, outer)):  # the smallest region holding the level
        assert post.probability[mask].sum() >= level
        assert post.probability[mask].sum() - post.probability[mask].min() < level
        assert post.density[mask].min() >= post.density[~mask].max()
    assert post.map_estimate == pytest.approx(
        [axis[i] for axis, i in zip(post.axes,
                                    np.unravel_index(post.probability.argmax(), (60, 60)))])
    assert not post.outside_box and post.mass_outside_box == 0.0 and post.n_nonfinite == 0


def test_exact_likelihood_posterior_recovers_the_truth(fine_posterior):
    post = fine_posterior
    assert np.all(np.abs(post.mean - TRUTH) < 3 * post.std)
    assert post.std[1] < 0.05  # σ8 is measured, not just the prior
    assert post.covers(TRUTH, 0.95)
    # 60 points resolve this posterior: the level at the truth is close to its cell's
    assert post.cells_per_std.min() > 3
    assert abs(post.credibility() - post.cell_credibility(TRUTH)) < 0.05


def test_exact_likelihood_coverage_is_nominal_within_binomial_bounds():
    held_out = synthetic_maps(300, 1, size=16, seed=3)
    posteriors = posterior.grid_posteriors(EXACT, held_out.maps, grid=40, map_batch=300,
                                           truths=held_out.params)
    calibration = posterior.calibrate(posteriors, held_out.params)
    for level in posterior.LEVELS:
        low, high = calibration.interval(level, confidence=0.99)
        assert low <= calibration.coverage(level) <= high, (level, calibration.coverage(level))
    summary = calibration.summary()
    assert min(summary["marginal_rank_ks_pvalues"]) > 1e-3
    assert summary["credibility_ks_pvalue"] > 1e-3
    # The check has power: an overconfident posterior (likelihood to the 4th power) fails it.
    overconfident = posterior.grid_posteriors(lambda maps, th: 4.0 * EXACT(maps, th),
                                              held_out.maps[:100], grid=40, map_batch=100,
                                              truths=held_out.params[:100])
    bad = posterior.calibrate(overconfident)
    assert all(bad.coverage(a) < bad.interval(a)[0] for a in posterior.LEVELS), bad.summary()


def test_non_finite_likelihoods_are_counted_and_given_no_mass(sharp_map):
    def broken(maps, thetas):  # NaN wherever Ωm > 0.4
        return jnp.where(thetas[:, 0] > 0.4, jnp.nan, EXACT(maps, thetas)[0])[None]

    post = posterior.grid_posterior(broken, sharp_map, grid=20)
    bad = post.axes[0] > 0.4
    assert post.n_nonfinite == bad.sum() * 20
    assert np.all(post.probability[bad] == 0) and post.probability.sum() == pytest.approx(1.0)
    assert post.summary()["n_nonfinite"] == post.n_nonfinite
    with pytest.raises(ValueError, match=r"no grid point has a finite log-likelihood.*400 of 400"):
        posterior.grid_posterior(lambda maps, th: jnp.full((1, th.shape[0]), jnp.nan),
                                 sharp_map, grid=20)


def test_grids_outside_the_box_are_flagged_and_priors_apply(sharp_map):
    wide = (np.linspace(0.05, 0.6, 23), np.linspace(0.5, 1.1, 25))
    post = posterior.grid_posterior(EXACT, sharp_map, grid=wide)
    assert post.outside_box and post.summary()["outside_box"]
    assert post.probability.shape == (23, 25) and 0.0 < post.mass_outside_box < 1.0
    in_box = lambda th: jnp.where(th[:, 0] > 0.3, 0.0, -jnp.inf)  # noqa: E731
    half = posterior.grid_posterior(EXACT, sharp_map, grid=20, log_prior=in_box)
    assert np.all(half.probability[half.axes[0] <= 0.3] == 0)
    assert half.probability.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("grid, message", [
    ((np.linspace(0.1, 0.5, 5),), r"the grid has 1 axes; expected 2"),
    ((np.linspace(0.1, 0.5, 5),) * 3, r"the grid has 3 axes; expected 2"),
    ((np.array([]), np.linspace(0.6, 1.0, 5)),
     r"grid axis Omega_m has shape \(0,\); expected a 1-D array of at least 2"),
    (0, r"grid = \(0, 0\): expected 2 point counts"),
    ((30, 30, 30), r"grid = \(30, 30, 30\): expected 2 point counts"),
    ((np.linspace(0.1, 0.5, 5), np.linspace(1.0, 0.6, 5)),
     r"grid axis sigma_8 = .* strictly increasing"),
])
def test_bad_grids_raise_naming_the_grid(sharp_map, grid, message):
    with pytest.raises(ValueError, match=message):
        posterior.grid_posterior(EXACT, sharp_map, grid=grid)


def test_bad_maps_raise_naming_the_map(sharp_map):
    maps = np.stack([sharp_map] * 3)
    maps[2, 5, 7] = np.nan
    with pytest.raises(ValueError, match=r"map 2 has pixel value nan at \(row 5, column 7\)"):
        posterior.grid_posteriors(EXACT, maps, grid=10)
    with pytest.raises(ValueError, match=r"single_map must have shape \(H, W\), got \(3, 32, 32\)"):
        posterior.grid_posterior(EXACT, maps, grid=10)


# --- beyond the grid: gradient MAP and sampler -------------------------------------------------

@pytest.fixture(scope="module")
def gradient_estimate(sharp_map):
    return posterior.gradient_map(EXACT, sharp_map)  # from the box centre


def test_gradient_map_recovers_the_grid_map_within_the_grid_spacing(fine_posterior,
                                                                   gradient_estimate):
    spacing = np.array([np.diff(axis)[0] for axis in fine_posterior.axes])
    assert np.all(np.abs(gradient_estimate.theta - fine_posterior.map_estimate) <= spacing)
    assert all(low <= t <= high for t, (low, high) in zip(gradient_estimate.theta, PRIOR_BOX))
    grid_best = fine_posterior.log_likelihood.max()
    assert gradient_estimate.log_posterior >= grid_best - 1e-2


def test_sampler_mean_and_std_agree_with_the_grid_posterior(sharp_map, fine_posterior,
                                                            gradient_estimate):
    samples = posterior.sample_posterior(EXACT, sharp_map, jax.random.PRNGKey(0), n_samples=1500,
                                         n_warmup=600, init=gradient_estimate.theta)
    assert samples.theta.shape == (4, 1500, 2)
    assert np.all((samples.acceptance > 0.3) & (samples.acceptance < 0.9))
    np.testing.assert_array_less(np.abs(samples.mean - fine_posterior.mean),
                                 0.25 * fine_posterior.std)
    np.testing.assert_allclose(samples.std, fine_posterior.std, rtol=0.2)
    low, high = np.asarray(PRIOR_BOX).T
    assert np.all((samples.theta >= low) & (samples.theta <= high))


def test_grid_posteriors_show_progress_only_when_labelled(capsys):
    def flat(maps, thetas):
        return jnp.zeros((maps.shape[0], thetas.shape[0]))

    maps = np.ones((5, 4, 4), np.float32)
    posteriors = posterior.grid_posteriors(flat, maps, grid=3, map_batch=2,
                                           progress="test posteriors")
    assert len(posteriors) == 5
    assert "test posteriors" in capsys.readouterr().err
    posterior.grid_posteriors(flat, maps, grid=3, map_batch=2)
    assert capsys.readouterr().err == ""
