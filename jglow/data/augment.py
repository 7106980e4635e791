"""Augmentation by the exact symmetries of periodic maps."""

import jax
import jax.numpy as jnp

from jglow.compilation import jit


def _augment_one(key, x):
    """One map `(H, W, C)`: a random cyclic shift, then a random element of the symmetry
    group of the grid (flips of either axis, and for square maps the transpose too, which
    with the flips generates all 90° rotations)."""
    shift_key, flip_key = jax.random.split(key)
    height, width = x.shape[:2]
    shift = jax.random.randint(shift_key, (2,), 0, jnp.array([height, width]))
    x = jnp.roll(x, (shift[0], shift[1]), axis=(0, 1))
    flips = jax.random.bernoulli(flip_key, 0.5, (3,))
    x = jnp.where(flips[0], x[::-1], x)
    x = jnp.where(flips[1], x[:, ::-1], x)
    if height == width:
        x = jnp.where(flips[2], jnp.swapaxes(x, 0, 1), x)
    return x


def augment(key, x):
    """Independently transformed copies of a batch `x` `(N, H, W, C)`; same shape and dtype.

    Each map gets a uniform cyclic shift in both axes, then one of the 8 symmetries of a
    square grid (4 rotations × optional flip; only the 4 flip combinations when `H ≠ W`),
    uniformly. Every one maps a periodic field onto an equally likely field, and permutes
    its pixels. Pure and jit-able; `key` is a JAX PRNG key.
    """
    if jnp.ndim(x) != 4:
        raise ValueError(f"x must have shape (N, H, W, C), got {jnp.shape(x)}")
    return _augment_batch(key, x)


@jit
def _augment_batch(key, x):
    """`augment` after its shape check."""
    return jax.vmap(_augment_one)(jax.random.split(key, x.shape[0]), x)
