"""Priors of the latents: diagonal Gaussians, conditional, learned or standard.

Every prior exposes `init(key) -> params` and `mean_log_var(params, z) -> (mean, log_var)`,
each `(N or 1, h, w, c)`; densities and draws are the shared functions below. The log-variance is
clamped to `[−3, 5]` straight-through.
"""

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

from jglow.nets import PriorMLP, numpy_init
from jglow.numerics import diagonal_gaussian_log_density, numpy_generator, straight_through_clip

LOG_VAR_RANGE = (-3.0, 5.0)


@dataclasses.dataclass(frozen=True)
class ConditionalPrior:
    """Mean and log-variance from two MLPs of the conditions `z (N, D)`."""

    shape: Tuple[int, int, int]
    hidden: int
    cond_dim: int

    @property
    def net(self):
        h, w, c = self.shape
        return PriorMLP(hidden=self.hidden, size=h * w * c)

    def init(self, key):
        rng = numpy_generator(key)
        dummy = jnp.zeros((1, self.cond_dim))
        return {"mean": numpy_init(self.net, rng, dummy),
                "log_var": numpy_init(self.net, rng, dummy)}

    def mean_log_var(self, params, z):
        n = z.shape[0]
        mean = self.net.apply({"params": params["mean"]}, z).reshape(n, *self.shape)
        log_var = self.net.apply({"params": params["log_var"]}, z).reshape(n, *self.shape)
        return mean, straight_through_clip(log_var, *LOG_VAR_RANGE)


@dataclasses.dataclass(frozen=True)
class LearnedPrior:
    """A learned per-element mean and log-variance, independent of the conditions."""

    shape: Tuple[int, int, int]

    def init(self, key):
        return {"mean": jnp.zeros(self.shape), "log_var": jnp.zeros(self.shape)}

    def mean_log_var(self, params, z):
        return params["mean"][None], straight_through_clip(params["log_var"], *LOG_VAR_RANGE)[None]


@dataclasses.dataclass(frozen=True)
class StandardPrior:
    """The fixed N(0, I)."""

    shape: Tuple[int, int, int]

    def init(self, key):
        return {}

    def mean_log_var(self, params, z):
        zeros = jnp.zeros((1, *self.shape))
        return zeros, zeros


def make_prior(kind: str, shape, hidden: int, cond_dim: int):
    """The prior named by `kind` ("conditional", "learned" or "standard")."""
    if kind == "conditional":
        return ConditionalPrior(tuple(shape), hidden, cond_dim)
    if kind == "learned":
        return LearnedPrior(tuple(shape))
    if kind == "standard":
        return StandardPrior(tuple(shape))
    raise ValueError(f"unknown prior {kind!r}; expected 'conditional', 'learned' or 'standard'")


def log_density(latent, mean_log_var):
    """`log p(latent)` in nats, `(N, h, w, c) -> (N,)`."""
    mean, log_var = mean_log_var
    return diagonal_gaussian_log_density(latent, mean, log_var)


def draw(key, mean_log_var, n: int, temperature):
    """`n` draws `ε = μ + T·exp(v/2)·noise`, `(n, h, w, c)`."""
    mean, log_var = mean_log_var
    noise = jax.random.normal(key, (n, *mean.shape[1:]), mean.dtype)
    return mean + temperature * jnp.exp(0.5 * log_var) * noise
