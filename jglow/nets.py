"""Conditioner networks as `flax.linen` modules.

Their parameters are plain pytrees handed to `module.apply`; the bijectors own the modules.
The first two convolutions of every CNN start from N(0, 0.05²) weights and zero bias; the last
layer is a `ZeroConv`, so every step starts close to the identity.

Initial values are set by parameter *name* (`INITIAL_STD`): the same rule serves `module.init`
and `numpy_init`, which draws the values with numpy. The model uses `numpy_init` because XLA on
CPU takes seconds to compile each random draw, which made initialising the paper model take a
minute; numpy takes milliseconds.
"""

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jglow.constant_field import conv_of_small_field
from jglow.conv import conv2d

# Standard deviation of the initial values of each parameter name: a number, "fan_in" for
# N(0, 1/fan_in) (the LeCun normal), or 0 for zeros.
INITIAL_STD = {
    "kernel": 0.05, "kernel_x": 0.05, "kernel_cond": 0.05, "bias": 0.0,
    "zero_kernel": 0.0, "zero_bias": 0.0, "log_gain": 0.0,
    "dense_kernel": "fan_in", "dense_bias": 0.0,
}


def _initial_std(name, shape):
    std = INITIAL_STD[name]
    return 1.0 / math.sqrt(math.prod(shape[:-1])) if std == "fan_in" else std


def _param(module: nn.Module, name: str, shape):
    """Declares parameter `name` of `shape`, initialised by `INITIAL_STD[name]`."""
    def initializer(key, shape):
        return _initial_std(name, shape) * jax.random.normal(key, shape)

    return module.param(name, initializer, shape)


def numpy_init(module: nn.Module, rng: np.random.Generator, *inputs, method=None):
    """`module`'s parameters for inputs shaped like `inputs`, drawn with numpy (no compilation)."""
    shapes = _param_shapes(module, tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs),
                           method)

    def draw(path, leaf):
        std = _initial_std(path[-1].key, leaf.shape)
        return jnp.asarray(std * rng.standard_normal(leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def _param_shapes(module: nn.Module, inputs, method):
    """The parameter shapes of `module` for abstract `inputs` (traced once per signature)."""
    return jax.eval_shape(lambda *xs: module.init(jax.random.PRNGKey(0), *xs, method=method),
                          *inputs)["params"]


# A ZeroConv's output is scaled by exp(LOG_GAIN_FACTOR · log_gain), as in Glow.
LOG_GAIN_FACTOR = 3.0


def _gain(log_gain):
    return jnp.exp(LOG_GAIN_FACTOR * log_gain)


def _conv(x, kernel, pad_value=0.0, small_field_of=None, periodic=False):
    """`conv2d(x, kernel, pad_value, periodic)`; with `small_field_of = (H, W, depth)`, `x` is
    the small field of that depth of an `H × W` map and the result the field one conv deeper
    (`jglow.constant_field.conv_of_small_field`)."""
    if small_field_of is None:
        return conv2d(x, kernel, pad_value=pad_value, periodic=periodic)
    height, width, depth = small_field_of
    return conv_of_small_field(x, kernel, height, width, depth, pad_value, periodic)


class Conv(nn.Module):
    """Convolution with a square `size × size` kernel, 'same' padding with zeros (or periodic),
    `(N,H,W,Cin) -> (N,H,W,features)`.

    With `small_field_of = (H, W, depth)`, `x` is a small field of an `H × W` map and so is the
    output, one conv deeper (`jglow.constant_field`).
    """

    features: int
    size: int = 3
    periodic: bool = False

    @nn.compact
    def __call__(self, x, small_field_of=None):
        kernel = _param(self, "kernel", (self.size, self.size, x.shape[-1], self.features))
        out = _conv(x, kernel, 0.0, small_field_of, self.periodic)
        return out + _param(self, "bias", (self.features,))


class ZeroConv(nn.Module):
    """3×3 conv on the input padded with ones (or periodic), zero-initialised, output scaled by
    `exp(3·g)` (`LOG_GAIN_FACTOR`).

    With `small_field_of = (H, W, depth)`, `x` is a small field of an `H × W` map
    (`jglow.constant_field`) and the output the field one conv deeper.
    """

    features: int
    periodic: bool = False

    @nn.compact
    def __call__(self, x, small_field_of=None):
        kernel = _param(self, "zero_kernel", (3, 3, x.shape[-1], self.features))
        bias = _param(self, "zero_bias", (self.features,))
        log_gain = _param(self, "log_gain", (self.features,))
        out = _conv(x, kernel, 1.0, small_field_of, self.periodic)
        return (out + bias) * _gain(log_gain)


class Dense(nn.Module):
    """Affine layer `(N, Din) -> (N, features)`; `zero=True` starts it at zero."""

    features: int
    zero: bool = False

    @nn.compact
    def __call__(self, x):
        prefix = "zero" if self.zero else "dense"
        kernel = _param(self, f"{prefix}_kernel", (x.shape[-1], self.features))
        return x @ kernel + _param(self, f"{prefix}_bias", (self.features,))


class InjectorNet(nn.Module):
    """Affine-injector CNN: 3×3 conv, ReLU, 1×1 conv, ReLU, ZeroConv → `2·channels` outputs.

    Input: the conditions as a constant field `(N, h, w, D)`; output `(N, h, w, 2·channels)`.
    With `map_shape = (H, W)` the input is the depth-0 small field `(N, 1, 1, D)` of an `H × W`
    map, the hidden layers live on its depth-1 field (at most 3×3) and the output on its
    depth-2 field (at most 5×5), see `jglow.constant_field`.
    """

    hidden: int
    channels: int
    periodic: bool = False

    @nn.compact
    def __call__(self, cond_field, map_shape=None):
        first, last = (None, None) if map_shape is None else ((*map_shape, 0), (*map_shape, 1))
        h = nn.relu(Conv(self.hidden, 3, self.periodic)(cond_field, first))
        h = nn.relu(Conv(self.hidden, 1)(h))  # pointwise: the same on any field
        return ZeroConv(2 * self.channels, self.periodic)(h, last)


class CouplingNet(nn.Module):
    """Coupling CNN on `concat(xa, conditions)`: 3×3 conv, ReLU, 1×1 conv, ReLU, ZeroConv →
    `channels`.

    The first convolution is linear in its input, so it is split exactly into a part on `xa` and
    a part on the constant condition field (`condition_term`), which is computed once on a 3×3
    field (see `jglow.constant_field`) and passed in expanded.
    """

    hidden: int
    channels: int
    cond_dim: int
    periodic: bool = False

    def setup(self):
        self.kernel_x = _param(self, "kernel_x", (3, 3, self.channels // 2, self.hidden))
        self.kernel_cond = _param(self, "kernel_cond", (3, 3, self.cond_dim, self.hidden))
        self.bias = _param(self, "bias", (self.hidden,))
        self.middle = Conv(self.hidden, 1)
        self.out = ZeroConv(self.channels, self.periodic)

    def condition_term(self, cond_field, map_shape=None):
        """`(N, h, w, D)` constant field → `(N, h, w, hidden)`: the conditions' part of conv 1,
        with bias.

        With `map_shape = (H, W)`, `cond_field` is the depth-0 small field `(N, 1, 1, D)` of an
        `H × W` map and the result its depth-1 field (at most 3×3).
        """
        small_field_of = None if map_shape is None else (*map_shape, 0)
        return _conv(cond_field, self.kernel_cond, 0.0, small_field_of, self.periodic) + self.bias

    def __call__(self, xa, cond_term):
        """`xa (N, H, W, c/2)`, `cond_term (N or 1, H, W, hidden)` → `(N, H, W, c)`."""
        h = nn.relu(conv2d(xa, self.kernel_x, periodic=self.periodic) + cond_term)
        h = nn.relu(self.middle(h))
        return self.out(h)

    def init_all(self, xa, cond_field):
        """Touches every parameter (for `init`); `cond_field` must have the spatial shape of
        `xa`."""
        return self(xa, self.condition_term(cond_field))


class CouplingWeights(NamedTuple):
    """A `CouplingNet`'s weights in the form the fused CPU kernel takes them
    (`jglow.native_coupling`), for `channels` C and `hidden` channels."""

    kernel_x: jax.Array     # (3, 3, C/2, hidden): the first conv's part on the map
    middle: jax.Array       # (hidden, hidden): the 1×1 conv
    middle_bias: jax.Array  # (hidden,)
    out_kernel: jax.Array   # (3, 3, hidden, C): the ZeroConv's kernel, times its gain
    out_bias: jax.Array     # (C,): the ZeroConv's bias, times its gain


def coupling_weights(params) -> CouplingWeights:
    """`CouplingNet` parameters → its `CouplingWeights` (the ZeroConv's gain applied)."""
    out = params["out"]
    gain = _gain(out["log_gain"])
    return CouplingWeights(params["kernel_x"], params["middle"]["kernel"][0, 0],
                           params["middle"]["bias"], out["zero_kernel"] * gain,
                           out["zero_bias"] * gain)


class PriorMLP(nn.Module):
    """Linear(D→h), ReLU, Linear(h→h), ReLU, Linear(h→size); `(N, D) -> (N, size)`.

    The last layer starts at zero, so a conditional prior starts as N(0, I).
    """

    hidden: int
    size: int

    @nn.compact
    def __call__(self, z):
        h = nn.relu(Dense(self.hidden)(z))
        h = nn.relu(Dense(self.hidden)(h))
        return Dense(self.size, zero=True)(h)
