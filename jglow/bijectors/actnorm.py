"""ActNorm: a per-channel affine map `y = (x + loc)·exp(log_scale)` with data-dependent init."""

import dataclasses

import jax.numpy as jnp

# Channels whose initial batch has a standard deviation below this keep scale 1: a constant
# channel would otherwise get an enormous scale.
CONSTANT_CHANNEL_STD = 1e-6


@dataclasses.dataclass(frozen=True)
class ActNorm:
    def init(self, key=None, x=None):
        """Parameters that map the batch `x (N, H, W, C)` to zero mean, unit variance per
        channel."""
        if x is None:
            raise ValueError("ActNorm.init needs the example batch x (N, H, W, C) for its "
                             "data-dependent initialisation, got x=None")
        mean = jnp.mean(x, axis=(0, 1, 2))
        std = jnp.std(x, axis=(0, 1, 2))
        safe_std = jnp.where(std > CONSTANT_CHANNEL_STD, std, 1.0)
        return {"loc": -mean, "log_scale": -jnp.log(safe_std)}

    def forward(self, params, x, cond=None):
        y = (x + params["loc"]) * jnp.exp(params["log_scale"])
        return y, self._log_det(params, x)

    def inverse(self, params, y, cond=None):
        x = y * jnp.exp(-params["log_scale"]) - params["loc"]
        return x, -self._log_det(params, y)

    @staticmethod
    def _log_det(params, x):
        n, h, w, _ = x.shape
        return jnp.full((n,), h * w * jnp.sum(params["log_scale"]), x.dtype)
