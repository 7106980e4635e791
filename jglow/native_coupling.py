"""The coupling's forward pass as one fused CPU kernel (`native_coupling.cc`, an XLA FFI call).

On the CPU, XLA runs the coupling CNN of a fine level as a dozen passes over arrays of 2–36
channels, far below the matmul peak (README, Performance). The kernel computes the same
function map by map with the intermediate values in cache, split over XLA's intra-op threads.
It is used for the value only: derivatives (`jax.jvp`, `jax.grad`) come from the XLA version
through a custom JVP, so training and the gradient-based posterior tools are unchanged.

The kernel is compiled on first use with the C++ compiler `$CXX` (default `g++`) for this CPU
(`-march=native`) against the XLA FFI headers that jaxlib ships, and kept in `$JGLOW_CACHE_DIR`
(default `~/.cache/jglow`) under a name hashed from the source, the flags, the compiler, jaxlib's
version and the CPU's flags. Where that fails, a warning says why and the XLA version is used.
`JGLOW_NATIVE_COUPLING=0` turns the kernel off.

It applies to float32 maps on the CPU backend in two forms. Along rows of pixels, for maps 16,
32 or 64 pixels wide (and 8, where the next form does not apply) with multiples of 4 channels and
hidden channels: the paper model's 32×32 and 16×16 levels. With 16 maps as the vector lanes, for
maps up to 8 pixels wide with multiples of 16 channels and hidden channels: its 8×8 level and
all coarser ones.
"""

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from jglow import backend

SOURCE = Path(__file__).with_name("native_coupling.cc")
TARGET = "jglow_coupling_forward"
ENABLE_VARIABLE = "JGLOW_NATIVE_COUPLING"
CACHE_VARIABLE = "JGLOW_CACHE_DIR"
COMPILE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp-simd", "-std=c++17",
                 "-shared", "-fPIC", "-w")
LINK_FLAGS = ("-lmvec",)  # glibc's vector exp and log
ROW_WIDTHS = (8, 16, 32, 64)


def applies(x, hidden: int) -> bool:
    """Whether `forward` runs the kernel for maps `x (N, H, W, C)` and `hidden` channels."""
    _, _, width, channels = x.shape
    along_rows = width in ROW_WIDTHS and channels % 4 == 0 and hidden % 4 == 0
    maps_as_lanes = width <= 8 and channels % 16 == 0 and hidden % 16 == 0
    return (along_rows or maps_as_lanes) and x.dtype == jnp.float32 and available()


def available() -> bool:
    """Whether the kernel runs in this process: JAX's default backend is the CPU
    (`jglow.backend.on_cpu`) and the kernel is registered. On another backend it is neither
    built nor loaded."""
    return backend.on_cpu() and registered()


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def forward(xla_forward, clamp: float, params, x, cond):
    """The coupling's `(y, log_det)` by the kernel; `xla_forward(params, x, cond)` gives the same
    with XLA's operations and serves for derivatives.

    Args (those of `ConditionalCoupling.forward`): `params` of its `CouplingNet`, `x (N, H, W,
    C)`, `cond (N or 1, min(H, 3), min(W, 3), hidden)` (the conditions' term with the bias).
    """
    out = params["out"]
    gain = jnp.exp(3.0 * out["log_gain"])
    cond = jnp.broadcast_to(cond, x.shape[:1] + cond.shape[1:])
    return _kernel_call(float(clamp))(x, cond, params["kernel_x"], params["middle"]["kernel"][0, 0],
                                      params["middle"]["bias"], out["zero_kernel"] * gain,
                                      out["zero_bias"] * gain)


@forward.defjvp
def _forward_jvp(xla_forward, clamp, primals, tangents):
    return jax.jvp(xla_forward, primals, tangents)


@functools.cache
def _kernel_call(clamp: float):
    """`call(x, cond, kx, wmid, bmid, kz, bz) -> (y, log_det)`, the FFI call for one `clamp`.

    Under `vmap` with the weights unbatched (a grid posterior's maps), the mapped axis is merged
    into the maps' axis and the kernel is called once; batched weights fall back to one call
    per element (`lax.map`).
    """
    @jax.custom_batching.custom_vmap
    def call(x, cond, *weights):
        shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype),
                  jax.ShapeDtypeStruct(x.shape[:1], x.dtype))
        return jax.ffi.ffi_call(TARGET, shapes)(x, cond, *weights, clamp=np.float32(clamp))

    @call.def_vmap
    def _batched(axis_size, in_batched, *args):
        def along_axis(a, batched):
            return a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))

        if any(in_batched[2:]):
            rows = tuple(map(along_axis, args, in_batched))
            return jax.lax.map(lambda row: call(*row), rows), (True, True)
        x, cond = map(along_axis, args[:2], in_batched[:2])
        y, log_det = call(x.reshape(-1, *x.shape[2:]), cond.reshape(-1, *cond.shape[2:]), *args[2:])
        return (y.reshape(x.shape), log_det.reshape(x.shape[:2])), (True, True)

    return call


@functools.cache
def registered() -> bool:
    """Whether the kernel is built, loaded and registered with XLA (tried once per process)."""
    if os.environ.get(ENABLE_VARIABLE, "1") == "0":
        return False
    library = _built_library()
    if library is None:
        return False
    handler = ctypes.cdll.LoadLibrary(str(library)).jglow_coupling_forward
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")
    return True


def _built_library() -> Path | None:
    """The kernel's shared library, compiled now unless cached; None (with a warning) if it
    cannot be."""
    compiler = os.environ.get("CXX", "g++")
    try:
        key = hashlib.sha256(SOURCE.read_bytes() + repr(
            (COMPILE_FLAGS, LINK_FLAGS, compiler, jaxlib.__version__, platform.machine(),
             _cpu_flags())).encode()).hexdigest()[:16]
        library = _cache_dir() / f"native_coupling-{key}.so"
        if library.exists():
            return library
        library.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=library.parent) as scratch:  # then renamed: atomic
            built = Path(scratch) / library.name
            command = [compiler, *COMPILE_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE),
                       "-o", str(built), *LINK_FLAGS]
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                return _unavailable(f"`{' '.join(command)}` failed: {result.stderr[-2000:]}")
            os.replace(built, library)
    except (OSError, subprocess.TimeoutExpired) as error:
        return _unavailable(f"compiling it failed: {error}")
    return library


def _unavailable(reason: str) -> None:
    warnings.warn(f"jglow: the fused coupling kernel is not available ({reason}); the couplings "
                  f"run as XLA operations (same values, slower on the CPU). Set "
                  f"{ENABLE_VARIABLE}=0 to silence this.", RuntimeWarning, stacklevel=3)
    return None


def _cache_dir() -> Path:
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jglow"


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux), so that a cache shared between machines is not reused
    on a CPU without the instructions `-march=native` chose."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()
