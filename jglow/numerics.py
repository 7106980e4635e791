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


def channel_matmul(x, matrix):
    """`(..., Cin) @ (Cin, Cout)` → `(..., Cout)`, as one 2-D matmul.

    XLA:CPU runs a dot with several contracted dimensions (the gradient of `x @ matrix` for a
    4-D `x`) several times slower than the same dot on the flattened 2-D array.
    """
    flat = x.reshape(-1, x.shape[-1]) @ matrix
    return flat.reshape(x.shape[:-1] + matrix.shape[-1:])


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

