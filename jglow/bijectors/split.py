"""Splitting the channels in half (a level's last step): the first half continues, the second is a
latent."""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ChannelSplit:
    """`(N, H, W, C) ↔ (kept (N, H, W, C//2), latent (N, H, W, C − C//2))`, log-det 0."""

    def init(self, key=None, x=None):
        return {}

    def forward(self, params, x, cond=None):
        half = x.shape[-1] // 2
        return (x[..., :half], x[..., half:]), jnp.zeros(x.shape[:1], x.dtype)

    def inverse(self, params, y, cond=None):
        """`y` is the pair `(kept, latent)` that `forward` returned."""
        kept, latent = y
        return jnp.concatenate([kept, latent], axis=-1), jnp.zeros(kept.shape[:1], kept.dtype)
