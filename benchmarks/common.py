"""Helpers shared by the benchmark scripts: timing, the machine's fp32 matmul peak, JSON output."""

import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

# Arithmetic of the reference's forward pass per map at batch 64 (0.44 GFLOP at batch 1, where
# the 1×1 convolutions' weight products are not amortised).
REFERENCE_GFLOP_PER_MAP = 0.23


def tiny_config():
    """An 8×8×1 model of one level and the final block of 2 steps each, hidden 8: the
    benchmarks' smoke size (seconds to compile on a CPU)."""
    import jglow

    return jglow.GlowConfig((8, 8, 1), levels=1, steps=2, hidden=8, cond_hidden=8)


def median_seconds(fn, repeats=5, warmup=1):
    """Median wall time of `fn()` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_seconds(jitted, *args):
    """Seconds to lower and compile `jitted` for `args`; returns `(seconds, compiled)`."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return time.perf_counter() - start, compiled


def matmul_peak_gflops(size=2048, repeats=5):
    """Measured fp32 matmul throughput of this machine through XLA, GFLOP/s (the practical peak)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    matmul = jax.jit(lambda m: m @ m)
    seconds = median_seconds(lambda: matmul(a).block_until_ready(), repeats)
    return 2 * size**3 / seconds / 1e9


def add_reference_path(path):
    """Make `benchmarks/reference.py` importable and check the checkout exists."""
    import os

    if not os.path.isdir(path):
        raise SystemExit(f"--reference {path!r} is not a directory (expected a checkout of "
                         "friedmanroy/HI-generation)")
    sys.path.insert(0, os.path.dirname(__file__))


def print_json(result):
    print(json.dumps(result, indent=2, default=float))
