"""Small numerical primitives shared by the bijectors and priors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LOG_2PI = math.log(2.0 * math.pi)


def straight_through_clip(x, lower, upper):
    """`clip(x, lower, upper)` in value, identity in gradient (the straight-through estimator)."""
    return x + lax.stop_gradient(jnp.clip(x, lower, upper) - x)


# Up to this many input channels, a convolution runs as one matmul on its gathered patches
# (im2col) instead of XLA's convolution, which is slow on CPU for so few channels: at batch 64,
# 3×3 on 32×32×2 → 16 took 4.9 ms as a convolution and 1.2 ms as patches; from 16 input
# channels on, the convolution was as fast or faster (README, Performance).
PATCHES_MAX_CHANNELS = 4


def conv2d(x, kernel, padding="SAME"):
    """2-D convolution, NHWC input `(N, H, W, Cin)`, HWIO kernel `(kh, kw, Cin, Cout)`, stride 1.

    `padding` is "SAME" (zeros, odd kernel sides) or "VALID". A 1×1 kernel is a matmul; with at
    most `PATCHES_MAX_CHANNELS` input channels the patches are gathered and multiplied.
    """
    kh, kw, channels_in, channels_out = kernel.shape
    if kh == kw == 1:
        return x @ kernel[0, 0]
    if channels_in > PATCHES_MAX_CHANNELS:
        return lax.conv_general_dilated(
            x, kernel, window_strides=(1, 1), padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if padding == "SAME":
        x = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    batch, padded_height, padded_width, _ = x.shape
    height, width = padded_height - kh + 1, padded_width - kw + 1
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    taps = [(rows + i) * padded_width + cols + j for i in range(kh) for j in range(kw)]
    index = np.stack(taps, axis=-1).reshape(height * width, kh * kw)  # into the flat padded map
    patches = x.reshape(batch, padded_height * padded_width, channels_in)[:, index]
    patches = patches.reshape(batch, height, width, kh * kw * channels_in)
    return patches @ kernel.reshape(kh * kw * channels_in, channels_out)


def sum_except_batch(x):
    """`(N, ...) -> (N,)`: the sum over every axis but the first."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def diagonal_gaussian_log_density(x, mean, log_var):
    """`Σ log N(x; mean, exp(log_var))` over all axes but the first, in nats; `(N, ...) -> (N,)`.

    `mean` and `log_var` broadcast against `x`.
    """
    log_var = jnp.broadcast_to(log_var, x.shape)
    quad = jnp.square(x - mean) * jnp.exp(-log_var)
    return -0.5 * sum_except_batch(quad + log_var + LOG_2PI)


def numpy_generator(key) -> np.random.Generator:
    """A numpy random generator seeded by the bits of a JAX PRNG key (typed or raw uint32)."""
    if jnp.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel())


def split_keys(key, count: int) -> np.ndarray:
    """`count` independent raw keys derived from `key`, as a numpy `(count, 2)` uint32 array."""
    seeds = numpy_generator(key).integers(0, 2**32, size=(count, 2), dtype=np.uint32)
    return seeds


def tree_all_finite(tree):
    """True (a scalar bool array) when every leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
