"""Conditional affine coupling (SPEC §2, flow step 3).

`xa, xb` = first and second half of the channels; a CNN of `concat(xa, conditions)` gives a raw
scale `r` and a shift `t`; `scale = (1 − clamp)·sigmoid(r + 2) + clamp`, `yb = (xb + t)·scale`,
`ya = xa`, `log_det = Σ log scale`. The inverse, `xb = yb / scale − t`, multiplies `yb` by at
most `1/clamp` (`jglow.model`, conditioning of the inverse).
"""

import dataclasses

import jax
import jax.numpy as jnp

from jglow import constant_field, native_coupling
from jglow.nets import CouplingNet, numpy_init
from jglow.numerics import numpy_generator, sum_except_batch

# One 3×3 convolution sees the conditions' constant field.
_CONV_DEPTH = 1


@dataclasses.dataclass(frozen=True)
class ConditionalCoupling:
    channels: int
    hidden: int
    cond_dim: int
    clamp: float = 1e-3

    def __post_init__(self):
        if self.channels % 2:
            raise ValueError(f"coupling needs an even number of channels, got {self.channels}")

    @property
    def net(self):
        return CouplingNet(hidden=self.hidden, channels=self.channels, cond_dim=self.cond_dim)

    def init(self, key, x=None):
        xa = jnp.zeros((1, 3, 3, self.channels // 2))
        field = jnp.zeros((1, 3, 3, self.cond_dim))
        return numpy_init(self.net, numpy_generator(key), xa, field, method=CouplingNet.init_all)

    def condition(self, params, z, height, width):
        """`z (N, D)` → the conditions' part of the first conv, `(N, h, w, hidden)` with
        h, w ≤ 3."""
        field = constant_field.depth_zero_field(z)
        return self.net.apply({"params": params}, field, (height, width),
                              method=CouplingNet.condition_term)

    def _scale_shift(self, params, xa, cond):
        _, h, w, _ = xa.shape
        cond_term = constant_field.expand(cond, h, w, _CONV_DEPTH)
        out = self.net.apply({"params": params}, xa, cond_term)
        half = self.channels // 2
        raw_scale, shift = out[..., :half], out[..., half:]
        scale = (1.0 - self.clamp) * jax.nn.sigmoid(raw_scale + 2.0) + self.clamp
        return scale, shift

    def forward(self, params, x, cond):
        """`(y, log_det)`; on the CPU, by the fused kernel where it applies
        (`jglow.native_coupling`: the same values, derivatives from `forward_in_xla`)."""
        if native_coupling.applies(x, self.hidden):
            return native_coupling.forward(self.forward_in_xla, self.clamp, params, x, cond)
        return self.forward_in_xla(params, x, cond)

    def forward_in_xla(self, params, x, cond):
        half = self.channels // 2
        xa, xb = x[..., :half], x[..., half:]
        scale, shift = self._scale_shift(params, xa, cond)
        y = jnp.concatenate([xa, (xb + shift) * scale], axis=-1)
        return y, sum_except_batch(jnp.log(scale))

    def inverse(self, params, y, cond):
        half = self.channels // 2
        ya, yb = y[..., :half], y[..., half:]
        scale, shift = self._scale_shift(params, ya, cond)
        x = jnp.concatenate([ya, yb / scale - shift], axis=-1)
        return x, -sum_except_batch(jnp.log(scale))
