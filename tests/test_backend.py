"""Defaults per backend (`jglow.backend`): the CPU's constants, accelerators sized by memory.

An accelerator is faked: `jax.default_backend` says "gpu" and the first local device reports
`memory_stats`; the programs still compile and run on this CPU, without jglow's XLA:CPU
options and without the fused coupling kernel.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config, toy_batch

import jglow
from jglow import backend, compilation, native_coupling
from jglow.posterior import grid
from jglow.train import evaluate, infer

GB = 10**9
UNKNOWN_OPTIONS = {"xla_cpu_no_such_option": True}


class FakeDevice:
    """A device whose allocator reports `stats` (None: no memory statistics)."""

    platform = "gpu"

    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


@pytest.fixture(scope="module")
def params():
    config = tiny_config()
    x, z = toy_batch(config, 2)
    return jglow.init(jax.random.PRNGKey(0), config, x, z)


def _refuse(what):
    def refused(*args, **kwargs):
        raise AssertionError(f"{what} was called")

    return refused


def fake_accelerator(monkeypatch, stats):
    """JAX's default backend reads 'gpu', its first device reports `stats`; trying an XLA:CPU
    option, building the coupling kernel, or compiling with jglow's CPU options (made options
    no XLA knows) fails. The memory measurements compile the model's programs with the
    options of the backend in use, so they fail if the CPU's are requested."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "local_devices", lambda *args, **kwargs: [FakeDevice(stats)])
    monkeypatch.setattr(compilation, "accepts", _refuse("compilation.accepts"))
    monkeypatch.setattr(compilation, "accepted_options", lambda: UNKNOWN_OPTIONS)
    monkeypatch.setattr(native_coupling, "registered", _refuse("native_coupling.registered"))


def test_on_the_cpu_the_defaults_are_the_measured_constants(monkeypatch, params):
    monkeypatch.setattr(backend, "program_bytes", _refuse("backend.program_bytes"))
    assert backend.on_cpu() and backend.free_memory_bytes() is None
    assert compilation.compiler_options() == compilation.PREFERRED_OPTIONS
    kernel = native_coupling.registered()
    assert native_coupling.available() == kernel
    assert grid.evaluations_per_chunk(params) == (256 if kernel else 64)
    assert grid.default_chunk_size(10_000, 1, params=params) == (250 if kernel else 64)
    assert evaluate.default_batch(params) == 256
    assert infer.default_map_batch(params, 100) == 16


def test_a_fake_80_gb_gpu_gets_large_chunks_and_no_cpu_option(monkeypatch, params):
    fake_accelerator(monkeypatch, {"bytes_limit": 80 * GB, "bytes_in_use": 2 * GB})
    assert not backend.on_cpu() and backend.free_memory_bytes() == 78 * GB
    assert compilation.compiler_options() is None
    assert not native_coupling.available()
    per_evaluation = grid.bytes_per_evaluation(params)
    assert 1e3 < per_evaluation < 1e7  # a 16×16 map's activations: kilobytes, not gigabytes
    assert grid.evaluations_per_chunk(params) == grid.ACCELERATOR_MAX_EVALUATIONS == 8192
    assert grid.default_chunk_size(10_000, 1, params=params) == 5000
    assert evaluate.default_batch(params) == evaluate.ACCELERATOR_MAX_BATCH == 4096
    assert infer.default_map_batch(params, 100) == 81


def test_on_a_smaller_accelerator_a_chunk_takes_the_memory_fraction(monkeypatch, params):
    fake_accelerator(monkeypatch, {"bytes_limit": 2 * GB, "bytes_in_use": 0})
    per_evaluation = grid.bytes_per_evaluation(params)
    per_map = evaluate.sampling_bytes_per_map(params)
    free = int(2500 * per_evaluation)  # 0.4 of it: room for 1000 evaluations
    fake_accelerator(monkeypatch, {"bytes_limit": free + 10**6, "bytes_in_use": 10**6})
    assert backend.MEMORY_FRACTION == 0.4
    assert grid.evaluations_per_chunk(params) == 1000
    assert grid.default_chunk_size(900, 3, params=params) == 300
    assert evaluate.default_batch(params) == min(4096, int(0.4 * free // per_map))
    assert infer.default_map_batch(params, 100) == 16  # never fewer than on the CPU
    assert infer.default_map_batch(params, 10) == 100
    fake_accelerator(monkeypatch, {"bytes_limit": free + 10**6, "bytes_in_use": free // 2})
    assert grid.evaluations_per_chunk(params) == 1000  # decided once: one program, not one a call


def test_an_accelerator_without_memory_statistics_gets_the_fallbacks(monkeypatch, params):
    fake_accelerator(monkeypatch, None)
    assert backend.free_memory_bytes() is None
    assert grid.evaluations_per_chunk(params) == grid.ACCELERATOR_FALLBACK_EVALUATIONS == 1024
    assert grid.evaluations_per_chunk() == 1024
    assert evaluate.default_batch(params) == evaluate.CPU_BATCH == 256


def test_off_the_cpu_programs_multiply_in_float32_unless_the_caller_chose(monkeypatch):
    program = compilation.jit(lambda a: a @ a)
    x = jnp.ones((4, 4))
    assert compilation.matmul_precision() is None
    assert "HIGHEST" not in program.lower(x).as_text()  # the CPU: JAX's setting as it is
    fake_accelerator(monkeypatch, None)
    assert compilation.matmul_precision() == compilation.ACCELERATOR_MATMUL_PRECISION == "float32"
    assert "precision = [HIGHEST, HIGHEST]" in program.lower(x).as_text()
    np.testing.assert_array_equal(program(x), np.full((4, 4), 4.0))
    with jax.default_matmul_precision("tensorfloat32"):
        assert compilation.matmul_precision() is None
        assert "HIGHEST" not in program.lower(x).as_text()
