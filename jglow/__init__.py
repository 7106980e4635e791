"""jglow: a functional JAX/Flax conditional Glow for cosmological field maps (HIGlow).

`log_prob`, `sample`, `encode` and `decode` take one model's `GlowParams` or an ensemble's
`EnsembleParams` (`jglow.ensemble`, a mixture of models; `encode`/`decode` refuse it). They check
concrete inputs (`jglow.checks`): finite real values, conditions `z` in the prior box `[−1, 1]`
unless called with `extrapolate=True`; a batch of 0 maps gives empty results.

The two-phase form of `log_prob`, for one model's `GlowParams`: `condition(params, z)` does once
the work that depends only on the conditions `z (N, D)`, and `log_prob_given(params, x,
conditioning)` evaluates maps `x (N, H, W, C)` with it, `(N,)` nats. Both are traceable and
unvalidated, made to be composed under `jax.jit`/`vmap` (the grid posterior evaluates many maps
at each conditioning this way).
"""

from jglow.config import GlowConfig, paper_config
from jglow.model import condition, init, log_prob_given, trainable_mask
from jglow.model_params import EnsembleParams, GlowParams
from jglow.ensemble import decode, encode, log_prob, sample
from jglow.saving import TrainedModel, load, save, save_ensemble
from jglow import ensemble, posterior

__all__ = ["GlowConfig", "GlowParams", "EnsembleParams", "paper_config", "init", "log_prob",
           "sample", "encode", "decode", "condition", "log_prob_given", "trainable_mask",
           "TrainedModel", "save", "load", "save_ensemble", "ensemble", "posterior"]
