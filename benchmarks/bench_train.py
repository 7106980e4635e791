"""Training throughput and memory of the trainer's step on this machine.

    python benchmarks/bench_train.py [--reference PATH] [--preset paper] [--batch 64] [--steps 3]
                                     [--rounds 1]

Each measurement runs in its own process, so peak memory and forced device counts are its own:

* `jglow`: the trainer's jitted step (`train.main.compiled_functions`: augmentation, forward,
  backward, clipping, Adam, non-finite guard) on synthetic maps, with and without
  `remat_steps`; compile seconds, median step seconds after compilation, maps/s, and the peak
  RSS (Linux `VmHWM`) of the process, compilation included, and of the timed steps alone (reset
  through `/proc/self/clear_refs` after compiling and, as the trainer does,
  `train.memory.release_freed_memory`);
* `devices`: the preset's own step (`remat_steps` as the preset sets it) with 1, 2 and 4 host
  devices forced by `XLA_FLAGS=--xla_force_host_platform_device_count=N` (batch sharded);
* `reference` (with `--reference`, a checkout of friedmanroy/HI-generation): the PyTorch
  reference's training step (`benchmarks/reference.py: time_train_step`) with its best malloc
  setting, its peak RSS, and the ratios. Only ratios measured in one run are comparable;
* `preset_rounds` (with `--rounds N > 1`): the preset's step and the reference's measured N
  times, alternating, each in a fresh process: the ratio of each round and their median, since
  this machine's speed drifts by tens of percent within minutes.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import common

HERE = os.path.dirname(os.path.abspath(__file__))


def _memory_mb(field):
    """`VmRSS` or `VmHWM` of this process in MB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_rss_mb():
    """Peak RSS of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def preset_config(preset, batch, remat):
    """The `TrainConfig` of `preset` with global batch `batch` and `remat_steps` set to `remat`."""
    import dataclasses

    from jglow.train.config import PRESETS

    base = PRESETS[preset]()
    return dataclasses.replace(base, batch_size=batch,
                               model=dataclasses.replace(base.model, remat_steps=remat))


def compiled_step(config, steps):
    """In this process: the trainer's step (`train.main.compiled_functions`, a run of `steps`
    steps) compiled on all devices for one batch of synthetic maps.

    Returns `(state, step, batch, compile_s)`: the replicated initial state, the compiled step,
    the sharded `(x, z)` batch and the compile seconds.
    """
    import jax
    import numpy as np

    import jglow
    from jglow.data import fit_preprocessing, synthetic_maps
    from jglow.train import parallel
    from jglow.train.main import compiled_functions
    from jglow.train.state import init_state

    batch = config.batch_size
    mesh = parallel.make_mesh(jax.devices())
    parallel.check_batch(batch, mesh)
    maps = synthetic_maps(-(-batch // 15), 15, size=config.model.image_shape[0], seed=1)
    preprocessing = fit_preprocessing(maps.maps)
    x = np.asarray(preprocessing.forward_maps(maps.maps))[:batch]
    z = np.asarray(preprocessing.forward_params(maps.params))[:batch]
    params = jglow.init(jax.random.key(0), config.model, x[:2], z[:2])
    state = parallel.replicate(mesh, init_state(config, params, jax.random.key(1)))
    xs, zs = parallel.global_batch(mesh, x, z)
    compile_s, step = common.compile_seconds(compiled_functions(config, mesh, steps)["step"],
                                             state, xs, zs)
    return state, step, (xs, zs), compile_s


def measure_jglow(preset, batch, steps, remat):
    """In this process: compile and time the trainer's step; a JSON-able dict."""
    import jax

    from jglow.train import memory

    config = preset_config(preset, batch, remat)
    state, step, (xs, zs), compile_s = compiled_step(config, steps)
    rss_compiled, peak_compile = _memory_mb("VmRSS"), _memory_mb("VmHWM")
    memory.release_freed_memory()  # as the trainer does after its first step
    rss_released = _memory_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM (and ru_maxrss) to the current RSS

    def one_step():
        nonlocal state
        state, metrics = step(state, xs, zs)
        jax.block_until_ready(metrics)

    seconds = common.median_seconds(one_step, repeats=steps)
    return {"devices": len(jax.devices()), "remat_steps": remat, "batch": batch,
            "compile_s": compile_s, "median_step_s": seconds, "maps_per_s": batch / seconds,
            "rss_after_compile_mb": rss_compiled, "rss_after_release_mb": rss_released,
            "peak_rss_steps_mb": _memory_mb("VmHWM"),
            "peak_rss_process_mb": max(peak_compile, _memory_mb("VmHWM"))}


def measure_reference(path, batch, steps):
    """In this process: the PyTorch reference's training step; a JSON-able dict."""
    common.add_reference_path(path)
    import reference

    model = reference.build_reference(path)
    timing = reference.time_train_step(model, batch=batch, repeats=steps)
    return {"batch": batch, "median_step_s": timing["median_s"],
            "maps_per_s": timing["maps_per_s"], "peak_rss_process_mb": _peak_rss_mb(),
            "malloc_env": {k: os.environ.get(k) for k in reference.MALLOC_ENV}}


def _preset_remat_steps(preset):
    from jglow.train.config import PRESETS

    return PRESETS[preset]().model.remat_steps


def _in_child(task, env=None):
    """Run `task` (a JSON dict) in a fresh `python bench_train.py --child` process."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(task)],
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-5:], "task": task}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _alternating_rounds(rounds, jglow_task, reference_task, reference_env, first):
    """Throughput and peak-RSS ratios (jglow / reference) of `rounds` pairs of fresh processes,
    the two sides alternating so that both see the machine's drift; `first` is the pair
    already measured. Returns the ratios per round, their medians and any failed round."""
    pairs = [first] + [(_in_child(jglow_task), _in_child(reference_task, reference_env))
                       for _ in range(rounds - 1)]
    measured = [(ours, theirs) for ours, theirs in pairs if "error" not in ours | theirs]
    throughput = [ours["maps_per_s"] / theirs["maps_per_s"] for ours, theirs in measured]
    memory = [ours["peak_rss_process_mb"] / theirs["peak_rss_process_mb"]
              for ours, theirs in measured]
    return {"throughput_ratios": throughput, "peak_rss_ratios": memory,
            "median_throughput_ratio": statistics.median(throughput) if measured else None,
            "median_peak_rss_ratio": statistics.median(memory) if measured else None,
            "failed_rounds": [pair for pair in pairs if "error" in pair[0] | pair[1]]}


def _run_child(task):
    if task["kind"] == "jglow":
        result = measure_jglow(task["preset"], task["batch"], task["steps"], task["remat"])
    else:
        result = measure_reference(task["path"], task["batch"], task["steps"])
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="checkout of friedmanroy/HI-generation")
    parser.add_argument("--preset", default="paper", choices=("paper", "quick"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after compilation")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --reference: measure the preset's step and the reference's "
                             "this many times, alternating, and report the median ratio")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _run_child(json.loads(args.child))

    task = {"kind": "jglow", "preset": args.preset, "batch": args.batch, "steps": args.steps}
    result = {"preset": args.preset, "batch": args.batch, "cpu_count": os.cpu_count(),
              "loadavg_start": os.getloadavg()}
    result["jglow"] = _in_child(dict(task, remat=False))
    result["jglow_remat"] = _in_child(dict(task, remat=True))
    result["preset_remat_steps"] = _preset_remat_steps(args.preset)
    preset_task = dict(task, remat=result["preset_remat_steps"])
    result["devices"] = {1: result["jglow_remat" if preset_task["remat"] else "jglow"]}
    for n in (2, 4):
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
        result["devices"][n] = _in_child(preset_task, {"XLA_FLAGS": flags.strip()})
    if args.reference:
        sys.path.insert(0, HERE)
        import reference  # only for MALLOC_ENV: torch is imported in the child

        reference_task = {"kind": "reference", "path": args.reference, "batch": args.batch,
                          "steps": args.steps}
        result["reference"] = _in_child(reference_task, reference.MALLOC_ENV)
        for name in ("jglow", "jglow_remat"):
            if "maps_per_s" in result[name] and "maps_per_s" in result["reference"]:
                ours, theirs = result[name], result["reference"]
                result[f"{name}_vs_reference"] = {
                    "throughput_ratio": ours["maps_per_s"] / theirs["maps_per_s"],
                    "peak_rss_ratio": ours["peak_rss_process_mb"] / theirs["peak_rss_process_mb"],
                    "steps_peak_rss_ratio": (ours["peak_rss_steps_mb"]
                                             / theirs["peak_rss_process_mb"])}
        if args.rounds > 1:
            result["preset_rounds"] = _alternating_rounds(
                args.rounds, preset_task, reference_task, reference.MALLOC_ENV,
                first=(result["devices"][1], result["reference"]))
    result["loadavg_end"] = os.getloadavg()
    common.print_json(result)


if __name__ == "__main__":
    main()
