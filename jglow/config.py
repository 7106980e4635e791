"""The model configuration: one frozen, hashable record.

`GlowConfig` is carried as static data inside the parameter pytree, so it must be hashable and
compare by value; every derived quantity (channels per level, latent shapes) is a method.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

PRIORS = ("conditional", "learned", "standard")
PADDINGS = ("zero", "circular")


@dataclasses.dataclass(frozen=True)
class GlowConfig:
    """Architecture of a multi-scale conditional Glow.

    Attributes:
      image_shape: `(H, W, C)` of one map in model space; `H` and `W` divisible by `2**levels`.
      cond_dim: number of conditions `D` (2 for (Ωm, σ8)).
      levels: number of squeeze/steps/split levels `L`.
      steps: flow steps `K` per level, and in the final block.
      hidden: channels of the hidden layers of the injector and coupling CNNs.
      cond_hidden: width of the hidden layers of the conditional-prior MLPs.
      prior: "conditional" (MLPs of z), "learned" (per-element mean and log-variance) or
        "standard" (fixed N(0, I)).
      clamp: lower bound of the coupling scale, `scale ∈ (clamp, 1)`: an inverted coupling
        multiplies its second half by at most `1/clamp` (`jglow.model`, conditioning).
      actnorm: apply a data-initialised ActNorm after each squeeze.
      padding: border of the conditioner CNNs' 3×3 convolutions: "zero" (HIGlow's; the
        ZeroConv pads with ones) or "circular" (the opposite edge), which makes every flow step
        commute with periodic shifts, right for maps of a periodic simulation box.
      remat_steps: wrap each flow step in `jax.checkpoint` (less memory for gradients, more time).
    """

    image_shape: Tuple[int, int, int] = (64, 64, 1)
    cond_dim: int = 2
    levels: int = 6
    steps: int = 20
    hidden: int = 16
    cond_hidden: int = 8
    prior: str = "conditional"
    clamp: float = 1e-3
    actnorm: bool = False
    padding: str = "zero"
    remat_steps: bool = False

    def __post_init__(self):
        shape = tuple(int(s) for s in self.image_shape)
        object.__setattr__(self, "image_shape", shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"image_shape must be (H, W, C) with positive sides, got "
                             f"{self.image_shape}")
        for name in ("cond_dim", "levels", "steps", "hidden", "cond_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        height, width, _ = shape
        factor = 2**self.levels
        if height % factor or width % factor:
            raise ValueError(
                f"image sides {height}x{width} are not divisible by 2**levels = {factor} "
                f"(levels={self.levels}); choose fewer levels or another image size")
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if not 0.0 < self.clamp < 1.0:
            raise ValueError(f"clamp must lie in (0, 1), got {self.clamp}")

    def level_shape(self, level: int) -> Tuple[int, int, int]:
        """`(H, W, C)` inside the flow steps of `level` (0-based); `level == levels` is the final
        block."""
        height, width, channels = self.image_shape
        for _ in range(min(level, self.levels)):  # levels passed: squeeze, keep the first half
            height, width, channels = height // 2, width // 2, (4 * channels) // 2
        if level < self.levels:
            return height // 2, width // 2, 4 * channels
        return height, width, channels

    def latent_shapes(self) -> Tuple[Tuple[int, int, int], ...]:
        """Shapes of the `levels + 1` latents, in the order `encode` concatenates them."""
        shapes = []
        for level in range(self.levels):
            height, width, channels = self.level_shape(level)
            shapes.append((height, width, channels - channels // 2))
        shapes.append(self.level_shape(self.levels))
        return tuple(shapes)

    @property
    def dim(self) -> int:
        """Number of values in one map, `H·W·C` (also the total latent size)."""
        height, width, channels = self.image_shape
        return height * width * channels


def paper_config() -> GlowConfig:
    """The HIGlow paper's configuration (arXiv 2211.12724): 64×64×1, 6 levels × 20 steps."""
    return GlowConfig()
