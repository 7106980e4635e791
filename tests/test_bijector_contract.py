"""The bijector contract (`jglow.bijectors.base`), checked on every class that follows it.

On a tiny input, with parameters moved off their initialisation: `inverse(forward(x)) == x`, the
inverse's log-det is minus the forward's, and the forward's log-det of each example equals the
`slogdet` of that example's block of the Jacobian (the other blocks being zero).
"""

import importlib
import inspect
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jglow
from jglow import bijectors
from jglow.bijectors import (ActNorm, AffineInjector, Bijector, ChannelSplit, ConditionalBijector,
                             ConditionalCoupling, InvConv1x1, Squeeze)
from jglow.bijectors.injector import InjectorTerms
from jglow.bijectors.invconv import InvConvTerms
from jglow.flow import FlowStep, StepStack

from helpers import adam_steps

# 6 > 5, so the injector's small-field expansion is exercised; 6 is even, so Squeeze applies.
N, SIDE, CHANNELS, HIDDEN, COND_DIM = 2, 6, 4, 8, 2

IMPLEMENTATIONS = (
    ActNorm(),
    Squeeze(),
    ChannelSplit(),
    InvConv1x1(CHANNELS),
    AffineInjector(CHANNELS, HIDDEN, COND_DIM),
    AffineInjector(CHANNELS, HIDDEN, COND_DIM, periodic=True),
    ConditionalCoupling(CHANNELS, HIDDEN, COND_DIM, clamp=1e-3),
    ConditionalCoupling(CHANNELS, HIDDEN, COND_DIM, clamp=1e-3, periodic=True),
    FlowStep(CHANNELS, HIDDEN, COND_DIM, clamp=1e-3),
    FlowStep(CHANNELS, HIDDEN, COND_DIM, clamp=1e-3, periodic=True),
    StepStack(FlowStep(CHANNELS, HIDDEN, COND_DIM, clamp=1e-3), count=2),
)
# Classes of jglow.bijectors that are not bijectors: the contract itself and condition terms.
NOT_BIJECTORS = {Bijector, ConditionalBijector, InjectorTerms, InvConvTerms}


def _name(bijector):
    periodic = getattr(bijector, "periodic", False)
    return type(bijector).__name__ + ("-periodic" if periodic else "")


def _inputs(seed):
    key_x, key_z = jax.random.split(jax.random.PRNGKey(seed))
    x = 1.5 * jax.random.normal(key_x, (N, SIDE, SIDE, CHANNELS)) + 0.3
    z = jax.random.uniform(key_z, (N, COND_DIM), minval=-1.0, maxval=1.0)
    return x, z


def _condition(bijector, params, z):
    if isinstance(bijector, ConditionalBijector):
        return bijector.condition(params, z, SIDE, SIDE)
    return None


def _per_example(y):
    """An output (an array or `ChannelSplit`'s pair) as one `(N, values)` array."""
    return jnp.concatenate([leaf.reshape(N, -1) for leaf in jax.tree_util.tree_leaves(y)], axis=1)


def _initial_params(bijector):
    x, _ = _inputs(seed=0)
    return bijector.init(jax.random.PRNGKey(1), x)


def _moved_params(bijector, params):
    """A few Adam steps of a Gaussian fit through the bijector, so no parameter sits at its init."""
    x, z = _inputs(seed=0)

    def loss(p):
        y, log_det = bijector.forward(p, x, _condition(bijector, p, z))
        return jnp.mean(0.5 * jnp.sum(jnp.square(_per_example(y)), axis=1) - log_det)

    return adam_steps(loss, params, jglow.trainable_mask(params), steps=4, learning_rate=0.05)


@pytest.fixture(scope="module", params=IMPLEMENTATIONS, ids=_name)
def moved(request):
    bijector = request.param
    initial = _initial_params(bijector)
    if not jax.tree_util.tree_leaves(initial):
        return bijector, initial, initial
    return bijector, initial, _moved_params(bijector, initial)


def _defined_classes(package):
    """Every class defined in a module of `package`."""
    classes = set()
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        classes |= {cls for _, cls in inspect.getmembers(module, inspect.isclass)
                    if cls.__module__ == module.__name__}
    return classes


def test_the_registry_holds_every_bijector_class_of_the_package():
    registered = {type(bijector) for bijector in IMPLEMENTATIONS}
    in_package = {cls for cls in registered if cls.__module__.startswith("jglow.bijectors.")}
    assert _defined_classes(bijectors) - NOT_BIJECTORS == in_package
    assert len({_name(bijector) for bijector in IMPLEMENTATIONS}) == len(IMPLEMENTATIONS)


@pytest.mark.parametrize("bijector", IMPLEMENTATIONS, ids=_name)
def test_methods_have_the_protocol_signatures(bijector):
    assert isinstance(bijector, Bijector)
    conditional = hasattr(bijector, "condition")
    assert isinstance(bijector, ConditionalBijector) == conditional
    protocol = ConditionalBijector if conditional else Bijector
    for method in ("init", "forward", "inverse") + (("condition",) if conditional else ()):
        expected = list(inspect.signature(getattr(protocol, method)).parameters)
        actual = list(inspect.signature(getattr(type(bijector), method)).parameters)
        assert actual == expected, method


def test_optimizer_moved_every_trainable_parameter(moved):
    bijector, initial, params = moved
    if not jax.tree_util.tree_leaves(initial):
        assert initial == params == {}, f"{_name(bijector)}: a bijector without parameters has {{}}"
        return
    mask = jglow.trainable_mask(initial)
    leaves = jax.tree_util.tree_leaves
    for before, after, trainable in zip(leaves(initial), leaves(params), leaves(mask)):
        if trainable:
            assert not np.allclose(before, after), f"{_name(bijector)}: a parameter did not move"
        else:
            np.testing.assert_array_equal(before, after)


def test_inverse_of_forward_is_identity_and_log_dets_are_opposite(moved):
    bijector, _, params = moved
    x, z = _inputs(seed=3)
    cond = _condition(bijector, params, z)
    y, forward_log_det = bijector.forward(params, x, cond)
    x_back, inverse_log_det = bijector.inverse(params, y, cond)
    assert forward_log_det.shape == inverse_log_det.shape == (N,)
    assert forward_log_det.dtype == inverse_log_det.dtype == jnp.float32
    np.testing.assert_allclose(x_back, x, atol=1e-5, rtol=0)
    np.testing.assert_allclose(inverse_log_det, -forward_log_det, atol=1e-5, rtol=1e-6)


def test_log_det_of_each_example_equals_slogdet_of_its_jacobian(moved):
    bijector, _, params = moved
    x, z = _inputs(seed=4)
    cond = _condition(bijector, params, z)

    def flat_forward(flat):
        y, _ = bijector.forward(params, flat.reshape(x.shape), cond)
        return _per_example(y).ravel()

    size = x[0].size
    jacobian = np.asarray(jax.jacfwd(flat_forward)(x.ravel()), np.float64).reshape(N, size, N, size)
    _, log_det = bijector.forward(params, x, cond)
    for i in range(N):
        block = jacobian[i, :, i, :]
        sign, log_abs_det = np.linalg.slogdet(block)
        assert sign != 0
        np.testing.assert_allclose(log_det[i], log_abs_det, atol=1e-4, rtol=0)
        others = np.delete(jacobian[i], i, axis=1)
        assert np.abs(others).max() == 0.0, "an example's output depends on another example"
