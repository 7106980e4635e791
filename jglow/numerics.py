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


def lower_triangular_inverse(t):
    """Inverses of lower-triangular matrices `t (..., n, n)` with nonzero diagonals.

    Entries above the diagonal are ignored. Block substitution from the 1×1 diagonal blocks up,
    `inv([[A, 0], [B, D]]) = [[A⁻¹, 0], [−D⁻¹·B·A⁻¹, D⁻¹]]`, all blocks of one size at once:
    ⌈log2 n⌉ rounds of batched matmuls, in XLA's own ops. (`jax.scipy.linalg.solve_triangular`
    on CPU calls the LAPACK that scipy bundles, whose worker threads then spin for a while and
    took a quarter of the CPU from the sampling program; benchmarks/RESULTS.md.)
    """
    n = t.shape[-1]
    size = 1 << (n - 1).bit_length()  # the power of two ≥ n; padded with the identity
    batch = t.shape[:-2]
    padding = [(0, 0)] * len(batch) + [(0, size - n)] * 2
    padded = jnp.pad(jnp.tril(t), padding) + np.diag(np.arange(size) >= n).astype(t.dtype)
    inverse = (1.0 / jnp.diagonal(padded, axis1=-2, axis2=-1))[..., None, None]  # (..., size, 1, 1)
    block = 1
    while block < size:
        count = size // block
        blocks = jnp.swapaxes(padded.reshape(batch + (count, block, count, block)), -3, -2)
        pairs = np.arange(0, count, 2)
        below = blocks[..., pairs + 1, pairs, :, :]                   # B of each pair
        upper_left, lower_right = inverse[..., 0::2, :, :], inverse[..., 1::2, :, :]
        corner = -(lower_right @ below @ upper_left)
        top = jnp.concatenate([upper_left, jnp.zeros_like(corner)], axis=-1)
        bottom = jnp.concatenate([corner, lower_right], axis=-1)
        inverse = jnp.concatenate([top, bottom], axis=-2)             # (..., count / 2, 2b, 2b)
        block *= 2
    return inverse[..., 0, :n, :n]


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

