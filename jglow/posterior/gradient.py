r"""Gradient-based inference beyond the grid: a MAP by projected Adam and a MALA sampler.

Both work in the box coordinates `u = 2 (θ − low) / (high − low) − 1` (for a model these are
exactly its conditions `z`), where the prior box is `[−1, 1]^D`, and use `∇_u log p(map | θ(u))`
through JAX. The target is the posterior under the uniform prior on the box, times an optional
`log_prior(θ)`: it is zero outside the box.

* MAP (`gradient_map`): Adam on `−log p(map | θ) − log_prior(θ)` with an exponentially decaying
  learning rate; after every update `u` is clipped back onto the box (projected gradient), so
  the MAP is constrained to the box and lies on its edge when the posterior peaks beyond it.
* Sampler (`sample_posterior`): preconditioned Metropolis-adjusted Langevin,
  `u' ~ N(u + ½ ε² s² ∇ log π(u), ε² s²)` per chain, proposals outside the box rejected (exact
  for the truncated target). Warm-up in two windows: the first adapts `ε` (Robbins–Monro on
  `log ε` towards acceptance 0.574) with `s = initial_scale`; the second sets `s` to the
  posterior standard deviation of the first window's second half and adapts `ε` again. The
  samples are drawn with both fixed.
"""

import dataclasses
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jglow import checks
from jglow.compilation import jit
from jglow.data import PRIOR_BOX
from jglow.data.prior import from_unit_box, to_unit_box
from jglow.posterior.likelihood import as_pytree

TARGET_ACCEPTANCE = 0.574
"""The optimal MALA acceptance rate (Roberts & Rosenthal 1998)."""


@flax.struct.dataclass
class LogPosterior:
    """`u (S, D) -> (S,)`: `log p(map | θ(u)) + log_prior(θ(u))` in nats, `−inf` outside the box.

    The likelihood is evaluated at `u` clipped onto the box, so it never sees parameters
    outside the box (where it may be undefined) and its gradient stays finite.
    """

    log_likelihood: Any
    log_prior: Any
    single_map: jax.Array  # (1, H, W) raw map
    low: jax.Array         # (D,)
    high: jax.Array        # (D,)

    def theta(self, u):
        """Box coordinates `(..., D)` → physical parameters `(..., D)`."""
        return from_unit_box(u, self.low, self.high)

    def unit(self, theta):
        """Physical parameters `(..., D)` → box coordinates `(..., D)`."""
        return to_unit_box(theta, self.low, self.high)

    def __call__(self, u):
        theta = self.theta(jnp.clip(u, -1.0, 1.0))
        value = self.log_likelihood(self.single_map, theta)[0]
        if self.log_prior is not None:
            value = value + self.log_prior(theta)
        return jnp.where(jnp.all(jnp.abs(u) <= 1.0, axis=-1), value, -jnp.inf)

    def value_and_grad(self, u):
        """Values `(S,)` and gradients `(S, D)` of each row (rows are independent)."""
        values, pullback = jax.vjp(self, u)
        (grad,) = pullback(jnp.ones_like(values))
        return values, grad


def log_posterior(log_likelihood, single_map, box=PRIOR_BOX, log_prior=None) -> LogPosterior:
    """The `LogPosterior` of one raw map `(H, W)` (checked finite and positive)."""
    if np.ndim(single_map) != 2:
        raise ValueError(f"single_map must have shape (H, W), got {np.shape(single_map)}")
    low, high = np.asarray(box, np.float32).T
    return LogPosterior(as_pytree(log_likelihood),
                        None if log_prior is None else as_pytree(log_prior),
                        jnp.asarray(checks.raw_maps(single_map)), jnp.asarray(low),
                        jnp.asarray(high))


def _starting_points(target: LogPosterior, init) -> jax.Array:
    """Physical `init` `(D,)` or `(S, D)` (default: the box centre) → box coordinates `(S, D)`
    clipped onto the box."""
    dim = target.low.shape[0]
    if init is None:
        return jnp.zeros((1, dim), jnp.float32)
    init = checks.conditions(np.atleast_2d(init), dim, "init")
    return jnp.clip(target.unit(jnp.asarray(init)), -1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class PointEstimate:
    """A gradient MAP: physical `theta` `(D,)` and its unnormalised log posterior (nats)."""

    theta: np.ndarray
    log_posterior: float


@jit(static_argnames="steps")
def _projected_adam(target: LogPosterior, u0, steps: int, learning_rate):
    """`steps` Adam updates of every row of `u0` `(S, D)`, clipped onto the box after each."""
    optimiser = optax.adam(optax.exponential_decay(learning_rate, steps, 0.01))

    def update(carry, _):
        u, state = carry
        _, grad = target.value_and_grad(u)
        step, state = optimiser.update(-grad, state)
        return (jnp.clip(optax.apply_updates(u, step), -1.0, 1.0), state), None

    (u, _), _ = lax.scan(update, (u0, optimiser.init(u0)), length=steps)
    return u, target(u)


def gradient_map(log_likelihood, single_map, init=None, box=PRIOR_BOX, log_prior=None,
                 steps=300, learning_rate=0.05) -> PointEstimate:
    """The MAP of `θ` for one raw map `(H, W)` by projected Adam (module docstring).

    Args:
      log_likelihood: `(maps (B, H, W), thetas (M, D)) -> (B, M)` nats, differentiable in θ.
      single_map: raw map `(H, W)`.
      init: physical starting point(s) `(D,)` or `(S, D)`, optimised together (the best is
        returned); default the box centre. E.g. the grid MAP, to refine it.
      box: the prior box `((low, high), …)`; the MAP is constrained to it.
      log_prior: optional log-density of physical θ, `(M, D) -> (M,)`, added to the uniform one.
      steps: Adam updates; learning_rate: the initial one in box units (decays to 1% of it).
    """
    target = log_posterior(log_likelihood, single_map, box, log_prior)
    u, values = _projected_adam(target, _starting_points(target, init), int(steps),
                                jnp.float32(learning_rate))
    best = int(jnp.argmax(values))
    return PointEstimate(np.asarray(target.theta(u[best]), np.float64), float(values[best]))


class _Chains(NamedTuple):
    u: jax.Array         # (C, D) positions in box coordinates
    value: jax.Array     # (C,) log target
    grad: jax.Array      # (C, D)
    log_step: jax.Array  # (C,) log ε


def _mala_step(target: LogPosterior, scale, chains: _Chains, key, adapt_rate):
    """One preconditioned MALA transition of every chain; adapts `log ε` by `adapt_rate`."""
    key_noise, key_accept = jax.random.split(key)
    var = jnp.square(jnp.exp(chains.log_step)[:, None] * scale)
    drift = chains.u + 0.5 * var * chains.grad
    proposal = drift + jnp.sqrt(var) * jax.random.normal(key_noise, chains.u.shape)
    value, grad = target.value_and_grad(proposal)
    back_drift = proposal + 0.5 * var * grad
    log_forward = -0.5 * jnp.sum(jnp.square(proposal - drift) / var, axis=-1)
    log_backward = -0.5 * jnp.sum(jnp.square(chains.u - back_drift) / var, axis=-1)
    log_ratio = value - chains.value + log_backward - log_forward
    log_ratio = jnp.where(jnp.isfinite(value), log_ratio, -jnp.inf)
    accept = jnp.log(jax.random.uniform(key_accept, value.shape)) < log_ratio
    probability = jnp.exp(jnp.minimum(log_ratio, 0.0))
    pick = lambda new, old: jnp.where(accept.reshape(-1, *[1] * (new.ndim - 1)), new, old)  # noqa: E731
    log_step = chains.log_step + adapt_rate * (probability - TARGET_ACCEPTANCE)
    moved = _Chains(pick(proposal, chains.u), pick(value, chains.value), pick(grad, chains.grad),
                    log_step)
    return moved, (moved.u, probability)


class _Moments(NamedTuple):
    """Running sums of the positions of all chains over a window: count, Σu `(D,)`, Σu² `(D,)`."""

    count: jax.Array
    total: jax.Array
    total_sq: jax.Array

    def add(self, u, active):
        """Adds the positions `u` `(C, D)` if `active`."""
        weight = jnp.where(active, 1.0, 0.0)
        return _Moments(self.count + weight * u.shape[0], self.total + weight * u.sum(0),
                        self.total_sq + weight * jnp.square(u).sum(0))

    def std(self):
        mean = self.total / self.count
        return jnp.sqrt(jnp.maximum(self.total_sq / self.count - jnp.square(mean), 0.0))


def _schedule(n_warmup: int, n_samples: int):
    """Per transition: Robbins–Monro gain (`t^-0.6` from the start of each warm-up window, 0
    while sampling), whether its position enters the scale estimate (second half of the first
    window) and whether the scale is set before it (the first step of the second window)."""
    first = n_warmup // 2
    t = np.arange(n_warmup + n_samples)
    since_window = np.where(t < first, t, t - first) + 1.0
    gains = np.where(t < n_warmup, since_window ** -0.6, 0.0).astype(np.float32)
    return gains, (t >= first // 2) & (t < first), t == first


@jit(static_argnames=("n_warmup", "n_samples"))
def _mala(target: LogPosterior, key, u0, n_warmup: int, n_samples: int, initial_scale):
    """Warm-up in two windows, then `n_samples` draws, all in one scan: positions
    `(n_samples, C, D)` and the mean acceptance probability per chain `(C,)`."""
    value, grad = target.value_and_grad(u0)
    chains = _Chains(u0, value, grad, jnp.zeros(u0.shape[0]))
    zeros = jnp.zeros(u0.shape[1:])
    moments = _Moments(jnp.float32(0.0), zeros, zeros)
    scale = jnp.full(u0.shape[1:], initial_scale)

    def transition(carry, inputs):
        chains, scale, moments = carry
        key, gain, collect, rescale = inputs
        scale = jnp.where(rescale, jnp.maximum(moments.std(), 1e-6), scale)
        chains = chains._replace(log_step=jnp.where(rescale, 0.0, chains.log_step))
        chains, (u, probability) = _mala_step(target, scale, chains, key, gain)
        return (chains, scale, moments.add(u, collect)), (u, probability)

    gains, collect, rescale = _schedule(n_warmup, n_samples)
    keys = jax.random.split(key, gains.size)
    _, (positions, probability) = lax.scan(transition, (chains, scale, moments),
                                           (keys, gains, collect, rescale))
    return positions[n_warmup:], probability[n_warmup:].mean(axis=0)


@dataclasses.dataclass(frozen=True)
class PosteriorSamples:
    """MALA draws: physical `theta` `(chains, n, D)` and acceptance rate per chain `(chains,)`."""

    theta: np.ndarray
    acceptance: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """Posterior mean `(D,)` over all chains and draws."""
        return self.theta.reshape(-1, self.theta.shape[-1]).mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        """Posterior standard deviation `(D,)` over all chains and draws."""
        return self.theta.reshape(-1, self.theta.shape[-1]).std(axis=0)


def sample_posterior(log_likelihood, single_map, key, n_samples=1000, n_warmup=500, n_chains=4,
                     init=None, box=PRIOR_BOX, log_prior=None,
                     initial_scale=0.02) -> PosteriorSamples:
    """Draws from the posterior of θ for one raw map `(H, W)` by MALA (module docstring).

    Args:
      log_likelihood, single_map, box, log_prior: as `gradient_map`.
      key: a JAX PRNG key.
      n_samples: draws per chain after warm-up; n_warmup: warm-up transitions (>= 4).
      n_chains: independent chains, run together (the likelihood sees them as `M = n_chains`).
      init: physical starting point `(D,)` of every chain; default the `gradient_map` MAP.
      initial_scale: proposal scale in box units for the first warm-up window.
    """
    if int(n_warmup) < 4 or int(n_samples) < 1 or int(n_chains) < 1:
        raise ValueError(f"need n_warmup >= 4, n_samples >= 1 and n_chains >= 1, got "
                         f"{n_warmup}, {n_samples}, {n_chains}")
    target = log_posterior(log_likelihood, single_map, box, log_prior)
    if init is None:
        init = gradient_map(log_likelihood, single_map, box=box, log_prior=log_prior).theta
    u0 = jnp.repeat(_starting_points(target, np.reshape(init, (1, -1))), int(n_chains), axis=0)
    draws, acceptance = _mala(target, key, u0, int(n_warmup), int(n_samples),
                              jnp.float32(initial_scale))
    theta = np.asarray(target.theta(jnp.swapaxes(draws, 0, 1)), np.float64)
    return PosteriorSamples(theta, np.asarray(acceptance, np.float64))
