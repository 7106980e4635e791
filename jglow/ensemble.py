"""An ensemble of K models of one `GlowConfig`, whose density is the equal-weight mixture.

`log p(x | z) = logsumexp_k log p_k(x | z) − log K` in nats. A sample draws, for each row of the
conditions, a member uniformly at random and then a map from that member, so samples follow the
same mixture that `log_prob` scores.

`EnsembleParams` holds the members' `GlowParams` stacked along a new leading axis of every leaf;
the model's functions run over the members under `vmap` in one compiled program.

The public `jglow.log_prob`, `jglow.sample`, `jglow.encode` and `jglow.decode` are the functions
of this module: they take a `GlowParams` (and call `jglow.model`'s function of the same name) or
an `EnsembleParams`. A mixture has no single latent space, so `encode` and `decode` refuse an
ensemble; `member(params, k)` is one member's `GlowParams`.
"""

import dataclasses
import math
import operator
from typing import Sequence

import jax
import jax.numpy as jnp

from jglow import checks, model
from jglow.compilation import jit
from jglow.model_params import EnsembleParams, GlowParams


def field_differences(first: dict, other: dict) -> str:
    """`"name: a vs b"` for each key whose value differs between the dicts, `; `-separated."""
    return "; ".join(f"{name}: {first.get(name, '(absent)')!r} vs {other.get(name, '(absent)')!r}"
                     for name in sorted(set(first) | set(other))
                     if first.get(name) != other.get(name))


def stack(members: Sequence[GlowParams]) -> EnsembleParams:
    """The ensemble of `members` (a non-empty sequence of `GlowParams` of one `GlowConfig`).

    Raises:
      TypeError: a member is not a `GlowParams` (naming its index).
      ValueError: no members, or a member whose config differs from member 0's (naming the
        member, the differing fields and both configs).
    """
    members = list(members)
    if not members:
        raise ValueError("an ensemble needs at least one member; got an empty list of GlowParams")
    for k, params in enumerate(members):
        if not isinstance(params, GlowParams):
            raise TypeError(f"member {k} must be a GlowParams (jglow.init or jglow.load), got "
                            f"{type(params).__name__}")
        if params.config != members[0].config:
            fields = field_differences(dataclasses.asdict(members[0].config),
                                        dataclasses.asdict(params.config))
            raise ValueError(f"member {k} has config {params.config}, member 0 has "
                             f"{members[0].config} ({fields}); the members of an ensemble "
                             f"must share one GlowConfig")
    return EnsembleParams(jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *members))


def _check_ensemble(params) -> None:
    if not isinstance(params, EnsembleParams):
        raise TypeError(f"params must be an EnsembleParams (jglow.ensemble.stack or jglow.load "
                        f"of an ensemble), got {type(params).__name__}")


def member(params: EnsembleParams, k: int) -> GlowParams:
    """Member `k` (`0 <= k < params.size`) of the ensemble `params`, as a `GlowParams`."""
    _check_ensemble(params)
    k = operator.index(k)
    if not 0 <= k < params.size:
        raise IndexError(f"member {k} of an ensemble of {params.size}: expected 0 <= k < "
                         f"{params.size}")
    return jax.tree_util.tree_map(lambda leaf: leaf[k], params.members)


def mixture(member_log_probs):
    """The equal-weight mixture `logsumexp_k − log K` of per-member log densities `(K, ...)` in
    nats → `(...)`."""
    count = member_log_probs.shape[0]
    return jax.nn.logsumexp(member_log_probs, axis=0) - math.log(count)


# --- compiled programs -------------------------------------------------------------------------

@jit
def _log_prob(params: EnsembleParams, x, z):
    def of_member(member_params):
        return model.log_prob_given(member_params, x, model.condition(member_params, z))

    return mixture(jax.vmap(of_member)(params.members))


@jit
def _sample_with_members(params: EnsembleParams, key, z, temperature):
    member_key, latent_key = jax.random.split(key)
    chosen = jax.random.randint(member_key, z.shape[:1], 0, params.size)
    # every member's sample of every row, from the same key: (K, N, H, W, C)
    drawn = jax.vmap(lambda p: model._sample(p, latent_key, z, temperature))(params.members)
    return drawn[chosen, jnp.arange(z.shape[0])], chosen


# --- public API: a GlowParams or an EnsembleParams --------------------------------------------

def log_prob(params, x, z, extrapolate=False):
    """`log p(x | z)` in nats, `(N,)`, for maps `x (N, H, W, C)` and conditions `z (N, D)`.

    `params`: a `GlowParams` (`jglow.model.log_prob`) or an `EnsembleParams`, whose density is
    the mixture of its members'. Shapes are checked before tracing; concrete values must be
    finite and real, and `z` in the prior box `[−1, 1]` unless `extrapolate`. `N` may be 0.
    """
    checks.check_params(params, ensembles=True)
    if not isinstance(params, EnsembleParams):
        return model.log_prob(params, x, z, extrapolate)
    x, z = checks.maps_and_conditions(params.config, x, z, extrapolate)
    return _log_prob(params, x, z) if x.shape[0] else jnp.zeros((0,), jnp.float32)


def sample_with_members(params: EnsembleParams, key, z, temperature=1.0, extrapolate=False):
    """`(x (N, H, W, C), members (N,) int32)`: one map per row of `z (N, D)` from the mixture.

    Row `n` draws its member `members[n]` uniformly from `0..K-1` with the first key of
    `jax.random.split(key)`, and `x[n]` is row `n` of that member's sample at `temperature` with
    the second key: `jglow.sample(member(params, members[n]), jax.random.split(key)[1], z,
    temperature)[n]` (to float32 rounding). Every member samples every row, so the work is K
    samples of N maps. Inputs are checked as by `jglow.model.sample`.
    """
    _check_ensemble(params)
    z = checks.sampling_conditions(params.config, z, extrapolate)
    temperature = checks.temperature(temperature)
    if not z.shape[0]:
        return model.empty_maps(params.config), jnp.zeros((0,), jnp.int32)
    return _sample_with_members(params, key, z, temperature)


def sample(params, key, z, temperature=1.0, extrapolate=False):
    """Maps `(N, H, W, C)` drawn from `p(x | z)` at `temperature`, one per row of `z (N, D)`.

    `params`: a `GlowParams` (`jglow.model.sample`) or an `EnsembleParams`, sampled from the
    mixture by `sample_with_members` (which also returns each row's member).
    """
    checks.check_params(params, ensembles=True)
    if not isinstance(params, EnsembleParams):
        return model.sample(params, key, z, temperature, extrapolate)
    return sample_with_members(params, key, z, temperature, extrapolate)[0]


def _no_latent_space(name: str):
    return TypeError(f"jglow.{name}: params is an EnsembleParams, a mixture of models, which has "
                     f"no single latent space; {name} with one member, "
                     f"jglow.ensemble.member(params, k)")


def encode(params, x, z, extrapolate=False):
    """`jglow.model.encode` for a `GlowParams`; an `EnsembleParams` is refused (TypeError)."""
    if isinstance(params, EnsembleParams):
        raise _no_latent_space("encode")
    return model.encode(params, x, z, extrapolate)


def decode(params, latents, z, extrapolate=False):
    """`jglow.model.decode` for a `GlowParams`; an `EnsembleParams` is refused (TypeError)."""
    if isinstance(params, EnsembleParams):
        raise _no_latent_space("decode")
    return model.decode(params, latents, z, extrapolate)
