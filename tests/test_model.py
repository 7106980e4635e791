"""The whole conditional Glow: invertibility, exact log-dets, normalisation, transforms, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jglow
from jglow.model import flow_forward, condition

from helpers import tiny_config, toy_batch, trained_model


@pytest.fixture(scope="module")
def model():
    return trained_model(tiny_config())


@pytest.fixture(scope="module", params=jglow.config.PADDINGS)
def micro(request):
    """A 4×4×1 model (16 dimensions) for exact Jacobians, with each padding; ActNorm on to cover
    it too."""
    config = tiny_config(image_shape=(4, 4, 1), hidden=4, actnorm=True, padding=request.param)
    return trained_model(config, n=8)


def test_parameter_count_of_paper_configuration_matches_reference():
    params = jglow.init(jax.random.PRNGKey(0), jglow.paper_config(), jnp.zeros((1, 64, 64, 1)),
                        jnp.zeros((1, 2)))
    mask = jglow.trainable_mask(params)
    count = sum(leaf.size for leaf, trainable in zip(jax.tree_util.tree_leaves(params),
                                                     jax.tree_util.tree_leaves(mask)) if trainable)
    assert count == 4_503_312


def test_encode_decode_round_trip_and_shapes(model):
    params, x, z = model
    latents = jglow.encode(params, x, z)
    assert latents.shape == (x.shape[0], 16 * 16)
    np.testing.assert_allclose(jglow.decode(params, latents, z), x, atol=1e-5)


def test_forward_and_inverse_log_dets_sum_to_zero(model):
    params, x, z = model
    conditioning = condition(params, z)
    latents, forward_log_det = flow_forward(params, x, conditioning)
    _, inverse_log_det = jglow.model.flow_inverse(params, latents, conditioning)
    np.testing.assert_allclose(forward_log_det + inverse_log_det, 0.0, atol=1e-3)


def test_model_log_det_equals_slogdet_of_encode_jacobian(micro):
    params, x, z = micro
    x1, z1 = x[:1], z[:1]
    jacobian = jax.jacfwd(lambda flat: jglow.encode(params, flat.reshape(x1.shape), z1)[0])(
        x1.ravel())
    _, log_abs_det = jnp.linalg.slogdet(jacobian)
    _, log_det = flow_forward(params, x1, condition(params, z1))
    np.testing.assert_allclose(log_det[0], log_abs_det, rtol=1e-4, atol=1e-3)


def test_standard_prior_log_prob_is_gaussian_of_latents_plus_slogdet():
    params, x, z = trained_model(tiny_config(image_shape=(4, 4, 1), hidden=4, prior="standard"),
                                 n=8)
    x1, z1 = x[:2], z[:2]
    latents = jglow.encode(params, x1, z1)
    gaussian = -0.5 * jnp.sum(latents**2 + jnp.log(2 * jnp.pi), axis=1)
    slogdets = jnp.stack([
        jnp.linalg.slogdet(jax.jacfwd(
            lambda f: jglow.encode(params, f.reshape(1, 4, 4, 1), z1[i:i + 1])[0])(
            x1[i].ravel()))[1] for i in range(2)])
    np.testing.assert_allclose(jglow.log_prob(params, x1, z1), gaussian + slogdets, rtol=1e-5,
                               atol=1e-3)


def _normalisation_model():
    config = tiny_config(image_shape=(2, 2, 1), levels=1, steps=3, hidden=8)
    return trained_model(config, n=256, steps=20)


def test_log_prob_is_a_normalised_density_and_samples_match_importance_weights():
    """Importance sampling on a 4-dimensional model: ∫ p(x|z) dx = 1, and E_p[x], E_p[x²] agree."""
    params, _, _ = _normalisation_model()
    z = jnp.array([[0.3, -0.5]])
    n = 50_000
    samples = jglow.sample(params, jax.random.PRNGKey(7), jnp.repeat(z, n, axis=0)).reshape(n, 4)
    assert bool(jnp.all(jnp.isfinite(samples)))
    # Proposal: a Gaussian fitted to model samples, widened so its tails cover the model's.
    mean = jnp.mean(samples, axis=0)
    cov = 2.0 * jnp.cov(samples.T) + 1e-3 * jnp.eye(4)
    draws = jax.random.multivariate_normal(jax.random.PRNGKey(8), mean, cov, (n,))
    log_q = jax.scipy.stats.multivariate_normal.logpdf(draws, mean, cov)
    log_p = jglow.log_prob(params, draws.reshape(n, 2, 2, 1), jnp.repeat(z, n, axis=0))
    weights = np.asarray(jnp.exp(log_p - log_q), np.float64)
    estimate, error = weights.mean(), weights.std() / np.sqrt(n)
    assert error < 0.01, f"importance-sampling error {error} too large to test anything"
    assert abs(estimate - 1.0) < 4 * error, f"∫p = {estimate} ± {error}"
    draws = np.asarray(draws, np.float64)
    for moment in (draws, draws**2):
        weighted = (weights[:, None] * moment).sum(0) / weights.sum()
        from_samples = np.asarray(samples, np.float64) ** (1 if moment is draws else 2)
        spread = from_samples.std(0) / np.sqrt(n)
        np.testing.assert_array_less(np.abs(from_samples.mean(0) - weighted),
                                     5 * spread + 5 * error)


def test_results_are_the_same_with_and_without_jit(micro):
    params, x, z = micro
    with jax.disable_jit():
        eager = jglow.model.log_prob_given(params, x, condition(params, z))
    np.testing.assert_allclose(jglow.log_prob(params, x, z), eager, rtol=1e-5, atol=1e-3)


def test_the_two_phase_api_equals_log_prob_and_serves_many_maps_per_conditioning(model):
    params, x, z = model
    conditioning = jax.jit(jglow.condition)(params, z)
    np.testing.assert_allclose(jax.jit(jglow.log_prob_given)(params, x, conditioning),
                               jglow.log_prob(params, x, z), rtol=1e-6, atol=1e-4)
    batches = jnp.stack([x + 0.1, x[::-1]])
    log_prob_of_batch = jax.vmap(lambda maps: jglow.log_prob_given(params, maps, conditioning))
    per_batch = jax.jit(log_prob_of_batch)(batches)
    assert per_batch.shape == (2, x.shape[0])
    for maps, log_p in zip(batches, per_batch):
        np.testing.assert_allclose(log_p, jglow.log_prob(params, maps, z), rtol=1e-5, atol=1e-3)


def test_vmap_over_conditions_equals_a_loop(model):
    params, x, z = model
    zs = jnp.stack([z, -z, 0.5 * z])
    batched = jax.vmap(lambda zz: jglow.log_prob(params, x, zz))(zs)
    looped = jnp.stack([jglow.log_prob(params, x, zz) for zz in zs])
    assert batched.shape == (3, x.shape[0])
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-3)


def test_gradients_in_params_maps_and_conditions_are_finite_and_nonzero(model):
    params, x, z = model
    grad_params, grad_x, grad_z = jax.grad(
        lambda p, xx, zz: jnp.sum(jglow.log_prob(p, xx, zz)), argnums=(0, 1, 2))(params, x, z)
    for name, grad in (("params", grad_params), ("x", grad_x), ("z", grad_z)):
        leaves = jax.tree_util.tree_leaves(grad)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves), name
        assert max(float(jnp.abs(leaf).max()) for leaf in leaves) > 0, name


def test_sample_shape_temperature_zero_is_the_decoded_prior_mean(model):
    params, _, z = model
    samples = jglow.sample(params, jax.random.PRNGKey(0), z, temperature=0.0)
    assert samples.shape == (z.shape[0], 16, 16, 1)
    means = [mlv[0] for mlv in condition(params, z)["priors"]]
    flat_means = jnp.concatenate([m.reshape(z.shape[0], -1) for m in means], axis=1)
    np.testing.assert_allclose(samples, jglow.decode(params, flat_means, z), atol=1e-5)


def test_samples_at_unit_temperature_are_finite_and_re_encode(model):
    params, _, z = model
    samples = jglow.sample(params, jax.random.PRNGKey(1), z)
    assert bool(jnp.all(jnp.isfinite(samples)))
    np.testing.assert_allclose(jglow.decode(params, jglow.encode(params, samples, z), z), samples,
                               atol=1e-4)


def test_learned_prior_and_actnorm_configurations_run():
    params, x, z = trained_model(tiny_config(image_shape=(4, 4, 1), hidden=4, prior="learned",
                                             actnorm=True), n=8, steps=2)
    assert "actnorm" in params.levels[0]
    np.testing.assert_allclose(jglow.decode(params, jglow.encode(params, x, z), z), x, atol=1e-5)


def test_remat_gives_the_same_gradients(micro):
    params, x, z = micro
    remat = params.replace(config=dataclasses.replace(params.config, remat_steps=True))
    loss = lambda p: jnp.mean(jglow.log_prob(p, x, z))
    for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss)(params)),
                    jax.tree_util.tree_leaves(jax.grad(loss)(remat))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_trainable_mask_marks_only_the_invconv_constants_frozen(model):
    params, _, _ = model
    mask = jglow.trainable_mask(params)
    frozen = [jax.tree_util.keystr(path) for path, trainable in
              jax.tree_util.tree_flatten_with_path(mask)[0] if not trainable]
    assert len(frozen) == 2 * 3  # perm and sign of 2 levels + final block
    assert all(path.endswith(("['perm']", "['sign']")) for path in frozen)


# --- errors ----------------------------------------------------------------------------------

def test_bad_shapes_raise_value_errors_naming_received_and_expected(model):
    params, x, z = model
    with pytest.raises(ValueError, match=r"x must have shape \(N, 16, 16, 1\).*got \(16, 16, 1\)"):
        jglow.log_prob(params, x[0], z)
    with pytest.raises(ValueError,
                       match=r"x must have shape \(N, 16, 16, 1\).*got \(16, 8, 16, 1\)"):
        jglow.log_prob(params, x[:, :8], z)
    with pytest.raises(ValueError, match=r"z must have shape \(N, 2\).*got \(16, 3\)"):
        jglow.log_prob(params, x, jnp.ones((16, 3)))
    with pytest.raises(ValueError, match=r"z has batch size 4 but the maps have 16"):
        jglow.encode(params, x, z[:4])
    with pytest.raises(ValueError, match=r"latents must have shape \(N, 256\).*got \(16, 255\)"):
        jglow.decode(params, jnp.zeros((16, 255)), z)
    with pytest.raises(ValueError, match=r"z must have shape \(N, 2\).*got \(2,\)"):
        jglow.sample(params, jax.random.PRNGKey(0), z[0])
    with pytest.raises(ValueError, match=r"temperature must be a finite real number >= 0.*got -1"):
        jglow.sample(params, jax.random.PRNGKey(0), z, temperature=-1)
    with pytest.raises(TypeError, match=r"params must be the GlowParams.*got dict"):
        jglow.log_prob({}, x, z)


@pytest.mark.parametrize("overrides, message", [
    (dict(image_shape=(24, 24, 1), levels=4), r"24x24 are not divisible by 2\*\*levels = 16"),
    (dict(prior="flat"), r"prior must be one of .*got 'flat'"),
    (dict(clamp=0.0), r"clamp must lie in \(0, 1\), got 0.0"),
    (dict(padding="reflect"), r"padding must be one of .*got 'reflect'"),
    (dict(steps=0), r"steps must be a positive int, got 0"),
    (dict(image_shape=(16, 16)), r"image_shape must be \(H, W, C\).*got \(16, 16\)"),
])
def test_bad_configurations_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_init_validates_its_batch():
    config = tiny_config()
    x, z = toy_batch(config, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 16, 16, 1\)"):
        jglow.init(jax.random.PRNGKey(0), config, x[..., 0], z)
    with pytest.raises(TypeError, match="config must be a GlowConfig"):
        jglow.init(jax.random.PRNGKey(0), {"levels": 2}, x, z)
