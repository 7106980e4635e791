"""The multi-scale conditional Glow: parameters, likelihood, sampling, encode/decode.

Forward (data → latents), per level: squeeze, optional ActNorm, `K` flow steps, split off half
the channels as that level's latent; then a final block of `K` steps whose output is the last
latent. `log p(x | z) = Σ log-dets + Σ prior log-densities` in nats.

Work that does not depend on the maps (the injector CNNs, the conditions' part of every coupling
CNN, the 1×1 convolutions' matrices, the prior networks) is gathered by `condition(params, z)`;
the flow itself is then `log_prob_given(params, x, conditioning)`. `log_prob` is the composition
of the two; the posterior reuses one conditioning for many maps.

Conditioning of the inverse. `decode` undoes `encode` exactly in exact arithmetic; in floating
point, to the dtype's rounding times the flow's amplification of it, which no part of the
architecture bounds over many steps. The clamps bound one step each: a coupling's scale lies in
`(clamp, 1)` (`GlowConfig.clamp`, 1e-3), so an inverted coupling multiplies its second half by at
most `1/clamp` before subtracting its shift; the injector's log-scale lies in `[log 1e-3, 5]`
(`jglow.bijectors.injector.LOG_SCALE_RANGE`), so its inverse multiplies by at most 1000; the
priors' log-variances lie in `[−3, 5]` (`jglow.latent_priors.LOG_VAR_RANGE`). They keep every step
finite, not the flow well-conditioned: 1000 per step over the paper model's 140 steps is far beyond
float32's range. The conditioning is what the parameters make it. At the initialisation every
coupling's scale is `(1 − clamp)·sigmoid(2) + clamp` ≈ 0.881 with no shift, so each inverted
coupling multiplies half the channels by 1.135. Measured on the paper model
(`benchmarks/bench_inverse.py`, 4 maps uniform in [−1, 1]): at the initialisation the round trip
errs by up to 5.8e-5 in float32 and 1.0e-13 in float64, and samples reach 9e3; with every parameter
moved by N(0, 0.001²) off it, 2.9e-3 and 5.3e-12; by N(0, 0.01²), 1.36 and 2.3e-9, and every
float32 sample is non-finite while float64's reach 7e215 (in sampling, the couplings' raw scales
saturate as the values grow, their scales fall to the clamp, and inverted couplings multiply by up
to 1000 each, 342 in the median). In each case the float32 error is the float64 one times the ratio
of their roundings (~5e8): ill-conditioning, not a defect. What keeps a trained model
well-conditioned is that it fits its data; the clamps only keep each step finite. Trained by the
paper preset's optimiser on synthetic maps (8 maps a batch, a warm-up of 5 steps), the paper model's
round trip errs by 0.2–0.9, with non-finite samples, while its validation NLL is still far above the
data's (steps 15–45), then falls below 1e-4 as the NLL approaches it (from step ~105; 1.3e-5 at step
150, which `tests/test_inverse.py` checks), where random moves of the parameters as large as
training's err by more than 1e-3; with the preset's own batch and warm-up, 8.3e-6 after 200 steps
(benchmarks/RESULTS.md). The likelihood stays sound throughout: at the worst of that phase float32
`log_prob` equals float64's to 4e-7 relative. The trainer's validation records and `python -m
train.evaluate` report the round trip and the non-finite samples of the parameters at hand
(`jglow.train.metrics.inverse_check`), with a warning beyond
`jglow.train.metrics.ROUND_TRIP_TOLERANCE`.
"""

from typing import List, Tuple

import jax
import jax.numpy as jnp

from jglow import checks
from jglow.bijectors import ActNorm, ChannelSplit, Squeeze
from jglow.bijectors.invconv import CONSTANT_KEYS
from jglow.compilation import jit
from jglow.config import GlowConfig
from jglow.flow import FlowStep, StepStack
from jglow.latent_priors import draw, log_density, make_prior
from jglow.model_params import GlowParams
from jglow.numerics import split_keys


# --- structure -------------------------------------------------------------------------------

# Each level's parameterless bijectors and their (empty) parameters.
_SQUEEZE, _SPLIT = Squeeze(), ChannelSplit()
_SQUEEZE_PARAMS, _SPLIT_PARAMS = _SQUEEZE.init(None), _SPLIT.init(None)
_ACTNORM = ActNorm()


def _stack(config: GlowConfig, level: int) -> StepStack:
    _, _, channels = config.level_shape(level)
    step = FlowStep(channels, config.hidden, config.cond_dim, config.clamp,
                    config.padding == "circular")
    return StepStack(step, config.steps, config.remat_steps)


def _priors(config: GlowConfig):
    return [make_prior(config.prior, shape, config.cond_hidden, config.cond_dim)
            for shape in config.latent_shapes()]


def _level_blocks(params: GlowParams):
    """`(spatial shape, StepStack, block params)` for each level and then the final block."""
    config = params.config
    blocks = list(params.levels) + [params.final]
    return [(config.level_shape(level)[:2], _stack(config, level), block)
            for level, block in enumerate(blocks)]


# --- initialisation --------------------------------------------------------------------------

def init(key, config: GlowConfig, x, z) -> GlowParams:
    """Parameters for `config`; `x (N, H, W, C)`, `z (N, D)` is the batch for data-dependent init.

    Coupling and injector outputs start at zero, invertible convolutions as random rotations,
    priors as N(0, I); with `config.actnorm`, each ActNorm normalises `x` as it reaches it.
    Concrete values must be finite and real; `z` is not held to the prior box, as it serves only
    the data-dependent initialisation.
    """
    if not isinstance(config, GlowConfig):
        raise TypeError(f"config must be a GlowConfig, got {type(config).__name__}")
    x, z = checks.maps_and_conditions(config, x, z, extrapolate=True)
    params = _random_init(key, config)
    return _init_actnorm(params, x, z) if config.actnorm else params


def _random_init(key, config: GlowConfig) -> GlowParams:
    key_levels, key_final, key_priors = split_keys(key, 3)
    level_keys = split_keys(key_levels, config.levels)
    levels = tuple({"steps": _stack(config, level).init(k)} for level, k in enumerate(level_keys))
    final = {"steps": _stack(config, config.levels).init(key_final)}
    prior_keys = split_keys(key_priors, config.levels + 1)
    priors = tuple(prior.init(k) for prior, k in zip(_priors(config), prior_keys))
    return GlowParams(config=config, levels=levels, final=final, priors=priors)


@jit
def _init_actnorm(params: GlowParams, x, z) -> GlowParams:
    """Adds to each level an ActNorm that normalises the batch `x` where it reaches that level."""
    levels = []
    for (height, width), stack, block in _level_blocks(params)[:-1]:
        x, _ = _SQUEEZE.forward(_SQUEEZE_PARAMS, x)
        block = dict(block, actnorm=_ACTNORM.init(None, x))
        x, _ = _ACTNORM.forward(block["actnorm"], x)
        x, _ = stack.forward(block["steps"], x, stack.condition(block["steps"], z, height, width))
        (x, _), _ = _SPLIT.forward(_SPLIT_PARAMS, x)
        levels.append(block)
    return params.replace(levels=tuple(levels))


def trainable_mask(params: GlowParams):
    """Pytree of bools like `params`: False for the constants of the 1×1 convs (`P`, signs)."""
    def is_trainable(path, _):
        last = path[-1]
        return not (isinstance(last, jax.tree_util.DictKey) and last.key in CONSTANT_KEYS)

    return jax.tree_util.tree_map_with_path(is_trainable, params)


# --- the two phases: conditioning, then the flow -----------------------------------------------

def condition(params: GlowParams, z):
    """Everything of `log_prob` and `sample` that does not depend on the maps, for `z (N, D)`.

    Returns `{"blocks": [...], "priors": [...]}`: per level and then the final block, its flow
    steps' terms (`StepStack.condition`: leaves lead with the `K` steps, then `N` where they
    depend on `z`); per latent, its prior's `(mean, log_var)`, each `(N or 1, h, w, c)`.
    """
    blocks = [stack.condition(block["steps"], z, h, w)
              for (h, w), stack, block in _level_blocks(params)]
    priors = [prior.mean_log_var(p, z) for prior, p in zip(_priors(params.config), params.priors)]
    return {"blocks": blocks, "priors": priors}


def flow_forward(params: GlowParams, x, conditioning) -> Tuple[List[jax.Array], jax.Array]:
    """`x (N, H, W, C)` → (list of latents `(N, h, w, c)`, log|det ∂latents/∂x| `(N,)`)."""
    latents, log_det = [], jnp.zeros(x.shape[:1], x.dtype)
    blocks = _level_blocks(params)
    for (_, stack, block), cond in zip(blocks[:-1], conditioning["blocks"]):
        x, _ = _SQUEEZE.forward(_SQUEEZE_PARAMS, x)
        if "actnorm" in block:
            x, block_log_det = _ACTNORM.forward(block["actnorm"], x)
            log_det += block_log_det
        x, block_log_det = stack.forward(block["steps"], x, cond)
        log_det += block_log_det
        (x, latent), _ = _SPLIT.forward(_SPLIT_PARAMS, x)
        latents.append(latent)
    _, final_stack, final_block = blocks[-1]
    x, block_log_det = final_stack.forward(final_block["steps"], x, conditioning["blocks"][-1])
    latents.append(x)
    return latents, log_det + block_log_det


def flow_inverse(params: GlowParams, latents, conditioning):
    """Inverse of `flow_forward`: latents → (`x (N, H, W, C)`, log|det ∂x/∂latents| `(N,)`)."""
    blocks = _level_blocks(params)
    _, final_stack, final_block = blocks[-1]
    x, log_det = final_stack.inverse(final_block["steps"], latents[-1], conditioning["blocks"][-1])
    for (_, stack, block), cond, latent in reversed(
            list(zip(blocks[:-1], conditioning["blocks"][:-1], latents[:-1]))):
        x, _ = _SPLIT.inverse(_SPLIT_PARAMS, (x, latent))
        x, block_log_det = stack.inverse(block["steps"], x, cond)
        log_det += block_log_det
        if "actnorm" in block:
            x, block_log_det = _ACTNORM.inverse(block["actnorm"], x)
            log_det += block_log_det
        x, _ = _SQUEEZE.inverse(_SQUEEZE_PARAMS, x)
    return x, log_det


def log_prob_given(params: GlowParams, x, conditioning):
    """`log p(x | z)` in nats `(N,)` of maps `x (N, H, W, C)`, with `conditioning =
    condition(params, z)` for `z (N, D)` precomputed. Traceable and unvalidated: call it
    under `jax.jit`/`vmap` to evaluate many maps at one conditioning (`jglow.log_prob` is the
    validated, compiled composition of the two)."""
    latents, log_det = flow_forward(params, x, conditioning)
    prior_terms = [log_density(latent, mlv) for latent, mlv in zip(latents, conditioning["priors"])]
    return log_det + sum(prior_terms)


# --- public API (validated, jit-compiled) ----------------------------------------------------

@jit
def _log_prob(params, x, z):
    return log_prob_given(params, x, condition(params, z))


@jit
def _encode(params, x, z):
    latents, _ = flow_forward(params, x, condition(params, z))
    return _flatten(latents)


@jit
def _decode(params, latents, z):
    x, _ = flow_inverse(params, _unflatten(params.config, latents), condition(params, z))
    return x


@jit
def _sample(params, key, z, temperature):
    conditioning = condition(params, z)
    keys = jax.random.split(key, len(conditioning["priors"]))
    latents = [draw(k, mlv, z.shape[0], temperature)
               for k, mlv in zip(keys, conditioning["priors"])]
    x, _ = flow_inverse(params, latents, conditioning)
    return x


def _flatten(latents):
    return jnp.concatenate([latent.reshape(latent.shape[0], -1) for latent in latents], axis=1)


def _unflatten(config: GlowConfig, flat):
    sizes = [h * w * c for h, w, c in config.latent_shapes()]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [flat[:, s:s + n].reshape(flat.shape[0], *shape)
            for s, n, shape in zip(starts, sizes, config.latent_shapes())]


def log_prob(params: GlowParams, x, z, extrapolate=False):
    """`log p(x | z)` in nats, `(N,)`, for maps `x (N, H, W, C)` and conditions `z (N, D)`.

    Concrete inputs are checked (`jglow.checks`): finite real values, and `z` in the prior box
    `[−1, 1]` unless `extrapolate`. `N` may be 0.
    """
    checks.check_params(params)
    x, z = checks.maps_and_conditions(params.config, x, z, extrapolate)
    return _log_prob(params, x, z) if x.shape[0] else jnp.zeros((0,), jnp.float32)


def encode(params: GlowParams, x, z, extrapolate=False):
    """Latents of `x (N, H, W, C)` as the flow emits them, levels concatenated: `(N, H·W·C)`;
    inputs checked as by `log_prob`."""
    checks.check_params(params)
    x, z = checks.maps_and_conditions(params.config, x, z, extrapolate)
    return _encode(params, x, z) if x.shape[0] else jnp.zeros((0, params.config.dim), jnp.float32)


def decode(params: GlowParams, latents, z, extrapolate=False):
    """Inverse of `encode`: `latents (N, H·W·C)`, `z (N, D)` → maps `(N, H, W, C)`; inputs
    checked as by `log_prob`."""
    checks.check_params(params)
    latents, z = checks.latents_and_conditions(params.config, latents, z, extrapolate)
    return _decode(params, latents, z) if z.shape[0] else empty_maps(params.config)


def sample(params: GlowParams, key, z, temperature=1.0, extrapolate=False):
    """Maps `(N, H, W, C)` drawn from `p(x | z)` at `temperature`, one per row of `z (N, D)`.

    Each latent is drawn from its own prior, `ε = μ(z) + T·exp(v(z)/2)·n`, then inverted; at
    `temperature` 0 that is the prior's mean. `z` is checked as by `log_prob`, `temperature`
    must be finite and >= 0.
    """
    checks.check_params(params)
    z = checks.sampling_conditions(params.config, z, extrapolate)
    temperature = checks.temperature(temperature)
    return _sample(params, key, z, temperature) if z.shape[0] else empty_maps(params.config)


def empty_maps(config: GlowConfig):
    """The empty batch of maps, `(0, H, W, C)`."""
    return jnp.zeros((0, *config.image_shape), jnp.float32)
