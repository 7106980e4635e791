"""Log-likelihoods of maps at many conditions in one jit-compiled call (model space).

`grid_log_prob(params, x, zs)` evaluates `log p(x_b | z_m)` for every map `b` and condition `m`.
The conditions are cut into chunks of `chunk_size`: inside a chunk the conditions are the batch
of one model evaluation per map (`vmap`ped over the maps), and the chunks run one after the other
under `lax.map`, so the memory in use is that of one chunk whatever `M` is. `M` is padded up to a
multiple of `chunk_size` by repeating the last condition, and the padding is dropped from the
result.

Per condition, the work that depends only on the condition (`jglow.model.condition`: injector
fields, the conditions' part of every coupling conv, prior means and log-variances) is done once
and shared by all `B` maps of the batch.

An ensemble (`jglow.ensemble.EnsembleParams`) gives the mixture of its members' tables, in log
space; the members are evaluated one after another.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jglow import backend, ensemble, model, native_coupling
from jglow import checks
from jglow.batching import padded_rows
from jglow.compilation import jit

FUSED_EVALUATIONS_PER_CHUNK = 256
"""Most work per chunk by default, in (map, condition) pairs, where the fused coupling kernel runs
the couplings (`jglow.native_coupling`). Measured on the 2-core CPU (paper configuration, one map,
30×30 grid), chunks alternating in one process, medians of 7: chunks of 60, 180 and 225 took 1.02,
0.94 and 0.93 s (this default gives 225 for 900 conditions), against 1.07 s for 128 and 256, which
pad 900 to 1,024. Peak RSS 587 MB at 60, 725 MB at 300."""

XLA_EVALUATIONS_PER_CHUNK = 64
"""The same on the CPU without the kernel (XLA's operations: no compiler). On the CPU, 60 and
225 took 1.59 and 1.72 s, and at 225 XLA warns that a buffer is larger than its 30 MiB scratch
blocks (`jglow.compilation`)."""

ACCELERATOR_MAX_EVALUATIONS = 8192
"""On an accelerator, the most pairs per chunk whatever the memory: a 10,000-point grid of one
map runs as 2 chunks of 5,000. (A chunk's largest activations, 8192 · 32·32·16 values for the
paper model's hidden layers at its finest level, are 2²⁷ elements, far from XLA's 2³¹.)"""

ACCELERATOR_FALLBACK_EVALUATIONS = 1024
"""On an accelerator that reports no memory limit, or without the model at hand: a guess, not a
measurement."""

MEASURED_CONDITIONS = 16
"""Conditions (of one map) of the program whose memory gives the memory per pair."""


def evaluations_per_chunk(params=None) -> int:
    """The most (map, condition) pairs per chunk by default.

    On the CPU (`jglow.backend.on_cpu`), `FUSED_EVALUATIONS_PER_CHUNK` where the fused coupling
    kernel is available, else `XLA_EVALUATIONS_PER_CHUNK`. On an accelerator, as many pairs as
    fill `jglow.backend.MEMORY_FRACTION` of the device's free memory at `params`' measured
    memory per pair (`bytes_per_evaluation`), at most `ACCELERATOR_MAX_EVALUATIONS`;
    `ACCELERATOR_FALLBACK_EVALUATIONS` without `params` or a memory limit. Decided once per
    process for each parameter structure and memory limit, at the free memory of that moment, so
    that successive calls keep one chunk size (one compiled program).
    """
    if backend.on_cpu():
        return (FUSED_EVALUATIONS_PER_CHUNK if native_coupling.available()
                else XLA_EVALUATIONS_PER_CHUNK)
    if params is None:
        return ACCELERATOR_FALLBACK_EVALUATIONS
    return _accelerator_evaluations(backend.signature(params), backend.memory_limit_bytes())


@functools.lru_cache(maxsize=8)
def _accelerator_evaluations(params_signature, memory_limit) -> int:
    del memory_limit  # a key only: another device's limit is another decision
    per_evaluation = _bytes_per_evaluation(params_signature)
    return backend.items_per_call(per_evaluation, ACCELERATOR_MAX_EVALUATIONS,
                                  ACCELERATOR_FALLBACK_EVALUATIONS)


def bytes_per_evaluation(params) -> float:
    """Device memory per (map, condition) pair of `grid_log_prob` for `params` (a `GlowParams`
    or `EnsembleParams`), in bytes: the scratch and output of the program for one map at
    `MEASURED_CONDITIONS` conditions in one chunk, divided by that count. The constant part
    (the parameters' derived terms) is counted in, so this errs high. Compiled once per process
    for each parameter structure; nothing is run."""
    return _bytes_per_evaluation(backend.signature(params))


@functools.lru_cache(maxsize=8)
def _bytes_per_evaluation(params_signature) -> float:
    params = backend.from_signature(params_signature)
    config = params.config
    x = jax.ShapeDtypeStruct((1, *config.image_shape), jnp.float32)
    zs = jax.ShapeDtypeStruct((MEASURED_CONDITIONS, config.cond_dim), jnp.float32)
    used = backend.program_bytes(grid_log_prob_unchecked, params, x, zs, MEASURED_CONDITIONS)
    return used / MEASURED_CONDITIONS


def default_chunk_size(n_conditions: int, n_maps: int, per_chunk: int | None = None,
                       params=None) -> int:
    """`chunk_size` used when none is given: at most `per_chunk` (default
    `evaluations_per_chunk(params)`) pairs per chunk, balanced over the chunks so that the
    padding is less than one condition per chunk (with 256, a 30×30 grid of one map runs as 4
    chunks of 225, not 4 of 256 with 124 padded conditions)."""
    largest = max(1, min(n_conditions, (per_chunk or evaluations_per_chunk(params)) // n_maps))
    n_chunks = -(-n_conditions // largest)
    return -(-n_conditions // n_chunks)


def map_in_chunks(fn, xs, chunk_size: int):
    """`fn` applied to the rows of `xs` `(M, D)` a chunk at a time, the chunks under `lax.map`.

    `fn` maps a chunk `(chunk_size, D)` to `(chunk_size, ...)` row by row (a `jax.vmap` of a
    function of one row, or a batched computation); the result is `(M, ...)`. Rows are padded
    to a multiple of `chunk_size` with copies of the last row; the padding is computed and dropped.
    """
    m, d = xs.shape
    n_chunks = -(-m // chunk_size)
    chunks = xs[padded_rows(0, n_chunks * chunk_size, m)].reshape(n_chunks, chunk_size, d)
    out = lax.map(fn, chunks)
    return out.reshape(n_chunks * chunk_size, *out.shape[2:])[:m]


@jit(static_argnames="chunk_size")
def grid_log_prob_unchecked(params, x, zs, chunk_size: int):
    """`grid_log_prob` without validation, traceable: `x (B, H, W, C)`, `zs (M, D)` → `(B, M)`.

    For an `EnsembleParams` the table is the mixture (`jglow.ensemble.mixture`) of its members'
    tables, computed one member after another under `lax.map`, so the memory in use is still
    that of one chunk of one member.
    """
    if isinstance(params, ensemble.EnsembleParams):
        tables = lax.map(lambda member: _table(member, x, zs, chunk_size), params.members)
        return ensemble.mixture(tables)
    return _table(params, x, zs, chunk_size)


def _table(params: model.GlowParams, x, zs, chunk_size: int):
    """The `(B, M)` table of one model.

    A chunk's conditions are the batch of one model evaluation per map, with the map broadcast
    over them. (Mapping `vmap` over the conditions one at a time instead was 16% slower here.)
    """
    def at_conditions(z_chunk):
        conditioning = model.condition(params, z_chunk)  # once per condition, for all B maps

        def one_map(map_):
            maps = jnp.broadcast_to(map_, z_chunk.shape[:1] + map_.shape)
            return model.log_prob_given(params, maps, conditioning)

        return jax.vmap(one_map, out_axes=1)(x)  # (chunk, B)

    return map_in_chunks(at_conditions, zs, chunk_size).T


def grid_log_prob(params, x, zs, chunk_size=None):
    """`log p(x | z)` in nats for each map of `x` at every condition of `zs` (model space).

    Args:
      params: `GlowParams` from `jglow.init` or `jglow.load`, or an `EnsembleParams`
        (`jglow.ensemble`), whose log-likelihood is the mixture of its members'.
      x: one map `(H, W, C)` or a batch `(B, H, W, C)`, preprocessed, finite.
      zs: conditions `(M, D)`, `M >= 1`, preprocessed (the prior box is `[-1, 1]^D`; points
        outside it are evaluated too).
      chunk_size: conditions per chunk (a positive int), bounding memory to one chunk of
        `chunk_size · B` evaluations; default `default_chunk_size(M, B, params=params)`
        (on an accelerator, sized to the device's free memory). Results do not depend on it
        beyond float32 rounding.
    Returns:
      `(M,)` float32 for one map, `(B, M)` for a batch.
    Raises:
      ValueError: wrong shapes, an empty `zs`, a non-finite value (naming the map or
        condition), a bad `chunk_size`.
    """
    checks.check_params(params, ensembles=True)
    config = params.config
    single = np.ndim(x) == 3
    x = checks.model_maps(x, config.image_shape)
    zs = checks.conditions(zs, config.cond_dim)
    size = (checks.chunk_size(chunk_size)
            or default_chunk_size(zs.shape[0], x.shape[0], params=params))
    out = grid_log_prob_unchecked(params, jnp.asarray(x), jnp.asarray(zs), min(size, zs.shape[0]))
    return out[0] if single else out
