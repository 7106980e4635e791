"""The contract every bijector follows, as `typing.Protocol`s.

A bijector is a small frozen dataclass holding only static sizes; its methods are pure. `x` and
`y` are `(N, H, W, C)` arrays (`ChannelSplit`'s `y` is the pair `(kept, latent)`). Every log-det
is one value per example, `(N,)`, in nats: `forward`'s is `log|det ∂y/∂x|` at `x`, `inverse`'s
is `log|det ∂x/∂y|` at `y`, so on `y = forward(x)` the two sum to zero. The flow step and the
stack of steps (`jglow.flow.FlowStep`, `StepStack`) compose bijectors and follow the contract too.
"""

from typing import Any, Optional, Protocol, Tuple, runtime_checkable

import jax


@runtime_checkable
class Bijector(Protocol):
    """An invertible map of a batch of maps, with its log-det per example.

    `cond` is what the bijector's `condition` returned (`ConditionalBijector`), or `None` for a
    bijector without one.
    """

    def init(self, key: Optional[jax.Array], x: Optional[jax.Array] = None) -> Any:
        """Parameters (a pytree, `{}` for none) from a PRNG `key`; `x (N, H, W, C)` is an
        example batch for data-dependent initialisations (`ActNorm`), ignored by the others.
        `key` may be `None` for bijectors whose initialisation draws nothing."""

    def forward(self, params: Any, x: Any, cond: Any) -> Tuple[Any, jax.Array]:
        """`x` → `(y, log|det ∂y/∂x|  (N,))`."""

    def inverse(self, params: Any, y: Any, cond: Any) -> Tuple[Any, jax.Array]:
        """`y` → `(x, log|det ∂x/∂y|  (N,))`: the inverse of `forward`, with the same `cond`."""


@runtime_checkable
class ConditionalBijector(Bijector, Protocol):
    """A bijector with work that does not depend on the maps, done once by `condition` (for a
    `jglow.flow.StepStack`, for all its steps before its scan) and shared by every map."""

    def condition(self, params: Any, z: jax.Array, height: int, width: int) -> Any:
        """The `cond` of `forward` and `inverse` for conditions `z (N, D)` and maps of
        `height × width`: a pytree of arrays that depend only on `params` and `z`."""
