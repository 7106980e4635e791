"""`jit`: `jax.jit` with the XLA options jglow's programs are compiled with.

Three options, measured on the paper model (README, Performance):

* `xla_cpu_use_fusion_emitters=False`: its older (LLVM IR) fusion emitters instead of the MLIR
  ones. Compiling the paper model's training step takes about 0.2 GB of host memory instead of
  1.4 GB, and the compiled model runs as fast or faster (log_prob, sampling and the grid
  posterior ~10% faster here, log_prob and the grid posterior bit-identical).
* `xla_cpu_experimental_ynn_fusion_type=""`: no YNNPACK fusions. By default XLA:CPU hands every
  dot and some reductions to YNNPACK; the conditioner CNNs' dots are thin (16–144 columns) and
  the default made log_prob, sampling, the grid posterior and the training gradient 4–10%
  slower (medians of alternating calls in one process).
* `xla_multiheap_size_constraint_per_heap=30 MiB`: a program's scratch memory in blocks of at
  most 30 MiB rather than one block. XLA:CPU allocates the scratch afresh at every call, and
  glibc's malloc serves any request above 32 MiB (its largest mmap threshold) with a new `mmap`,
  whose pages all fault in on first touch: `log_prob` of 64 maps (43.6 MB of scratch) took
  ~10,600 page faults per call, 10–20% of its time. Blocks below the threshold are reused from
  malloc's heap; after the first calls, ~0 faults. The cost: with JAX's persistent compilation
  cache on (`jax_compilation_cache_dir`), XLA:CPU cannot serialise a program whose scratch
  needs more than one block, so such programs (the paper model's `log_prob` of 64 maps, for
  one) are compiled afresh in every process and JAX warns "Error writing persistent
  compilation cache entry ... Multiple temp buffer allocations found". Smaller programs are
  cached as usual.

All three are debug options that all XLA backends share, so other backends accept and ignore them
(not tried on a GPU here). A jaxlib may lack one, so `compiler_options` keeps only those this
one accepts (possibly none: XLA's defaults).

`jit` creates the `jax.jit` at the function's first use, not at import: deciding the options
compiles a trivial program, which must not start JAX's backend before the trainer's
`jax.distributed.initialize`.
"""

import functools

import jax
import jax.numpy as jnp

# The options for jglow's programs (see the module docstring for the measurements).
PREFERRED_OPTIONS = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_experimental_ynn_fusion_type": "",
    "xla_multiheap_size_constraint_per_heap": 30 * 2**20,
}
# How XLA words its refusal of an option it lacks, or of a value it does not know.
_REFUSALS = ("No such compile option", "While setting option")


@functools.cache
def compiler_options() -> dict | None:
    """Those of `PREFERRED_OPTIONS` this jaxlib accepts, or None if it accepts none of them."""
    accepted = {name: value for name, value in PREFERRED_OPTIONS.items()
                if accepts({name: value})}
    return accepted or None


def accepts(options: dict) -> bool:
    """Whether the default backend compiles a trivial program with XLA `options`."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(jnp.float32(0)).compile()
    except jax.errors.JaxRuntimeError as error:
        if not any(refusal in str(error) for refusal in _REFUSALS):
            raise
        return False
    return True


def jit(fn=None, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)` compiled with `compiler_options()`, created at first use.

    Usable as `@jit` or `@jit(static_argnames=...)`. The result has `jax.jit`'s call and
    `lower`, and `__wrapped__` is `fn`. JAX takes compiler options only for a whole program, so
    a call under a transformation (an enclosing `jax.jit`, as the trainer's step, or `grad`,
    `vmap` of traced arguments) is a plain `jax.jit`, and the enclosing program's options
    apply; use this `jit` for your own programs to get jglow's.
    """
    if fn is None:
        return functools.partial(jit, **jit_kwargs)
    return _Jitted(fn, jit_kwargs)


class _Jitted:
    """`fn` jit-compiled: with `compiler_options()` at the top level, plainly when traced."""

    def __init__(self, fn, jit_kwargs):
        functools.update_wrapper(self, fn)
        self._fn, self._jit_kwargs = fn, jit_kwargs

    @functools.cached_property
    def _top_level(self):
        return jax.jit(self._fn, compiler_options=compiler_options(), **self._jit_kwargs)

    @functools.cached_property
    def _nested(self):
        return jax.jit(self._fn, **self._jit_kwargs)

    def __call__(self, *args, **kwargs):
        jitted = self._nested if _traced(args, kwargs) else self._top_level
        return jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._top_level.lower(*args, **kwargs)


def _traced(*args) -> bool:
    """Whether a call with `args` is traced by a transformation: an argument is a tracer, or
    the call is inside an enclosing `jax.jit`, where even an array made of constants is one."""
    leaves = jax.tree_util.tree_leaves(args)
    return any(isinstance(leaf, jax.core.Tracer) for leaf in [*leaves, jnp.zeros(())])
