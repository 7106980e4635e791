"""`jglow.compilation.jit`: XLA options at the top level, plain `jax.jit` under transformations."""

import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jglow
from jglow import compilation
from helpers import tiny_config, toy_batch

UNKNOWN_OPTIONS = {"xla_cpu_no_such_option": True}


def _polynomial(x):
    return jnp.sum(x**3 - 2.0 * x)


def test_this_jaxlib_accepts_the_preferred_options_and_not_unknown_ones():
    assert compilation.accepts(compilation.PREFERRED_OPTIONS)
    assert compilation.compiler_options() == compilation.PREFERRED_OPTIONS
    assert not compilation.accepts(UNKNOWN_OPTIONS)
    assert not compilation.accepts({"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_TYPE"})


def test_options_this_jaxlib_refuses_are_dropped_one_by_one(monkeypatch):
    known = {"xla_cpu_use_fusion_emitters": False}
    bad_value = {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_TYPE"}
    monkeypatch.setattr(compilation, "PREFERRED_OPTIONS", {**known, **UNKNOWN_OPTIONS, **bad_value})
    compilation.accepted_options.cache_clear()
    try:
        assert compilation.compiler_options() == known
        monkeypatch.setattr(compilation, "PREFERRED_OPTIONS", {**UNKNOWN_OPTIONS, **bad_value})
        compilation.accepted_options.cache_clear()
        assert compilation.compiler_options() is None
    finally:
        monkeypatch.undo()
        compilation.accepted_options.cache_clear()
    assert compilation.compiler_options() == compilation.PREFERRED_OPTIONS


def test_top_level_calls_compile_with_the_options_and_traced_calls_without(monkeypatch):
    # Options XLA rejects make every program compiled with them fail, which shows where they go.
    monkeypatch.setattr(compilation, "compiler_options", lambda: UNKNOWN_OPTIONS)
    fn = compilation.jit(_polynomial)
    x = jnp.array([0.5, -1.0, 2.0])
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
        fn(x)
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
        fn.lower(x).compile()
    expected_grad = 3.0 * x**2 - 2.0
    np.testing.assert_allclose(jax.jit(fn)(x), _polynomial(x), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda: fn(np.array([0.5, -1.0, 2.0])))(), _polynomial(x),
                               rtol=1e-6)  # constants only, inside a jit
    np.testing.assert_allclose(jax.grad(fn)(x), expected_grad, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(fn)(x[:, None]), x**3 - 2.0 * x, rtol=1e-6)


def test_static_arguments_and_the_wrapped_function_pass_through():
    @compilation.jit(static_argnames="power")
    def power_sum(x, power):
        return jnp.sum(x**power)

    x = jnp.array([1.0, 2.0, 3.0])
    assert float(power_sum(x, power=2)) == 14.0
    assert float(power_sum(x, power=3)) == 36.0
    assert power_sum.__wrapped__(x, 2) == 14.0
    assert power_sum.__name__ == "power_sum"


def test_log_prob_with_jglow_options_equals_plain_jit():
    config = tiny_config()
    x, z = toy_batch(config, 4)
    params = jglow.init(jax.random.PRNGKey(0), config, x, z)
    noise = np.random.default_rng(0)
    def off_zero(leaf, trainable):  # every net off zero, so every layer shows in the value
        return leaf + 0.05 * noise.standard_normal(leaf.shape) if trainable else leaf

    params = jax.tree_util.tree_map(off_zero, params, jglow.trainable_mask(params))
    with_options = jglow.log_prob(params, x, z)
    plain = jax.jit(lambda p, x, z: jglow.log_prob_given(p, x, jglow.condition(p, z)))(params, x, z)
    np.testing.assert_allclose(with_options, plain, rtol=1e-6, atol=1e-4)


def test_importing_jglow_does_not_start_jax_so_distributed_can_still_initialize():
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    code = ("import jax, jglow, jglow.posterior, jglow.train.main\n"
            f"jax.distributed.initialize('localhost:{port}', num_processes=1, process_id=0)\n"
            "print(jax.process_count(), float(jglow.compilation.jit(lambda x: x + 1)(1.0)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "2.0"]


# Six (2^19, 4) float32 products, all live at the end: 48 MiB of scratch memory in all.
_SCRATCH_PROGRAMS = """
import jax, jax.numpy as jnp
from jglow import compilation

def six_live_products(x, w):
    ys = [x @ w[i] for i in range(6)]
    return sum(jnp.sum(jnp.tanh(ys[i]) * ys[(i + 1) % 6]) for i in range(6))

def plain_program(x, w):
    return six_live_products(x, w)

def jglow_program(x, w):
    return six_live_products(x, w)

x, w = jnp.ones((2**19, 8)), jnp.ones((6, 8, 4))
jax.jit(plain_program).lower(x, w).compile()
compilation.jit(jglow_program).lower(x, w).compile()
"""


def _scratch_blocks(dump_dir, program):
    """Sizes in bytes of the scratch ("preallocated-temp") blocks in XLA's buffer assignment."""
    [path] = dump_dir.glob(f"*jit_{program}.*buffer-assignment.txt")
    return [int(size) for size in
            re.findall(r"^allocation \d+: size (\d+), preallocated-temp", path.read_text(), re.M)]


def test_scratch_memory_comes_in_blocks_below_mallocs_mmap_threshold(tmp_path):
    """glibc maps any request above 32 MiB afresh, and its pages fault in at every call; with
    jglow's options, the same program's scratch comes in blocks of at most 30 MiB."""
    environment = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={tmp_path}")
    done = subprocess.run([sys.executable, "-c", _SCRATCH_PROGRAMS], capture_output=True,
                          text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = _scratch_blocks(tmp_path, "plain_program")
    with_options = _scratch_blocks(tmp_path, "jglow_program")
    assert max(plain) >= 48 * 2**20
    assert max(with_options) <= 30 * 2**20
    assert sum(with_options) >= 48 * 2**20
