"""A likelihood temperature fitted on validation maps of an overconfident toy likelihood restores
coverage on separate maps."""

import jax.numpy as jnp
import numpy as np
import pytest

from jglow import posterior
from jglow.data import PRIOR_BOX
from jglow.posterior.recalibration import (TemperedLikelihood, coverage_distance,
                                           credible_levels, fit_temperature)

NOISE = np.array([0.04, 0.05])
"""The toy's observation noise of (Ωm, σ8): a "map" holds θ + N(0, NOISE²) in two pixels."""


def toy_maps(n, seed):
    """`(maps (n, 2, 2), truths (n, 2))`: truths uniform over the prior box, observations in
    the first row (the second row is padding, so maps are 2-D)."""
    rng = np.random.default_rng(seed)
    truths = rng.uniform(*np.array(PRIOR_BOX).T, size=(n, 2))
    observed = truths + NOISE * rng.normal(size=(n, 2))
    return np.stack([observed, np.ones((n, 2))], axis=1).astype(np.float32), truths


def overconfident(maps, thetas):
    """The toy's log-likelihood with half its noise: four times too sharp (T = 4 restores it)."""
    residual = (maps[:, None, 0, :] - thetas[None, :, :]) / (0.5 * jnp.asarray(NOISE))
    return -0.5 * jnp.sum(residual ** 2, axis=-1)


def posteriors_of(likelihood, maps, truths):
    return posterior.grid_posteriors(likelihood, maps, grid=30, box=PRIOR_BOX, map_batch=100,
                                     truths=truths, zoom=True)


def test_a_fitted_temperature_restores_coverage_on_separate_maps():
    validation = posteriors_of(overconfident, *toy_maps(200, 0))
    temperature = fit_temperature(validation)
    assert 3.0 < temperature < 5.5  # the truth is 4
    maps, truths = toy_maps(300, 1)
    before = posterior.calibrate(posteriors_of(overconfident, maps, truths)).summary()
    after = posterior.calibrate(posteriors_of(TemperedLikelihood(overconfident, temperature),
                                              maps, truths)).summary()
    assert not before["coverage"]["0.68"]["is_nominal"] and not before["inside_band"]
    assert all(entry["is_nominal"] for entry in after["coverage"].values())
    assert after["inside_band"]


def test_tempering_the_tables_equals_tempering_the_likelihood():
    maps, truths = toy_maps(20, 2)
    plain = posterior.grid_posteriors(overconfident, maps, grid=20, box=PRIOR_BOX,
                                      truths=truths, zoom=False)
    tempered = posterior.grid_posteriors(TemperedLikelihood(overconfident, 3.0), maps, grid=20,
                                         box=PRIOR_BOX, truths=truths, zoom=False)
    np.testing.assert_allclose(credible_levels(plain, 3.0),
                               [p.credibility() for p in tempered], atol=1e-9)


def test_coverage_distance_is_zero_for_uniform_levels_and_grows_with_overconfidence():
    uniform = (np.arange(1000) + 0.5) / 1000
    assert coverage_distance(uniform) == pytest.approx(1 / (12 * 1000 ** 2))
    assert coverage_distance(uniform ** 0.5) > coverage_distance(uniform ** 0.9) > 1e-4


def test_too_few_posteriors_are_refused():
    with pytest.raises(ValueError, match="at least 10 posteriors with evaluated truths, got 3"):
        fit_temperature(posteriors_of(overconfident, *toy_maps(3, 3)))
