"""jglow: a functional JAX/Flax conditional Glow for cosmological field maps (HIGlow)."""

from jglow.config import GlowConfig, paper_config
from jglow.model import GlowParams, decode, encode, init, log_prob, sample, trainable_mask
from jglow.saving import TrainedModel, load, save
from jglow import posterior

__all__ = ["GlowConfig", "GlowParams", "paper_config", "init", "log_prob", "sample", "encode",
           "decode", "trainable_mask", "TrainedModel", "save", "load", "posterior"]
