"""Affine injector, the conditional ActNorm of SRFlow (a flow step's second bijector).

`y = x·exp(s) + b` with `(b, s)` from a CNN of the conditions broadcast as constant channels;
`s` is clamped to `[log 1e-3, 5]` straight-through; `log_det = Σ s` over `H, W, C`. Because the
CNN's input is constant over the map, its hidden layers are computed on a 3×3 field and its
output on a 5×5 field, then expanded (`jglow.constant_field`), which is exact.

`exp(s)`, `exp(−s)` and `Σ s` are taken once, on the small field, by `condition` (faster than
per pixel inside the flow's scan; `s` itself is not kept).
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
    """The injector's output on the small field, `(N, h, w, C)` with h, w ≤ 5, and its log-det.

    `s` is the clamped (straight-through) log-scale.
    """

    shift: jax.Array          # b
    scale: jax.Array          # exp(s)
    inverse_scale: jax.Array  # exp(−s)
    log_det: jax.Array        # Σ s over the whole map and channels, (N,)


@dataclasses.dataclass(frozen=True)
class AffineInjector:
    channels: int
    hidden: int
    cond_dim: int
    periodic: bool = False  # circular padding of the CNN's 3×3 convs (maps of a periodic box)

    @property
    def net(self):
        return InjectorNet(hidden=self.hidden, channels=self.channels, periodic=self.periodic)

    def init(self, key, x=None):
        return numpy_init(self.net, numpy_generator(key), jnp.zeros((1, 1, 1, self.cond_dim)))

    def condition(self, params, z, height, width) -> InjectorTerms:
        """`z (N, D)` → the injector's `InjectorTerms` on the small field of an
        `height × width` map."""
        field = constant_field.depth_zero_field(z)
        out = self.net.apply({"params": params}, field, (height, width))
        log_scale = straight_through_clip(out[..., self.channels:], *LOG_SCALE_RANGE)
        counts = constant_field.pixel_counts(height, width, _CONV_DEPTH, self.periodic)
        return InjectorTerms(shift=out[..., : self.channels], scale=jnp.exp(log_scale),
                             inverse_scale=jnp.exp(-log_scale),
                             log_det=jnp.einsum("nhwc,hw->n", log_scale, counts))

    def forward(self, params, x, cond: InjectorTerms):
        _, h, w, _ = x.shape
        y = x * self._expanded(cond.scale, h, w) + self._expanded(cond.shift, h, w)
        return y, jnp.broadcast_to(cond.log_det, x.shape[:1])

    def inverse(self, params, y, cond: InjectorTerms):
        _, h, w, _ = y.shape
        x = (y - self._expanded(cond.shift, h, w)) * self._expanded(cond.inverse_scale, h, w)
        return x, -jnp.broadcast_to(cond.log_det, y.shape[:1])

    def _expanded(self, small, height, width):
        """A small-field quantity `(N, h, w, C)` on the whole `(height, width)` map."""
        return constant_field.expand(small, height, width, _CONV_DEPTH, self.periodic)
