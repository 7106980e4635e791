"""Squeeze: space-to-depth by 2×2, `(N, H, W, C) -> (N, H/2, W/2, 4C)`, log-det 0."""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Squeeze:
    """Output channel `4c + 2dy + dx` holds input channel `c` at offset `(dy, dx)` of each 2×2
    block."""

    def init(self, key=None, x=None):
        return {}

    def forward(self, params, x, cond=None):
        n, h, w, c = x.shape
        y = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
        return y.reshape(n, h // 2, w // 2, 4 * c), jnp.zeros((n,), x.dtype)

    def inverse(self, params, y, cond=None):
        n, h, w, c4 = y.shape
        c = c4 // 4
        x = y.reshape(n, h, w, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
        return x.reshape(n, 2 * h, 2 * w, c), jnp.zeros((n,), y.dtype)
