"""`jit`: `jax.jit` with the XLA options jglow's programs are compiled with.

Three options, measured on the paper model (benchmarks/RESULTS.md):

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

They were chosen for XLA:CPU, so they are requested only where JAX's default backend is the CPU
(`jglow.backend.on_cpu`); on any other backend jglow's programs are compiled with XLA's defaults
and no option is tried there. A jaxlib may lack one, so on the CPU `compiler_options` keeps only
those this one accepts (possibly none: XLA's defaults).

On an accelerator, jglow's programs multiply in float32 (`matmul_precision`): JAX's default
there rounds a float32 product's inputs to TensorFloat-32 (10 mantissa bits, a relative error up
to 5e-4, on recent NVIDIA GPUs) or bfloat16 (7 bits, TPUs) instead of float32's 6e-8, and the
flow amplifies whatever error its steps make (`jglow.model`, conditioning of the inverse). Not
measured on an accelerator here: the device check (`benchmarks/device_check.py`) reports the
trained model's round trip with both precisions. A precision the caller sets
(`jax.default_matmul_precision`) is kept. On the CPU nothing changes: XLA:CPU multiplies float32
in float32.

`jit` creates the `jax.jit` at the function's first use, not at import: deciding the options
compiles a trivial program, which must not start JAX's backend before the trainer's
`jax.distributed.initialize`.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp

from jglow import backend

ACCELERATOR_MATMUL_PRECISION = "float32"
"""The default precision of jglow's matrix products and convolutions off the CPU."""

# The options for jglow's programs (see the module docstring for the measurements).
PREFERRED_OPTIONS = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_cpu_experimental_ynn_fusion_type": "",
    "xla_multiheap_size_constraint_per_heap": 30 * 2**20,
}
# How XLA words its refusal of an option it lacks, or of a value it does not know.
_REFUSALS = ("No such compile option", "While setting option")


def compiler_options() -> dict | None:
    """The options of jglow's programs: on the CPU, `accepted_options()`; elsewhere None."""
    return accepted_options() if backend.on_cpu() else None


@functools.cache
def accepted_options() -> dict | None:
    """Those of `PREFERRED_OPTIONS` this jaxlib's CPU backend accepts, or None if it accepts
    none of them (tried once per process)."""
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


def matmul_precision() -> str | None:
    """The matmul precision jglow's programs are traced with: `ACCELERATOR_MATMUL_PRECISION`
    off the CPU unless the caller has set one (`jax.default_matmul_precision`); None (JAX's
    setting as it is) on the CPU or when the caller has set one."""
    if backend.on_cpu() or jax.default_matmul_precision.value is not None:
        return None
    return ACCELERATOR_MATMUL_PRECISION


def jit(fn=None, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)` compiled with `compiler_options()` and traced under
    `matmul_precision()`, created at first use.

    Usable as `@jit` or `@jit(static_argnames=...)`. The result has `jax.jit`'s call and
    `lower`, and `__wrapped__` is `fn`. JAX takes compiler options only for a whole program, so
    a call under a transformation (an enclosing `jax.jit`, as the trainer's step, or `grad`,
    `vmap` of traced arguments) is a plain `jax.jit`, and the enclosing program's options and
    precision apply; use this `jit` for your own programs to get jglow's.
    """
    if fn is None:
        return functools.partial(jit, **jit_kwargs)
    return _Jitted(fn, jit_kwargs)


class _Jitted:
    """`fn` jit-compiled: with `compiler_options()` and `matmul_precision()` at the top level,
    plainly when traced."""

    def __init__(self, fn, jit_kwargs):
        functools.update_wrapper(self, fn)
        self._fn, self._jit_kwargs = fn, jit_kwargs
        self._by_options = {}

    @property
    def _top_level(self):
        """The `jax.jit` with the options of the backend in use now (one per set of options)."""
        options = compiler_options()
        key = None if options is None else tuple(sorted(options.items()))
        if key not in self._by_options:
            self._by_options[key] = jax.jit(self._fn, compiler_options=options,
                                            **self._jit_kwargs)
        return self._by_options[key]

    @functools.cached_property
    def _nested(self):
        return jax.jit(self._fn, **self._jit_kwargs)

    def __call__(self, *args, **kwargs):
        if _traced(args, kwargs):
            return self._nested(*args, **kwargs)
        with _precision():
            return self._top_level(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with _precision():
            return self._top_level.lower(*args, **kwargs)


def _precision():
    """A context that traces under `matmul_precision()` (nothing to do when it is None)."""
    precision = matmul_precision()
    if precision is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(precision)


def _traced(*args) -> bool:
    """Whether a call with `args` is traced by a transformation: an argument is a tracer, or
    the call is inside an enclosing `jax.jit`, where even an array made of constants is one."""
    leaves = jax.tree_util.tree_leaves(args)
    return any(isinstance(leaf, jax.core.Tracer) for leaf in [*leaves, jnp.zeros(())])
