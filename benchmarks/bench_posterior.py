"""Benchmarks of the grid posterior; prints one JSON object.

    python benchmarks/bench_posterior.py [--reference /path/to/HI-generation] [options]
    python benchmarks/bench_posterior.py --gpu-m 10000          # likelihoods/s on one device

Paper configuration (64×64×1, 6 levels × 20 steps), random initialisation (timing does not
depend on the values), conditions on an `n × n` linspace(−1, 1) mesh as the reference notebook.
Every time is the median of `--repeats` calls after compilation (compile time reported apart);
each timed grid also gives XLA's scratch memory of its compiled program (`program_scratch_mb`).
Helpers (timing, compile time, reference import, JSON) come from `benchmarks/common.py`.

* `grid`: one map, 30×30 grid: seconds, evaluations/s and the fraction of the CPU's fp32 matmul
  peak, counting the reference's 0.23 GFLOP per evaluation against 214 GFLOP/s (the
  project's 2-core CPU's matmul peak as first measured; jglow does fewer FLOPs per evaluation,
  so this is an effective figure); the matmul peak measured in the same run is reported beside it.
* `scaling`: grids of `--grids` sides at a fixed chunk size, each in a fresh subprocess: seconds
  per evaluation (flat = time linear in M) and peak RSS until compiled and during the runs alone
  (Linux VmHWM, reset after compiling; flat = memory bounded by the chunk).
* `many_maps`: `--maps` maps on one grid in one call against as many single-map calls
  (extrapolated from `grid`): the work that depends only on the conditions is shared.
* `chunk_sweep`: one map, 30×30, for each of `--chunks`.
* `reference` (with `--reference`): the PyTorch reference's own grid posterior
  (`benchmarks/reference.py`, batches of 128 in a loop) in the same run, and the ratio.
* `grid_rounds` (with `--reference` and `--rounds N > 1`): the 30×30 grid of one map and the
  reference's timed in turn N times (each the median of `--repeats` calls), every round's
  seconds and ratio, and the median ratio: both sides see the machine of the same minutes.
* `--gpu-m M`: only likelihoods per second for one map at `M` conditions on `jax.devices()[0]`,
  for each of `--gpu-chunks` (the best is reported).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys

import jax
import numpy as np
from common import (REFERENCE_GFLOP_PER_MAP, add_reference_path, compile_seconds,
                    matmul_peak_gflops, median_seconds, print_json)

import jglow
from jglow.posterior.grid import default_chunk_size, grid_log_prob_unchecked

PEAK_GFLOPS = 214.0
"""fp32 matmul peak of the project's 2-core CPU, as first measured (GFLOP/s)."""


def paper_model(n_maps=1, seed=0, config=None):
    """`(params, x (n_maps, H, W, C))`: a randomly initialised model of `config` (default the
    paper configuration, 64×64×1) and random maps."""
    config = config or jglow.paper_config()
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (n_maps, *config.image_shape)).astype(np.float32)
    z = rng.uniform(-1.0, 1.0, (1, config.cond_dim)).astype(np.float32)
    return jglow.init(jax.random.PRNGKey(seed), config, x[:1], z), x


def mesh(side: int) -> np.ndarray:
    """`(side², 2)` conditions on a linspace(−1, 1) mesh (the reference notebook's grid)."""
    axis = np.linspace(-1.0, 1.0, side, dtype=np.float32)
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)


def peak_rss_mb() -> float:
    """This process's peak resident memory since start or since `reset_peak_rss` (Linux VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count at the current RSS (Linux `clear_refs`); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def time_grid(params, x, zs, chunk: int, repeats: int) -> dict:
    """Compile `grid_log_prob` for these shapes, then the median of `repeats` timed calls."""
    chunk = min(chunk, zs.shape[0])
    compile_s, compiled = compile_seconds(grid_log_prob_unchecked, params, x, zs, chunk)
    analysis = compiled.memory_analysis()
    rss_compiled = peak_rss_mb()
    run_peak_isolated = reset_peak_rss()
    seconds = median_seconds(lambda: compiled(params, x, zs).block_until_ready(), repeats,
                             warmup=0)
    evaluations = x.shape[0] * zs.shape[0]
    return {"maps": x.shape[0], "conditions": zs.shape[0], "chunk_size": chunk,
            "seconds": seconds, "compile_s": round(compile_s, 2),
            "evaluations_per_s": evaluations / seconds,
            "seconds_per_evaluation": seconds / evaluations,
            "fraction_of_peak": evaluations * REFERENCE_GFLOP_PER_MAP / (seconds * PEAK_GFLOPS),
            "program_scratch_mb": round(analysis.temp_size_in_bytes / 1e6, 1),
            "peak_rss_mb_until_compiled": round(rss_compiled, 1),
            "peak_rss_mb_of_the_runs": round(peak_rss_mb(), 1),
            "run_peak_isolated": run_peak_isolated}


def scaling_child(side: int, chunk: int) -> dict:
    """One grid size in this (fresh) process: one timed call."""
    params, x = paper_model()
    return dict(time_grid(params, x, mesh(side), chunk, repeats=1), grid=side)


def scaling(sides, chunk: int) -> list:
    """`scaling_child` for each side, each in its own subprocess (independent peak RSS)."""
    results = []
    for side in sides:
        command = [sys.executable, os.path.abspath(__file__), "--child-grid", str(side),
                   "--chunk", str(chunk)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def reference_model(path: str):
    """`(benchmarks/reference.py as a module, the paper-configuration reference model)`."""
    add_reference_path(path)
    import reference  # noqa: E402  (benchmarks/reference.py, imports torch)

    return reference, reference.build_reference(path)


def reference_grid(path: str, side: int, repeats: int) -> dict:
    """The PyTorch reference's grid posterior, timed by `benchmarks/reference.py`."""
    reference, model = reference_model(path)
    return reference.time_grid_posterior(model, grid=side, batch=128, repeats=repeats)


def grid_rounds(params, x, zs, chunk: int, path: str, rounds: int, repeats: int) -> dict:
    """jglow's grid posterior and the reference's, timed in turn `rounds` times."""
    reference, model = reference_model(path)
    _, compiled = compile_seconds(grid_log_prob_unchecked, params, x, zs, min(chunk, zs.shape[0]))
    jglow_s, reference_s = [], []
    for _ in range(rounds):
        jglow_s.append(median_seconds(lambda: compiled(params, x, zs).block_until_ready(), repeats))
        reference_s.append(reference.time_grid_posterior(model, grid=30, batch=128,
                                                         repeats=repeats)["median_s"])
    ratios = [r / j for j, r in zip(jglow_s, reference_s)]
    return {"jglow_seconds": jglow_s, "reference_seconds": reference_s,
            "reference_over_jglow": ratios, "median_reference_over_jglow": float(np.median(ratios))}


def gpu_throughput(m: int, chunks, repeats: int) -> dict:
    """Likelihoods per second for one map at `m` conditions on the default device, for each
    chunk size of `chunks`, and the best."""
    params, x = paper_model()
    zs = np.random.default_rng(1).uniform(-1.0, 1.0, (m, 2)).astype(np.float32)
    runs = [time_grid(params, x, zs, chunk, repeats) for chunk in chunks]
    best = max(runs, key=lambda run: run["evaluations_per_s"])
    return {"device": str(jax.devices()[0]), "conditions": m, "runs": runs,
            "best_chunk_size": best["chunk_size"], "likelihoods_per_s": best["evaluations_per_s"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="path of a HI-generation checkout (PyTorch reference)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --reference: also time both grids in turn this many times")
    parser.add_argument("--grids", type=int, nargs="*", default=[30, 100, 300],
                        help="grid sides of the scaling measurement (subprocesses)")
    parser.add_argument("--chunk", type=int, help="chunk size of the main measurements "
                                                   "(default: jglow's default for one map)")
    parser.add_argument("--chunks", type=int, nargs="*", default=[8, 16, 32, 64, 128, 300])
    parser.add_argument("--maps", type=int, default=100, help="maps of the many-maps measurement")
    parser.add_argument("--maps-grid", type=int, default=30, help="grid side for --maps")
    parser.add_argument("--gpu-m", type=int, help="only measure likelihoods/s at M conditions")
    parser.add_argument("--gpu-chunks", type=int, nargs="+", default=[500, 2000, 10000],
                        help="chunk sizes tried with --gpu-m")
    parser.add_argument("--malloc", action="store_true",
                        help="re-run with the glibc malloc settings of benchmarks/reference.py "
                             "(the reference's best setting; applies to both)")
    parser.add_argument("--child-grid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def rerun_with_malloc_settings():
    """Replace this process by itself with `reference.MALLOC_ENV` (glibc reads it at start)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from reference import MALLOC_ENV  # noqa: E402

    if any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]],
                  dict(os.environ, **MALLOC_ENV))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.malloc:
        rerun_with_malloc_settings()
    chunk = args.chunk or default_chunk_size(900, 1)
    if args.child_grid:
        print(json.dumps(scaling_child(args.child_grid, chunk)))
        return {}
    if args.gpu_m:
        result = {"gpu": gpu_throughput(args.gpu_m, args.gpu_chunks, args.repeats)}
        print_json(result)
        return result
    params, maps = paper_model(max(1, args.maps))
    single = maps[:1]
    result = {"jax": jax.__version__, "python": platform.python_version(),
              "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
              "loadavg_start": os.getloadavg(), "malloc_settings": args.malloc,
              "measured_matmul_peak_gflops": matmul_peak_gflops(),
              "grid": time_grid(params, single, mesh(30), chunk, args.repeats)}
    if args.reference:
        result["reference"] = reference_grid(args.reference, 30, args.repeats)
        result["reference_over_jglow"] = result["reference"]["median_s"] / result["grid"]["seconds"]
        if args.rounds > 1:
            result["grid_rounds"] = grid_rounds(params, single, mesh(30), chunk, args.reference,
                                                args.rounds, args.repeats)
    result["chunk_sweep"] = [time_grid(params, single, mesh(30), c, args.repeats)
                             for c in args.chunks]
    if args.maps:
        zs = mesh(args.maps_grid)
        many = time_grid(params, maps, zs, default_chunk_size(zs.shape[0], args.maps), 1)
        alone = time_grid(params, single, zs, chunk, args.repeats)
        many.update(grid=args.maps_grid, seconds_one_map=alone["seconds"],
                    speedup_over_one_map_at_a_time=alone["seconds"] * args.maps / many["seconds"])
        result["many_maps"] = many
    result["scaling"] = scaling(args.grids, chunk)
    result["loadavg_end"] = os.getloadavg()
    print_json(result)
    return result


if __name__ == "__main__":
    main()
