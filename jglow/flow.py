"""A flow step (1×1 conv → affine injector → coupling) and a stack of `K` of them under
`lax.scan`."""

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jglow.bijectors import AffineInjector, ConditionalCoupling, InvConv1x1
from jglow.numerics import split_keys


@dataclasses.dataclass(frozen=True)
class FlowStep:
    """One flow step on `channels` channels: 1×1 convolution, injector, coupling."""

    channels: int
    hidden: int
    cond_dim: int
    clamp: float
    periodic: bool = False

    @property
    def parts(self):
        injector = AffineInjector(self.channels, self.hidden, self.cond_dim, self.periodic)
        coupling = ConditionalCoupling(self.channels, self.hidden, self.cond_dim, self.clamp,
                                       self.periodic)
        return {"invconv": InvConv1x1(self.channels), "injector": injector, "coupling": coupling}

    def init(self, key, x=None):
        keys = split_keys(key, len(self.parts))
        return {name: part.init(k) for (name, part), k in zip(self.parts.items(), keys)}

    def condition(self, params, z, height, width):
        """Every part's `condition` for `z (N, D)`: `{part name: its terms}`."""
        return {name: part.condition(params[name], z, height, width)
                for name, part in self.parts.items()}

    def forward(self, params, x, cond):
        log_det = jnp.zeros(x.shape[:1], x.dtype)
        for name, part in self.parts.items():
            x, step_log_det = part.forward(params[name], x, cond[name])
            log_det = log_det + step_log_det
        return x, log_det

    def inverse(self, params, y, cond):
        log_det = jnp.zeros(y.shape[:1], y.dtype)
        for name, part in reversed(self.parts.items()):
            y, step_log_det = part.inverse(params[name], y, cond[name])
            log_det = log_det + step_log_det
        return y, log_det


@dataclasses.dataclass(frozen=True)
class StepStack:
    """`count` flow steps with parameters stacked on a leading axis, run under `lax.scan`.

    Compile time does not grow with `count`. With `remat`, each step is wrapped in
    `jax.checkpoint`, so gradients store only the step inputs.
    """

    step: FlowStep
    count: int
    remat: bool = False

    def init(self, key, x=None):
        steps = [self.step.init(k) for k in split_keys(key, self.count)]
        return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *steps)

    def condition(self, params, z, height, width):
        """Every step's terms at once, before the scans: leaves lead with `count`."""
        return jax.vmap(lambda p: self.step.condition(p, z, height, width))(params)

    def forward(self, params, x, cond):
        return self._scan(self.step.forward, params, x, cond, reverse=False)

    def inverse(self, params, y, cond):
        return self._scan(self.step.inverse, params, y, cond, reverse=True)

    def _scan(self, apply_step, params, x, cond, reverse):
        def body(carry, step_inputs):
            x, log_det = carry
            step_params, step_cond = step_inputs
            y, step_log_det = apply_step(step_params, x, step_cond)
            return (y, log_det + step_log_det), None

        if self.remat:
            body = jax.checkpoint(body)
        init = (x, jnp.zeros(x.shape[:1], x.dtype))
        (y, log_det), _ = lax.scan(body, init, (params, cond), reverse=reverse)
        return y, log_det
