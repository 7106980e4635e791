"""Affine injector, the conditional ActNorm of SRFlow (SPEC §2, flow step 2).

`y = x·exp(s) + b` with `(b, s)` from a CNN of the conditions broadcast as constant channels;
`s` is clamped to `[log 1e-3, 5]` straight-through; `log_det = Σ s` over `H, W, C`. Because the
CNN's input is constant over the map, its output is computed on a 5×5 field and expanded
(`jglow.constant_field`), which is exact.
"""

import dataclasses
import math

import jax.numpy as jnp

from jglow import constant_field
from jglow.nets import InjectorNet, numpy_init
from jglow.numerics import numpy_generator, straight_through_clip, sum_except_batch

LOG_SCALE_RANGE = (math.log(1e-3), 5.0)
# Two 3×3 convolutions (the first conv and the ZeroConv) see the edges.
_CONV_DEPTH = 2


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

    def condition(self, params, z, height, width):
        """`z (N, D)` → `(shift, log_scale)`, each `(N, h, w, C)` on the small field (h, w ≤ 5)."""
        field = constant_field.constant_field(z, height, width, _CONV_DEPTH)
        out = self.net.apply({"params": params}, field)
        shift, log_scale = out[..., : self.channels], out[..., self.channels:]
        return shift, straight_through_clip(log_scale, *LOG_SCALE_RANGE)

    def _expanded(self, cond, x):
        _, h, w, _ = x.shape
        return tuple(constant_field.expand(c, h, w, _CONV_DEPTH) for c in cond)

    def forward(self, params, x, cond):
        shift, log_scale = self._expanded(cond, x)
        y = x * jnp.exp(log_scale) + shift
        return y, jnp.broadcast_to(sum_except_batch(log_scale), x.shape[:1])

    def inverse(self, params, y, cond):
        shift, log_scale = self._expanded(cond, y)
        x = (y - shift) * jnp.exp(-log_scale)
        return x, -jnp.broadcast_to(sum_except_batch(log_scale), y.shape[:1])
