"""Bijectors as pure functions (SPEC §1).

Each bijector is a small frozen dataclass holding only static sizes, with pure methods
`init(key, ...) -> params`, `forward(params, x, cond) -> (y, log_det)` and
`inverse(params, y, cond) -> (x, log_det)`, where `log_det` has shape `(N,)` and the inverse's
log-det is that of the inverse map, so forward and inverse log-dets sum to zero. `cond` is the
bijector's conditioning: `None` for unconditional bijectors, and for the conditional ones the
features returned by their `condition(params, z, height, width)` (work that depends only on the
conditions, done once and shared by every map that uses them).
"""

from jglow.bijectors.actnorm import ActNorm
from jglow.bijectors.coupling import ConditionalCoupling
from jglow.bijectors.injector import AffineInjector
from jglow.bijectors.invconv import InvConv1x1
from jglow.bijectors.squeeze import Squeeze
from jglow.bijectors.split import merge, split

__all__ = ["ActNorm", "AffineInjector", "ConditionalCoupling", "InvConv1x1", "Squeeze", "merge",
           "split"]
