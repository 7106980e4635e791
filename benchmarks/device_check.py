"""One command for a machine with an accelerator: the model's tests, speed, memory and inverse.

    benchmarks/device_check.sh [--out FILE]        # on the machine, within 8 minutes
    python benchmarks/device_check.py --smoke     # tiny sizes, on any machine

Prints one JSON object; with `--out`, also writes it there after every section, so a run
stopped from outside keeps what it measured (`total_s`: the seconds so far). The sections, in
this order; one that would not fit in what is left of `--budget` seconds is skipped, with the
reason:

* `tests`: `tests/test_model.py` and `tests/test_bijectors.py` by pytest in a subprocess
  (before this process starts JAX's backend, which then takes the device's memory): the counts
  of pytest's summary line, the exit status, seconds.
* `environment`: JAX's version and backend, the devices, the first one's memory limit.
* `model`: log_prob and sampling of the paper model, batch 64 (`bench_model.jglow_timers`:
  every parameter moved by N(0, 1e-3²)): compile seconds, maps/s, non-finite samples.
* `grid`: `grid_log_prob` of one map at M = 10,000 conditions, then 100,000 when the first's
  time says it fits (`bench_posterior.time_grid`; its memory is that of one chunk at any M),
  at the backend's default chunk (`jglow.posterior.grid.default_chunk_size` with the model):
  likelihoods/s, the chunk, XLA's scratch of the program.
* `training`: 200 steps of the paper preset's trainer step on one batch of 64 synthetic maps
  (`bench_train.compiled_step`): compile seconds, median step, maps/s; then the trained
  model's inverse on 8 of the maps (`jglow.train.metrics.inverse_check`: the round trip's
  largest error and the non-finite samples), with jglow's matmul precision and, off the CPU,
  with JAX's default one (`jglow.compilation.matmul_precision`).
* `inverse`: the paper model at its initialisation with its parameters moved by N(0, 0.01²)
  and N(0, 0.001²), in float32 on the device (`bench_inverse.measure`).

Every section after `tests` ends with `peak_device_mb`, the device's peak memory in use so far
(its allocator's `peak_bytes_in_use`; None on the CPU). `--smoke` runs the same on an 8×8 model
of one level and a final block of 2 steps (`common.tiny_config`), M = 64 and 256, 3 training
steps and one test (`tests/test_device_check.py` runs it).
"""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]  # the benchmarks' helpers, and this checkout's jglow

import common  # noqa: E402  (on the path just above)

MODEL_TESTS = ["tests/test_model.py", "tests/test_bijectors.py"]
SMOKE_TESTS = [
    "tests/test_bijectors.py::test_squeeze_puts_each_2x2_block_into_channels_in_documented_order"]
FULL = {"batch": 64, "conditions": (10_000, 100_000), "train_steps": 200, "check_maps": 8,
        "inverse_maps": 4, "repeats": 3}
SMOKE = {"batch": 16, "conditions": (64, 256), "train_steps": 3, "check_maps": 4,
         "inverse_maps": 4, "repeats": 1}
SECONDS_NEEDED = {"tests": 60, "model": 45, "grid": 45, "training": 90, "inverse": 60}
"""Seconds a section is not started without (a guess of its least time on an accelerator)."""


def peak_device_mb():
    """The first device's peak memory in use so far, MB (None where it reports none)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else round(peak / 1e6, 1)


def pytest_counts(output: str) -> dict:
    """`{"passed": n, "failed": n, ...}` from the summary line of `pytest -q` output."""
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    return {word: int(count) for count, word in re.findall(r"(\d+) (\w+)", summary)}


def run_tests(paths, timeout: float) -> dict:
    """`pytest -q paths` in a subprocess from the repository root: counts, status, seconds."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths]
    environment = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env=environment)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or ""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        return {"paths": paths, "timed_out_s": timeout, "tail": output[-2000:]}
    result = {"paths": paths, "returncode": done.returncode,
              "seconds": time.perf_counter() - start, **pytest_counts(done.stdout)}
    if done.returncode:
        result["tail"] = done.stdout[-3000:]
    return result


def environment() -> dict:
    """JAX's version and backend, the devices, and what jglow chose for this backend."""
    import jax

    from jglow import backend, compilation

    device = jax.local_devices()[0]
    free = backend.free_memory_bytes(device)
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "device_kind": device.device_kind,
            "free_memory_mb": None if free is None else round(free / 1e6, 1),
            "matmul_precision": compilation.matmul_precision(),
            "compiler_options": compilation.compiler_options()}


def model_speed(sizes: dict, config) -> dict:
    """log_prob and sampling (`bench_model.jglow_timers`)."""
    from bench_model import jglow_timers

    static, timers = jglow_timers(sizes["batch"], config)
    return {"batch": sizes["batch"], **static,
            **{name: timer(sizes["repeats"]) for name, timer in timers.items()}}


def grid_speed(sizes: dict, config, deadline: float) -> dict:
    """`bench_posterior.time_grid` at each number of conditions that fits before `deadline`."""
    import numpy as np

    from bench_posterior import paper_model, time_grid
    from jglow.posterior.grid import default_chunk_size

    params, x = paper_model(config=config)
    runs = []
    for m in sizes["conditions"]:
        if runs:  # time linear in M: the last run's, scaled, with its compilation
            last = runs[-1]
            expected = last["seconds"] * m / last["conditions"] + last["compile_s"]
            if time.monotonic() + expected > deadline:
                runs.append({"conditions": m, "skipped": f"expected {expected:.0f} s"})
                break
        zs = np.random.default_rng(1).uniform(-1.0, 1.0, (m, 2)).astype(np.float32)
        chunk = default_chunk_size(m, 1, params=params)
        run = time_grid(params, x, zs, chunk, sizes["repeats"] if not runs else 1)
        runs.append({**run, "likelihoods_per_s": run["evaluations_per_s"],
                     "peak_device_mb": peak_device_mb()})
    return {"runs": runs}


def training(sizes: dict, config) -> dict:
    """The trainer's step timed for `train_steps` steps, then the trained model's inverse."""
    import jax
    import numpy as np

    from bench_train import compiled_step
    from jglow.train import parallel
    from jglow.train.config import PRESETS
    from jglow.train.metrics import inverse_check

    preset = PRESETS["paper"]()
    if config is not None:
        preset = dataclasses.replace(preset, model=config)
    preset = dataclasses.replace(preset, batch_size=sizes["batch"])
    steps = sizes["train_steps"]
    state, step, (xs, zs), compile_s = compiled_step(preset, steps)

    last = {}

    def one_step():
        nonlocal state
        state, last["metrics"] = step(state, xs, zs)
        jax.block_until_ready(last["metrics"])

    seconds = common.median_seconds(one_step, repeats=steps, warmup=0)
    metrics = parallel.host_value(last["metrics"])
    params = parallel.host_value(state.params)
    n = sizes["check_maps"]
    x, z = np.asarray(xs)[:n], np.asarray(zs)[:n]
    result = {"steps": steps, "batch": sizes["batch"], "remat_steps": preset.model.remat_steps,
              "compile_s": compile_s, "median_step_s": seconds,
              "maps_per_s": sizes["batch"] / seconds, "last_loss": float(metrics["loss"]),
              "nonfinite_steps": int(metrics["nonfinite_total"]),
              "inverse": inverse_check(params, x, z, jax.random.PRNGKey(2))}
    if jax.default_backend() != "cpu":
        with jax.default_matmul_precision("default"):
            result["inverse_at_jax_default_precision"] = inverse_check(params, x, z,
                                                                       jax.random.PRNGKey(2))
    return result


def inverse(sizes: dict, smoke: bool) -> dict:
    """`bench_inverse.measure` in float32, in this process."""
    from bench_inverse import measure

    return measure("float32", [0.01, 0.001], sizes["inverse_maps"], smoke)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model and sizes (seconds on a CPU)")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds; a section that would not fit in what is left is skipped")
    parser.add_argument("--out", help="also write the JSON here, after every section")
    args = parser.parse_args(argv)
    started = time.monotonic()
    deadline = started + args.budget
    sizes = SMOKE if args.smoke else FULL
    result = {"smoke": args.smoke, "budget_s": args.budget, "total_s": 0.0}

    def write():
        result["total_s"] = round(time.monotonic() - started, 1)
        if args.out:
            with open(args.out, "w") as out:
                json.dump(result, out, indent=2, default=float)

    def section(name, fn, *fn_args):
        left = deadline - time.monotonic()
        if left < (0 if args.smoke else SECONDS_NEEDED.get(name, 0)):
            result[name] = {"skipped": f"{left:.0f} s of the budget left"}
        else:
            start = time.perf_counter()
            try:
                result[name] = fn(*fn_args)
            except Exception as error:  # a failed section is reported, the others still run
                result[name] = {"error": f"{type(error).__name__}: {error}"[-2000:]}
            result[name]["section_s"] = round(time.perf_counter() - start, 1)
            if name != "tests":
                result[name]["peak_device_mb"] = peak_device_mb()
        write()

    section("tests", run_tests, SMOKE_TESTS if args.smoke else MODEL_TESTS,
            max(1.0, min(240.0, deadline - time.monotonic() - 120.0)))
    config = common.tiny_config() if args.smoke else None
    section("environment", environment)
    section("model", model_speed, sizes, config)
    section("grid", grid_speed, sizes, config, deadline)
    section("training", training, sizes, config)
    section("inverse", inverse, sizes, args.smoke)
    write()
    print(json.dumps(result, indent=2, default=float))
    return result


if __name__ == "__main__":
    main()
