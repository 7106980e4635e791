"""The training state and its pure updates, in the optax style.

`train_step(config, total_steps, state, x, z)` is one optimisation step on a batch of
model-space maps: augmentation (keys from `(seed, step)`), loss `−mean log p / (H·W·C)` (nats
per dim), gradients, Adam after clipping by global norm, the learning rate `lr · warm-up(step) ·
decay` (`learning_rate`), and the exponential moving average of the parameters. A step whose
loss or gradients are not finite leaves the parameters, their average and the optimiser state
untouched and is counted. `end_epoch` applies the validation NLL: the paper's reduce-on-plateau
(`optax.contrib.reduce_on_plateau`, fed once per epoch) and the early-stopping counter.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from optax.contrib import ReduceLROnPlateauState, reduce_on_plateau

import jglow
from jglow.data import augment
from jglow.model import condition, log_prob_given
from jglow.model_params import GlowParams
from jglow.train.config import TrainConfig


class TrainState(NamedTuple):
    """Everything that evolves during training (a pytree of arrays; checkpointed whole).

    Attributes:
      step: int32 scalar, steps taken (skipped non-finite steps included).
      params: the model parameters.
      ema_params: their exponential moving average (`config.ema_decay`, `average_decay`;
        equal to `params` when it is 0), the parameters validated, exported and sampled.
      opt_state: Adam's state (the 1×1-conv constants have none: they are never moved).
      plateau: the reduce-on-plateau state; `plateau.scale` multiplies the learning rate.
      best_val_nll: float32 scalar, the lowest validation NLL so far (nats per map; inf at first).
      bad_epochs: int32 scalar, epochs since the best validation NLL.
      nonfinite_streak: int32 scalar, consecutive skipped steps ending at the last one.
      nonfinite_total: int32 scalar, skipped steps in all.
      rng: `(2,)` uint32 raw key of the run; augmentation uses `fold_in(rng, step)`.
    """

    step: jax.Array
    params: GlowParams
    ema_params: GlowParams
    opt_state: optax.OptState
    plateau: ReduceLROnPlateauState
    best_val_nll: jax.Array
    bad_epochs: jax.Array
    nonfinite_streak: jax.Array
    nonfinite_total: jax.Array
    rng: jax.Array


def _labels(params: GlowParams):
    """The optimiser's labels: "train" for trainable leaves, "frozen" for the 1×1-conv constants."""
    return jax.tree_util.tree_map(lambda trainable: "train" if trainable else "frozen",
                                  jglow.trainable_mask(params))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Clip by global norm, then Adam's scaling, for the trainable leaves; the constants of the
    1×1 convolutions (`jglow.trainable_mask`) get zero updates. The learning rate is applied
    in `train_step`.

    The trainable leaves are raveled into one vector (`optax.flatten`), so the norm and Adam
    are a few large XLA operations instead of some per leaf (224 leaves in the paper model):
    the same arithmetic, much less to compile (benchmarks/RESULTS.md)."""
    adam = optax.flatten(optax.chain(optax.clip_by_global_norm(config.clip_norm),
                                     optax.scale_by_adam()))
    return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, _labels)


def plateau_rule(config: TrainConfig) -> optax.GradientTransformationExtraArgs:
    """The paper's schedule: ×`plateau_factor` after `plateau_patience` epochs without
    improvement of the validation NLL, the learning rate never below `min_learning_rate`."""
    return reduce_on_plateau(factor=config.plateau_factor, patience=config.plateau_patience,
                             min_scale=config.min_learning_rate / config.learning_rate)


def init_state(config: TrainConfig, params: GlowParams, key) -> TrainState:
    """The state before the first step; `key` (a JAX key) seeds the augmentation."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        ema_params=jax.tree_util.tree_map(jnp.copy, params),  # its own buffers (donation)
        opt_state=make_optimizer(config).init(params),
        plateau=plateau_rule(config).init(jnp.zeros((), jnp.float32)),
        best_val_nll=jnp.array(jnp.inf, jnp.float32), bad_epochs=jnp.zeros((), jnp.int32),
        nonfinite_streak=jnp.zeros((), jnp.int32), nonfinite_total=jnp.zeros((), jnp.int32),
        rng=jax.random.key_data(key))


def learning_rate(config: TrainConfig, step, plateau_scale, total_steps: int):
    """The learning rate of step `step` (0-based) of a run of `total_steps` (a float32 scalar):
    `lr · min(1, (step + 1) / warmup_steps) · decay`, where `decay` is `plateau_scale` for the
    "plateau" schedule and, for "cosine", falls from 1 at the end of the warm-up to
    `min_learning_rate / lr` at the last step along half a cosine."""
    warmup = jnp.minimum(1.0, (step + 1.0) / config.warmup_steps)
    if config.schedule == "plateau":
        decay = plateau_scale
    else:
        floor = config.min_learning_rate / config.learning_rate
        span = max(1, total_steps - 1 - config.warmup_steps)
        progress = jnp.clip((step - config.warmup_steps) / span, 0.0, 1.0)
        decay = floor + (1.0 - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.float32(config.learning_rate) * warmup * decay


def average_decay(decay: float, step):
    """The moving average's decay at step `step` (0-based): `min(decay, (1 + step) / (10 +
    step))`, so the average forgets the initialisation within the first steps instead of
    carrying it for `1 / (1 − decay)` steps."""
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def moving_average(decay: float, average: GlowParams, params: GlowParams) -> GlowParams:
    """`decay · average + (1 − decay) · params` on the trainable leaves (`jglow.trainable_mask`);
    the 1×1-conv constants are taken from `params` unchanged, bit for bit."""
    def update(trainable, mean, value):
        return decay * mean + (1.0 - decay) * value if trainable else value

    return jax.tree_util.tree_map(update, jglow.trainable_mask(params), average, params)


def loss_fn(params: GlowParams, x, z):
    """Negative log-likelihood in nats per dimension: `−mean_n log p(x_n | z_n) / (H·W·C)`."""
    return -jnp.mean(log_prob_given(params, x, condition(params, z))) / params.config.dim


CONDITION_NOISE_STREAM = 1
"""The noise on the conditions of step `s` is drawn from `fold_in(fold_in(rng, s), 1)`, apart from
the augmentation's `fold_in(rng, s)`."""


def train_step(config: TrainConfig, total_steps: int, state: TrainState, x, z,
               loss_and_grad=jax.value_and_grad(loss_fn)):
    """One step of a run of `total_steps` on the global batch `x (B, H, W, C)`, `z (B, D)`
    (model space). With `config.augment` the maps are augmented, with `config.condition_noise`
    each map's conditions are moved by Gaussian noise of that standard deviation.

    `loss_and_grad(params, x, z) -> (loss, grads)` is `value_and_grad(loss_fn)` or, on a
    device mesh, its data-parallel form (`parallel.reduce_over_shards`).

    Returns `(new state, metrics)`, metrics a dict of scalars: `loss` (nats/dim, of this batch
    before the update), `grad_norm` (before clipping), `learning_rate`, `finite` (bool),
    `nonfinite_streak`, `nonfinite_total`.
    """
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    if config.augment:
        x = augment(key, x)
    if config.condition_noise:
        noise = jax.random.normal(jax.random.fold_in(key, CONDITION_NOISE_STREAM), z.shape)
        z = z + config.condition_noise * noise.astype(z.dtype)
    loss, grads = loss_and_grad(state.params, x, z)
    updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.params)
    rate = learning_rate(config, state.step, state.plateau.scale, total_steps)
    params = optax.apply_updates(state.params, jax.tree_util.tree_map(lambda u: -rate * u, updates))
    ema_params = moving_average(average_decay(config.ema_decay, state.step), state.ema_params,
                                params)
    flat_grads, _ = ravel_pytree(grads)  # one reduction per check below, not one per leaf
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(flat_grads))

    def keep_if_finite(new, old):
        return jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)

    streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
    new_state = state._replace(
        step=state.step + 1, params=keep_if_finite(params, state.params),
        ema_params=keep_if_finite(ema_params, state.ema_params),
        opt_state=keep_if_finite(opt_state, state.opt_state), nonfinite_streak=streak,
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
    metrics = {"loss": loss, "grad_norm": jnp.linalg.norm(flat_grads), "learning_rate": rate,
               "finite": finite, "nonfinite_streak": streak,
               "nonfinite_total": new_state.nonfinite_total}
    return new_state, metrics


def record_validation(state: TrainState, val_nll):
    """Note a validation NLL (nats per map, float32 scalar) taken outside the epoch schedule
    (at the end of a run cut mid-epoch): only the best value changes. Returns `(state,
    improved)`, `improved` a bool scalar; a non-finite `val_nll` never improves."""
    improved = jnp.isfinite(val_nll) & (val_nll < state.best_val_nll)
    return state._replace(best_val_nll=jnp.where(improved, val_nll, state.best_val_nll)), improved


def end_epoch(config: TrainConfig, state: TrainState, val_nll):
    """Apply the epoch's validation NLL: the best value, the plateau schedule and the
    early-stopping counter. Returns `(state, improved)` as `record_validation`. Pure, jit-able."""
    _, plateau = plateau_rule(config).update(None, state.plateau, value=val_nll)
    state, improved = record_validation(state, val_nll)
    bad_epochs = jnp.where(improved, 0, state.bad_epochs + 1)
    return state._replace(plateau=plateau, bad_epochs=bad_epochs), improved


def bits_per_dim(nll_nats_per_map, dim: int) -> float:
    """Nats per map → bits per dimension: `nll / (dim · ln 2)`."""
    return float(nll_nats_per_map) / (dim * math.log(2.0))
