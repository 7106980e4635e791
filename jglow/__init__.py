"""jglow: a functional JAX/Flax conditional Glow for cosmological field maps (HIGlow).

`log_prob`, `sample`, `encode` and `decode` take one model's `GlowParams` or an ensemble's
`EnsembleParams` (`jglow.ensemble`, a mixture of models; `encode`/`decode` refuse it).
"""

from jglow.config import GlowConfig, paper_config
from jglow.model import GlowParams, init, trainable_mask
from jglow.ensemble import EnsembleParams, decode, encode, log_prob, sample
from jglow.saving import TrainedModel, load, save, save_ensemble
from jglow import ensemble, posterior

__all__ = ["GlowConfig", "GlowParams", "EnsembleParams", "paper_config", "init", "log_prob",
           "sample", "encode", "decode", "trainable_mask", "TrainedModel", "save", "load",
           "save_ensemble", "ensemble", "posterior"]
