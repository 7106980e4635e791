"""Where jglow's programs run, and the sizes of work chosen for it.

One check, `on_cpu()` (JAX's default backend, where jglow's programs run unless placed
elsewhere, is the CPU), decides everything that is specific to XLA:CPU:

* the XLA:CPU options of `jglow.compilation` are requested, and tried, only there;
* the fused CPU coupling kernel (`jglow.native_coupling`) is built and run only there;
* the default amount of work per call: on the CPU the constants measured on the project's
  2-core machine (`jglow.posterior.grid`'s chunks, the evaluation's and inference's batches);
  on an accelerator `items_per_call`, from the device's free memory and the memory that the
  program needs per item, measured by XLA's memory analysis of the compiled program
  (`program_bytes`).
"""

import jax

MEMORY_FRACTION = 0.4
"""The share of the device's free memory (`bytes_limit − bytes_in_use`) one call's scratch and
output may take by default on an accelerator."""


def on_cpu() -> bool:
    """Whether JAX's default backend is the CPU."""
    return jax.default_backend() == "cpu"


def memory_limit_bytes(device=None):
    """The memory `device` (default: this process's first device) may hold by its allocator's
    `memory_stats()` (`bytes_limit`); None where it reports none (the CPU)."""
    stats = (device or jax.local_devices()[0]).memory_stats() or {}
    return int(stats["bytes_limit"]) if "bytes_limit" in stats else None


def free_memory_bytes(device=None):
    """Bytes free on `device` (default: this process's first device), `bytes_limit −
    bytes_in_use` by its allocator's `memory_stats()`; None where it reports no limit."""
    stats = (device or jax.local_devices()[0]).memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def shaped_like(tree):
    """`tree` with every array leaf replaced by its `jax.ShapeDtypeStruct` (for `lower`)."""
    return jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), tree)


def signature(tree) -> tuple:
    """A hashable key of `tree`'s structure (its static data included) and its leaves' shapes
    and dtypes: two trees with one signature compile to the same programs."""
    leaves, treedef = jax.tree_util.tree_flatten(shaped_like(tree))
    return treedef, tuple(leaves)


def from_signature(key: tuple):
    """The tree of `jax.ShapeDtypeStruct` leaves that `signature` describes."""
    treedef, leaves = key
    return jax.tree_util.tree_unflatten(treedef, leaves)


def program_bytes(jitted, *args) -> int:
    """Device memory one call of `jitted(*args)` needs beyond its arguments, in bytes: XLA's
    scratch and output sizes of the compiled program (`memory_analysis()`). `args` may be
    `jax.ShapeDtypeStruct`s; the program is compiled (not run)."""
    analysis = jitted.lower(*args).compile().memory_analysis()
    return int(analysis.temp_size_in_bytes) + int(analysis.output_size_in_bytes)


def items_per_call(bytes_per_item: float, cap: int, fallback: int, device=None) -> int:
    """Items per call so that one call takes `MEMORY_FRACTION` of `device`'s free memory, at
    least 1 and at most `cap`; `fallback` where the device reports no memory limit."""
    free = free_memory_bytes(device)
    if free is None:
        return fallback
    return int(min(cap, max(1, MEMORY_FRACTION * free // max(bytes_per_item, 1.0))))
