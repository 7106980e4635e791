"""Affine injector, the conditional ActNorm of SRFlow (SPEC §2, flow step 2).

`y = x·exp(s) + b` with `(b, s)` from a CNN of the conditions broadcast as constant channels;
`s` is clamped to `[log 1e-3, 5]` straight-through; `log_det = Σ s` over `H, W, C`. Because the
CNN's input is constant over the map, its hidden layers are computed on a 3×3 field and its
output on a 5×5 field, then expanded (`jglow.constant_field`), which is exact.

`exp(s)` and `exp(−s)` are taken on the small field by `condition`, outside the flow's scan:
inside it, XLA:CPU fused the exponential into the expansion and evaluated it at every pixel
(in sampling, 17% of the 16×16 level's time; README, Performance).
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jglow import constant_field
from jglow.nets import InjectorNet, numpy_init
from jglow.numerics import numpy_generator, straight_through_clip

LOG_SCALE_RANGE = (math.log(1e-3), 5.0)
# Two 3×3 convolutions (the first conv and the ZeroConv) see the edges.
_CONV_DEPTH = 2


class InjectorTerms(NamedTuple):
    """The injector's output on the small field, each `(N, h, w, C)` with h, w ≤ 5."""

    shift: jax.Array          # b
    log_scale: jax.Array      # s, clamped straight-through
    scale: jax.Array          # exp(s)
    inverse_scale: jax.Array  # exp(−s)


@dataclasses.dataclass(frozen=True)
class AffineInjector:
    channels: int
    hidden: int
    cond_dim: int

    @property
    def net(self):
        return InjectorNet(hidden=self.hidden, channels=self.channels)

    def init(self, key):
        return numpy_init(self.net, numpy_generator(key), jnp.zeros((1, 1, 1, self.cond_dim)))

    def condition(self, params, z, height, width) -> InjectorTerms:
        """`z (N, D)` → the injector's `InjectorTerms` on the small field of an `height × width` map."""
        field = constant_field.depth_zero_field(z)
        out = self.net.apply({"params": params}, field, (height, width))
        log_scale = straight_through_clip(out[..., self.channels:], *LOG_SCALE_RANGE)
        return InjectorTerms(shift=out[..., : self.channels], log_scale=log_scale,
                             scale=jnp.exp(log_scale), inverse_scale=jnp.exp(-log_scale))

    def forward(self, params, x, cond: InjectorTerms):
        _, h, w, _ = x.shape
        y = x * self._expanded(cond.scale, h, w) + self._expanded(cond.shift, h, w)
        return y, jnp.broadcast_to(self._log_det(cond.log_scale, h, w), x.shape[:1])

    def inverse(self, params, y, cond: InjectorTerms):
        _, h, w, _ = y.shape
        x = (y - self._expanded(cond.shift, h, w)) * self._expanded(cond.inverse_scale, h, w)
        return x, -jnp.broadcast_to(self._log_det(cond.log_scale, h, w), y.shape[:1])

    @staticmethod
    def _expanded(small, height, width):
        """A small-field quantity `(N, h, w, C)` on the whole `(height, width)` map."""
        return constant_field.expand(small, height, width, _CONV_DEPTH)

    @staticmethod
    def _log_det(log_scale, height, width):
        """`Σ s` over the `(height, width)` map and channels, from the small field: `(N,)`."""
        counts = constant_field.pixel_counts(height, width, _CONV_DEPTH)
        return jnp.einsum("nhwc,hw->n", log_scale, counts)
