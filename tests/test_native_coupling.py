"""The fused coupling kernel (`jglow.native_coupling`) against the coupling's XLA operations."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jglow
from jglow import model, native_coupling
from jglow.bijectors import ConditionalCoupling

pytestmark = pytest.mark.skipif(os.environ.get(native_coupling.ENABLE_VARIABLE) == "0",
                                reason=f"{native_coupling.ENABLE_VARIABLE}=0 turns the kernel off")


@pytest.fixture(scope="module", autouse=True)
def kernel_is_built():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed build warns: fail with its message
        assert native_coupling.registered()


def _coupling_inputs(n, height, width, channels, hidden, seed=0):
    """A coupling with every weight drawn N(0, 0.3²) (none at its zero init), maps and
    conditions."""
    coupling = ConditionalCoupling(channels, hidden, cond_dim=2)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.normal(0.0, 0.3, a.shape), jnp.float32),
        coupling.init(jax.random.PRNGKey(seed)))
    x = jnp.asarray(rng.normal(size=(n, height, width, channels)), jnp.float32)
    z = jnp.asarray(rng.uniform(-1.0, 1.0, (n, 2)), jnp.float32)
    return coupling, params, x, coupling.condition(params, z, height, width)


SHAPES = [  # n, height, width, channels, hidden
    # along rows of pixels
    (3, 16, 16, 4, 16),
    (2, 32, 32, 8, 8),
    (2, 8, 8, 4, 8),     # as the tests' tiny models' first level
    (2, 5, 64, 4, 4),    # not square, width 64
    (1, 2, 16, 16, 4),   # fewer than 3 rows: the condition field has as many rows
    # 16 maps as the vector lanes
    (3, 8, 8, 16, 16),   # as the paper model's 8×8 level
    (17, 2, 2, 64, 16),  # a full block of 16 maps and one more
    (35, 1, 1, 128, 16),
    (5, 3, 5, 32, 32),   # not square
]


@pytest.mark.parametrize("n, height, width, channels, hidden", SHAPES)
def test_kernel_equals_the_xla_coupling(n, height, width, channels, hidden):
    coupling, params, x, cond = _coupling_inputs(n, height, width, channels, hidden)
    assert native_coupling.applies(x, hidden)
    y, log_det = jax.jit(coupling.forward)(params, x, cond)
    y_xla, log_det_xla = jax.jit(coupling.forward_in_xla)(params, x, cond)
    assert y.shape == x.shape and log_det.shape == (n,)
    np.testing.assert_allclose(y, y_xla, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(log_det, log_det_xla, rtol=1e-5)
    assert not np.array_equal(y[..., channels // 2:], x[..., channels // 2:])  # the coupling acts


def test_condition_batch_of_one_is_broadcast_over_the_maps():
    coupling, params, x, cond = _coupling_inputs(3, 16, 16, 4, 8)
    y, log_det = coupling.forward(params, x, cond[:1])
    y_xla, log_det_xla = coupling.forward_in_xla(params, x, cond[:1])
    np.testing.assert_allclose(y, y_xla, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(log_det, log_det_xla, rtol=1e-5)


@pytest.mark.parametrize("width, channels, hidden", [
    (4, 4, 8), (24, 4, 8), (16, 6, 8), (16, 4, 6), (4, 16, 8), (12, 16, 16)])
def test_kernel_does_not_apply_to_other_shapes(width, channels, hidden):
    assert not native_coupling.applies(jnp.zeros((1, 16, width, channels)), hidden)


@pytest.mark.parametrize("side, channels, hidden", [(16, 4, 8), (2, 32, 16)])
def test_non_finite_input_gives_nan_for_that_map_only(side, channels, hidden):
    coupling, params, x, cond = _coupling_inputs(3, side, side, channels, hidden)
    x = x.at[1, side // 2, 1, 0].set(jnp.nan)
    y, log_det = coupling.forward(params, x, cond)
    y_xla, log_det_xla = coupling.forward_in_xla(params, x, cond)
    assert np.isnan(log_det[1]) and np.isnan(log_det_xla[1])
    assert np.isnan(y[1]).all()
    np.testing.assert_allclose(y[::2], y_xla[::2], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(log_det[::2], log_det_xla[::2], rtol=1e-5)


def test_derivatives_and_vmap_are_those_of_the_xla_coupling():
    coupling, params, x, cond = _coupling_inputs(2, 16, 16, 4, 8)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=x.shape), jnp.float32)

    def objective(forward):
        def value(params, x, cond):
            y, log_det = forward(params, x, cond)
            return jnp.sum(y * weights) + jnp.sum(log_det)
        return jax.jit(jax.grad(value, argnums=(0, 1, 2)))

    gradients = objective(coupling.forward)(params, x, cond)
    gradients_xla = objective(coupling.forward_in_xla)(params, x, cond)
    for got, want in zip(jax.tree_util.tree_leaves(gradients),
                         jax.tree_util.tree_leaves(gradients_xla)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

    batched = jax.vmap(coupling.forward, in_axes=(None, 0, 0))(params, x[:, None], cond[:, None])
    for n in range(2):
        single = coupling.forward(params, x[n:n + 1], cond[n:n + 1])
        np.testing.assert_array_equal(batched[0][n], single[0])
        np.testing.assert_array_equal(batched[1][n], single[1])

    # maps shared, conditions mapped (a grid posterior): one kernel call on the merged axis
    shared_map = jax.vmap(coupling.forward, in_axes=(None, None, 0))(params, x, cond[:, None])
    for n in range(2):
        single = coupling.forward(params, x, jnp.broadcast_to(cond[n:n + 1], cond.shape))
        np.testing.assert_array_equal(shared_map[0][n], single[0])
        np.testing.assert_array_equal(shared_map[1][n], single[1])

    # weights mapped too (stacked couplings): one kernel call per element
    _, other_params, _, _ = _coupling_inputs(2, 16, 16, 4, 8, seed=5)
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, other_params)
    per_element = jax.vmap(coupling.forward, in_axes=(0, None, None))(stacked, x, cond)
    for n, p in enumerate((params, other_params)):
        single = coupling.forward(p, x, cond)
        np.testing.assert_array_equal(per_element[0][n], single[0])
        np.testing.assert_array_equal(per_element[1][n], single[1])


def test_model_log_prob_is_the_same_with_and_without_the_kernel(monkeypatch):
    config = jglow.GlowConfig(image_shape=(32, 32, 1), levels=2, steps=2, hidden=8, cond_hidden=8)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 32, 32, 1)), jnp.float32)
    z = jnp.asarray(rng.uniform(-1.0, 1.0, (3, 2)), jnp.float32)
    params = jglow.init(jax.random.PRNGKey(0), config, x, z)
    params = jax.tree_util.tree_map(  # off the zero init, constants of the 1×1 convs kept
        lambda a, trainable: (a + 0.05 * rng.normal(size=a.shape).astype(np.float32)
                              if trainable else a),
        params, jglow.trainable_mask(params))

    def log_prob(params, x, z):
        return model.log_prob_given(params, x, model.condition(params, z))

    with_kernel = jax.jit(log_prob)(params, x, z)
    monkeypatch.setattr(native_coupling, "applies", lambda x, hidden: False)
    without_kernel = jax.jit(log_prob)(params, x, z)  # a new jit: traced again, without it
    np.testing.assert_allclose(with_kernel, without_kernel, rtol=1e-5)


def test_a_failed_build_warns_and_leaves_the_xla_coupling(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv(native_coupling.CACHE_VARIABLE, str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning,
                      match="fused coupling kernel is not available .*no-such-compiler"):
        assert native_coupling._built_library() is None
