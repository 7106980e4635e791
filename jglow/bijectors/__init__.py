"""Bijectors as pure functions. Each follows the contract written in
`jglow.bijectors.base` (`Bijector`, and `ConditionalBijector` for those with a `condition`)."""

from jglow.bijectors.actnorm import ActNorm
from jglow.bijectors.base import Bijector, ConditionalBijector
from jglow.bijectors.coupling import ConditionalCoupling
from jglow.bijectors.injector import AffineInjector
from jglow.bijectors.invconv import InvConv1x1
from jglow.bijectors.split import ChannelSplit
from jglow.bijectors.squeeze import Squeeze

__all__ = ["ActNorm", "AffineInjector", "Bijector", "ChannelSplit", "ConditionalBijector",
           "ConditionalCoupling", "InvConv1x1", "Squeeze"]
