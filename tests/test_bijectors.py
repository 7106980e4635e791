"""What each bijector does beyond the contract (tests/test_bijector_contract.py), and the
convolutions and small fields they are built on."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jglow
from jglow import constant_field, numerics
from jglow.bijectors import (ActNorm, AffineInjector, ChannelSplit, ConditionalCoupling, InvConv1x1,
                             Squeeze)
from jglow.bijectors.injector import LOG_SCALE_RANGE
from jglow.nets import InjectorNet
from jglow.conv import conv2d
from jglow.flow import FlowStep


CHANNELS, SIDE, COND_DIM = 4, 6, 2  # 6 > 5, so the injector's small-field expansion is exercised
# (pad_value, periodic): an ordinary convolution, Glow's ZeroConv, a circular convolution.
BORDERS = [(0.0, False), (1.0, False), (0.0, True)]


def _inputs(n=3, seed=0):
    key_x, key_z = jax.random.split(jax.random.PRNGKey(seed))
    x = 1.5 * jax.random.normal(key_x, (n, SIDE, SIDE, CHANNELS)) + 0.3
    z = jax.random.uniform(key_z, (n, COND_DIM), minval=-1.0, maxval=1.0)
    return x, z


def test_squeeze_puts_each_2x2_block_into_channels_in_documented_order():
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    y, _ = Squeeze().forward({}, x)
    assert y.shape == (2, 2, 2, 12)
    for c in range(3):
        for dy in range(2):
            for dx in range(2):
                np.testing.assert_array_equal(y[:, :, :, 4 * c + 2 * dy + dx],
                                              x[:, dy::2, dx::2, c])


def test_split_keeps_the_first_half_of_the_channels_and_merges_back_exactly():
    x, _ = _inputs()
    (kept, latent), log_det = ChannelSplit().forward({}, x)
    np.testing.assert_array_equal(kept, x[..., : CHANNELS // 2])
    np.testing.assert_array_equal(latent, x[..., CHANNELS // 2:])
    np.testing.assert_array_equal(log_det, np.zeros(x.shape[0]))
    np.testing.assert_array_equal(ChannelSplit().inverse({}, (kept, latent))[0], x)


def test_actnorm_init_without_an_example_batch_names_what_it_needs():
    with pytest.raises(ValueError, match=r"ActNorm.init needs the example batch x \(N, H, W, C\) "
                                         r"for its data-dependent initialisation, got x=None"):
        ActNorm().init(None)


def test_actnorm_normalises_its_init_batch_and_guards_constant_channels():
    x, _ = _inputs()
    x = x.at[..., 1].set(7.0)  # a constant channel
    params = ActNorm().init(None, x)
    y, _ = ActNorm().forward(params, x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2))[jnp.array([0, 2, 3])], 1.0, atol=1e-4)
    assert float(params["log_scale"][1]) == 0.0


def test_invconv_weight_times_inverse_is_identity_and_constants_get_no_gradient():
    bijector = InvConv1x1(8)
    params = bijector.init(jax.random.PRNGKey(0))
    np.testing.assert_allclose(bijector.weight(params) @ bijector.inverse_weight(params),
                               jnp.eye(8), atol=1e-5)
    x, _ = _inputs()
    small = InvConv1x1(CHANNELS)

    def loss(p):
        return jnp.sum(small.forward(p, x, small.condition(p, None, SIDE, SIDE))[0] ** 2)

    grads = jax.grad(loss)(small.init(jax.random.PRNGKey(0)))
    assert float(jnp.abs(grads["perm"]).max()) == 0.0 and float(jnp.abs(grads["sign"]).max()) == 0.0
    assert float(jnp.abs(grads["lower"]).max()) > 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 12])
def test_lower_triangular_inverse_equals_the_float64_inverse_and_ignores_the_upper_triangle(n):
    rng = np.random.default_rng(n)
    diagonal = rng.uniform(0.5, 2.0, (2, 3, n)) * rng.choice([-1.0, 1.0], (2, 3, n))
    lower = np.tril(0.5 * rng.standard_normal((2, 3, n, n)), -1) + diagonal[..., None] * np.eye(n)
    junk_above = np.triu(rng.standard_normal((n, n)), 1)
    inverse = numerics.lower_triangular_inverse(jnp.asarray(lower + junk_above, jnp.float32))
    assert inverse.shape == (2, 3, n, n)
    np.testing.assert_allclose(inverse, np.linalg.inv(lower), atol=1e-5, rtol=1e-5)


def test_sampling_program_calls_no_lapack():
    """The inverse 1×1 conv's weights come from XLA's own ops: LAPACK (scipy's OpenBLAS) leaves
    worker threads spinning that slowed sampling by a third."""
    config = jglow.GlowConfig(image_shape=(8, 8, 1), levels=2, steps=2, hidden=4)
    z = jnp.zeros((2, config.cond_dim))
    params = jglow.init(jax.random.PRNGKey(0), config, jnp.zeros((2, 8, 8, 1)), z)
    program = jax.jit(lambda p, key, conditions: jglow.sample(p, key, conditions, 1.0)).lower(
        params, jax.random.PRNGKey(1), z).as_text()
    assert "stablehlo.dot_general" in program and "lapack" not in program


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("side", [1, 2, 3, 4, 5, 6, 9, 16])
def test_small_field_expansion_equals_the_full_constant_field(side, periodic):
    """The injector CNN on the full (side × side) constant field equals its condition (hidden
    layers on the 3×3 field, output on the 5×5 field; 1×1 with periodic padding) expanded, and
    the log-det its sum."""
    bijector = AffineInjector(CHANNELS, 8, COND_DIM, periodic)
    params = jax.tree_util.tree_map(
        lambda leaf: leaf + 0.3 * jax.random.normal(jax.random.PRNGKey(leaf.size), leaf.shape),
        bijector.init(jax.random.PRNGKey(2)))
    _, z = _inputs()
    full_field = jnp.broadcast_to(z[:, None, None, :], (z.shape[0], side, side, COND_DIM))
    full = InjectorNet(8, CHANNELS, periodic).apply({"params": params}, full_field)
    shift, log_scale = full[..., :CHANNELS], jnp.clip(full[..., CHANNELS:], *LOG_SCALE_RANGE)
    terms = bijector.condition(params, z, side, side)

    def expanded(small):
        return constant_field.expand(small, side, side, 2, periodic)

    np.testing.assert_allclose(expanded(terms.shift), shift, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(expanded(terms.scale), jnp.exp(log_scale), rtol=1e-5)
    np.testing.assert_allclose(expanded(terms.inverse_scale), jnp.exp(-log_scale), rtol=1e-5)
    np.testing.assert_allclose(terms.log_det, jnp.sum(log_scale, axis=(1, 2, 3)), atol=1e-4,
                               rtol=1e-5)


@pytest.mark.parametrize("periodic", [False, True])
def test_a_flow_step_commutes_with_periodic_shifts_exactly_when_its_padding_is_circular(periodic):
    """forward(roll(x)) == roll(forward(x)) with the same log-det, for circular padding; zero
    padding sees the edges, so there it differs."""
    step = FlowStep(CHANNELS, 8, COND_DIM, clamp=1e-3, periodic=periodic)
    params = jax.tree_util.tree_map(
        lambda leaf: leaf + 0.3 * jax.random.normal(jax.random.PRNGKey(leaf.size), leaf.shape),
        step.init(jax.random.PRNGKey(2)))
    x, z = _inputs()
    cond = step.condition(params, z, SIDE, SIDE)
    roll = functools.partial(jnp.roll, shift=(2, -1), axis=(1, 2))
    y, log_det = step.forward(params, x, cond)
    y_of_rolled, log_det_of_rolled = step.forward(params, roll(x), cond)
    difference = float(jnp.max(jnp.abs(y_of_rolled - roll(y))))
    if periodic:
        assert difference < 1e-5
        np.testing.assert_allclose(log_det_of_rolled, log_det, rtol=1e-5, atol=1e-4)
    else:
        assert difference > 1e-2


@pytest.mark.parametrize("height, width", [(1, 1), (1, 4), (2, 2), (3, 7), (4, 4), (16, 5)])
@pytest.mark.parametrize("pad_value, periodic", BORDERS)
@pytest.mark.parametrize("depth", [0, 1])
def test_conv_of_small_field_equals_the_conv_of_the_expanded_field(height, width, pad_value,
                                                                   periodic, depth):
    """`conv_of_small_field` on a depth-n field == conv2d of the expanded map, on the depth-n+1
    field."""
    small_shape = (3, constant_field.small_side(height, depth, periodic),
                   constant_field.small_side(width, depth, periodic), 5)
    small = jax.random.normal(jax.random.PRNGKey(4), small_shape)
    kernel = jax.random.normal(jax.random.PRNGKey(5), (3, 3, 5, 6))
    direct = conv2d(constant_field.expand(small, height, width, depth, periodic), kernel,
                    pad_value, periodic)
    deeper = constant_field.conv_of_small_field(small, kernel, height, width, depth, pad_value,
                                                periodic)
    assert deeper.shape == (3, constant_field.small_side(height, depth + 1, periodic),
                            constant_field.small_side(width, depth + 1, periodic), 6)
    np.testing.assert_allclose(constant_field.expand(deeper, height, width, depth + 1, periodic),
                               direct, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("height, width", [(1, 1), (2, 2), (3, 7), (16, 5)])
def test_conv_of_small_field_has_the_gradients_of_the_conv_of_the_expanded_field(height, width,
                                                                                 periodic):
    """Its derivatives, in reverse and forward mode, == autodiff through conv2d of the
    expanded map, in the small field and in the kernel."""
    small_shape = (2, constant_field.small_side(height, 1, periodic),
                   constant_field.small_side(width, 1, periodic), 4)
    small = jax.random.normal(jax.random.PRNGKey(6), small_shape)
    kernel = jax.random.normal(jax.random.PRNGKey(7), (3, 3, 4, 3))
    weights = jax.random.normal(jax.random.PRNGKey(8), (2, height, width, 3))

    def projection(fn):  # a random linear functional of the full (height, width) output map
        return lambda s, k: jnp.sum(weights * jnp.sin(fn(s, k)))

    direct = projection(lambda s, k: conv2d(
        constant_field.expand(s, height, width, 1, periodic), k, 1.0, periodic))
    shortcut = projection(lambda s, k: constant_field.expand(
        constant_field.conv_of_small_field(s, k, height, width, 1, 1.0, periodic),
        height, width, 2, periodic))
    for derivative in (jax.grad, jax.jacfwd):
        for ours, reference in zip(jax.jit(derivative(shortcut, (0, 1)))(small, kernel),
                                   jax.jit(derivative(direct, (0, 1)))(small, kernel)):
            np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("periodic", [False, True])
def test_split_coupling_conv_equals_conv_of_the_concatenation(periodic):
    """conv(concat(xa, z-field)) == conv(xa) + the 3×3-field condition term, expanded."""
    bijector = ConditionalCoupling(CHANNELS, 8, COND_DIM, periodic=periodic)
    params = bijector.init(jax.random.PRNGKey(3))
    x, z = _inputs()
    xa = x[..., : CHANNELS // 2]
    full_field = jnp.broadcast_to(z[:, None, None, :], (*xa.shape[:3], COND_DIM))
    kernel = jnp.concatenate([params["kernel_x"], params["kernel_cond"]], axis=2)
    direct = conv2d(jnp.concatenate([xa, full_field], axis=-1), kernel, periodic=periodic)
    direct = direct + params["bias"]
    cond_term = constant_field.expand(bijector.condition(params, z, SIDE, SIDE), SIDE, SIDE, 1,
                                      periodic)
    split_form = conv2d(xa, params["kernel_x"], periodic=periodic) + cond_term
    np.testing.assert_allclose(split_form, direct, atol=1e-5)


def _wrapped(x, margin, axis):
    """`x` with its last `margin` rows (along `axis`) copied before it and its first after it."""
    if margin == 0:
        return x
    before = lax.slice_in_dim(x, x.shape[axis] - margin, x.shape[axis], axis=axis)
    after = lax.slice_in_dim(x, 0, margin, axis=axis)
    return jnp.concatenate([before, x, after], axis=axis)


def _xla_conv(x, kernel, pad_value, periodic):
    """XLA's convolution of `x` padded with `pad_value`, or with its opposite edges."""
    kh, kw = kernel.shape[:2]
    if periodic:
        padded = _wrapped(_wrapped(x, kh // 2, 1), kw // 2, 2)
    else:
        padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)),
                         constant_values=pad_value)
    return jax.lax.conv_general_dilated(padded, kernel, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


# (side, channels in, channels out, kernel side): a small field (XLA's convolution), few input
# channels (broadcast products), few output channels (taps then shift), neither (XLA's), 1×1;
# tangents in im2col form (in ≤ out) and in taps-then-shift form (in > out).
CONV_CASES = [(4, 2, 7, 3), (9, 2, 16, 3), (9, 16, 4, 3), (9, 8, 6, 3), (9, 3, 5, 1)]


@pytest.mark.parametrize("side, channels_in, channels_out, size", CONV_CASES)
@pytest.mark.parametrize("pad_value, periodic", BORDERS)
def test_conv2d_value_and_derivatives_equal_xla_convolution(side, channels_in, channels_out, size,
                                                            pad_value, periodic):
    """Every path of `conv2d`, its JVP, its VJP and its vmapped gradient agree with `lax.conv`."""
    rng = np.random.default_rng(side * channels_in)
    x, tangent_x = (jnp.asarray(rng.standard_normal((3, side, side + 1, channels_in)), jnp.float32)
                    for _ in range(2))
    kernel, tangent_kernel = (
        jnp.asarray(rng.standard_normal((size, size, channels_in, channels_out)), jnp.float32)
        for _ in range(2))
    ours = lambda x, kernel: conv2d(x, kernel, pad_value, periodic)
    xla = lambda x, kernel: _xla_conv(x, kernel, pad_value, periodic)
    expected = xla(x, kernel)
    assert ours(x, kernel).shape == expected.shape == (3, side, side + 1, channels_out)
    np.testing.assert_allclose(ours(x, kernel), expected, rtol=1e-5, atol=1e-4)
    primals, tangents = (x, kernel), (tangent_x, tangent_kernel)
    np.testing.assert_allclose(jax.jvp(ours, primals, tangents)[1],
                               jax.jvp(xla, primals, tangents)[1], rtol=1e-5, atol=1e-4)
    cotangent = jnp.asarray(rng.standard_normal(expected.shape), jnp.float32)
    for got, want in zip(jax.vjp(ours, x, kernel)[1](cotangent),
                         jax.vjp(xla, x, kernel)[1](cotangent)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    kernels = jnp.stack([kernel, tangent_kernel])
    batched_grad = lambda f: jax.vmap(jax.grad(lambda k: jnp.sum(jnp.sin(f(x, k)))))(kernels)
    np.testing.assert_allclose(batched_grad(ours), batched_grad(xla), rtol=1e-4, atol=1e-3)


def test_conv2d_refuses_even_kernels():
    with pytest.raises(ValueError, match="odd kernel sides, got 2x2"):
        conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((2, 2, 1, 1)))
