"""Conditional affine coupling (a flow step's third bijector).

`xa, xb` = first and second half of the channels; a CNN of `concat(xa, conditions)` gives a raw
scale `r` and a shift `t`; `scale = (1 − clamp)·sigmoid(r + 2) + clamp`, `yb = (xb + t)·scale`,
`ya = xa`, `log_det = Σ log scale`. The inverse, `xb = yb / scale − t`, multiplies `yb` by at
most `1/clamp` (`jglow.model`, conditioning of the inverse). On the CPU the forward pass runs as
one fused kernel where it applies (`jglow.native_coupling`).
"""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jglow import constant_field, native_coupling
from jglow.nets import CouplingNet, CouplingWeights, coupling_weights, numpy_init
from jglow.numerics import numpy_generator, sum_except_batch

# One 3×3 convolution sees the conditions' constant field.
_CONV_DEPTH = 1
# The raw scale's offset: a zero CNN output gives scale (1 − clamp)·sigmoid(2) + clamp ≈ 0.88.
SCALE_OFFSET = 2.0


def coupling_scale(raw, clamp: float, offset: float = SCALE_OFFSET):
    """`(1 − clamp)·sigmoid(raw + offset) + clamp`, in `(clamp, 1)`."""
    return (1.0 - clamp) * jax.nn.sigmoid(raw + offset) + clamp


@dataclasses.dataclass(frozen=True)
class ConditionalCoupling:
    channels: int
    hidden: int
    cond_dim: int
    clamp: float = 1e-3
    periodic: bool = False  # circular padding of the CNN's 3×3 convs (maps of a periodic box)
    scale_offset: ClassVar[float] = SCALE_OFFSET

    def __post_init__(self):
        if self.channels % 2:
            raise ValueError(f"coupling needs an even number of channels, got {self.channels}")

    @property
    def net(self):
        return CouplingNet(hidden=self.hidden, channels=self.channels, cond_dim=self.cond_dim,
                           periodic=self.periodic)

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
        cond_term = constant_field.expand(cond, h, w, _CONV_DEPTH, self.periodic)
        out = self.net.apply({"params": params}, xa, cond_term)
        half = self.channels // 2
        return coupling_scale(out[..., :half], self.clamp, self.scale_offset), out[..., half:]

    def forward(self, params, x, cond):
        if not self.periodic and native_coupling.applies(x, self.hidden):
            return native_coupling.forward(self, params, x, cond)
        return self.forward_in_xla(params, x, cond)

    def kernel_weights(self, params) -> CouplingWeights:
        """The CNN's weights as the fused kernel takes them; with `clamp` and `scale_offset`,
        all it needs of this coupling."""
        return coupling_weights(params)

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
