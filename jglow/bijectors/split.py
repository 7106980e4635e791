"""Split of the channels in half (SPEC §2, step 4): the first half continues, the second is a
latent."""

import jax.numpy as jnp


def split(x):
    """`(N, H, W, C) -> (kept (N, H, W, C//2), latent (N, H, W, C - C//2))`; volume-preserving."""
    half = x.shape[-1] // 2
    return x[..., :half], x[..., half:]


def merge(kept, latent):
    """Inverse of `split`."""
    return jnp.concatenate([kept, latent], axis=-1)
