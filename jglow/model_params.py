"""The parameter records: one model's `GlowParams` and an ensemble's `EnsembleParams`.

Both are pytrees of arrays carrying their `GlowConfig` as static data. They live apart from the
functions that build and use them (`jglow.model`, `jglow.ensemble`), so that the argument checks
(`jglow.checks`) name both types without importing either module.
"""

from typing import Tuple

import flax.struct
import jax

from jglow.config import GlowConfig


@flax.struct.dataclass
class GlowParams:
    """All parameters of a model, with its `GlowConfig` as static (non-array) pytree data.

    `levels[l]` is `{"steps": stacked step params}` (plus `"actnorm"` when enabled), `final` the
    final block's `{"steps": ...}`, `priors[i]` the prior of latent `i`.
    """

    config: GlowConfig = flax.struct.field(pytree_node=False)
    levels: Tuple[dict, ...]
    final: dict
    priors: Tuple[dict, ...]


@flax.struct.dataclass
class EnsembleParams:
    """K models' parameters: `members` is a `GlowParams` whose every leaf has a leading axis of
    length K (member `k`'s leaf is `leaf[k]`); its `GlowConfig` is the members' common one.

    A pytree: it jits, vmaps and differentiates like a `GlowParams`.
    """

    members: GlowParams

    @property
    def config(self) -> GlowConfig:
        """The members' common `GlowConfig`."""
        return self.members.config

    @property
    def size(self) -> int:
        """The number of members K."""
        return jax.tree_util.tree_leaves(self.members)[0].shape[0]
