"""Speed of the paper-configuration model on this machine: log_prob and sampling.

    python benchmarks/bench_model.py [--reference PATH] [--batch 64] [--repeats 5] [--rounds 1]

Prints JSON: parameter count, compile seconds of jit(log_prob) and jit(sample), maps/s, the
fraction of the measured fp32 matmul peak (counting the reference's 0.23 GFLOP per map), and,
with --reference (a local checkout of friedmanroy/HI-generation), the PyTorch reference timed in
the same run with the ratios. Only ratios from one run are comparable on a shared machine.

With `--rounds N`, the four throughputs (jglow and the reference, log_prob and sampling) are
measured N times in turn, each the median of `--repeats` calls, so that both sides see the
machine's speed of the same minutes: `rounds` lists every round's throughputs and ratios,
and the throughputs and ratios at the top level are the medians over the rounds. With
`--compile-reference`, the reference under `torch.compile` is timed once, after the rounds.
"""

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import jglow
from jglow.compilation import jit

import common


def inputs(batch, seed=0, side=64):
    """`(x (batch, side, side, 1), z (batch, 2))` float32, uniform in [−1, 1] (drawn with numpy:
    XLA:CPU takes seconds to compile each random draw)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, (batch, side, side, 1)).astype(np.float32)
    z = rng.uniform(-1.0, 1.0, (batch, 2)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(z)


def perturbed_model(x, z, scale=1e-3, config=None, seed=1):
    """`(params, trainable mask)`: a model of `config` (default the paper configuration) with
    every trainable parameter moved by N(0, scale²) off its (partly zero) initialisation.

    The draws are float32 numpy, so a float64 process casting these parameters evaluates the
    same model."""
    params = jglow.init(jax.random.PRNGKey(0), config or jglow.paper_config(), x[:1], z[:1])
    mask = jglow.trainable_mask(params)
    rng = np.random.default_rng(seed)

    def moved(leaf, trainable):
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        return leaf + scale * noise if trainable else leaf

    return jax.tree_util.tree_map(moved, params, mask), mask


def jglow_timers(batch, config=None):
    """Compiles jglow's log_prob and sampling of a model of `config` (default the paper
    configuration, square maps); returns the static results and two timers.

    Each timer takes `repeats` and returns maps/s (batch over the median call).
    """
    x, z = inputs(batch, side=(config or jglow.paper_config()).image_shape[0])
    params, mask = perturbed_model(x, z, config=config)
    count = sum(leaf.size for leaf, trainable in zip(jax.tree_util.tree_leaves(params),
                                                     jax.tree_util.tree_leaves(mask)) if trainable)
    log_prob_compile, log_prob_fn = common.compile_seconds(jit(jglow.log_prob), params, x, z)
    key = jax.random.PRNGKey(2)
    sample_at_unit_temperature = jit(lambda p, k, conditions: jglow.sample(p, k, conditions, 1.0))
    sample_compile, sample_fn = common.compile_seconds(sample_at_unit_temperature, params, key, z)
    samples = sample_fn(params, key, z)
    static = {
        "parameters": int(count),
        "compile_log_prob_s": log_prob_compile,
        "compile_sample_s": sample_compile,
        "nonfinite_samples": int(jnp.sum(~jnp.all(jnp.isfinite(samples), axis=(1, 2, 3)))),
    }
    timers = {
        "log_prob_maps_per_s": lambda repeats: batch / common.median_seconds(
            lambda: log_prob_fn(params, x, z).block_until_ready(), repeats),
        "sample_maps_per_s": lambda repeats: batch / common.median_seconds(
            lambda: sample_fn(params, key, z).block_until_ready(), repeats),
    }
    return static, timers


def reference_timers(path, batch):
    """The reference's log_prob and sampling timers (maps/s for `repeats` calls), and the model."""
    import reference

    model = reference.build_reference(path)
    timers = {
        "log_prob_maps_per_s": lambda repeats: reference.time_log_prob(
            model, batch=batch, repeats=repeats)["maps_per_s"],
        "sample_maps_per_s": lambda repeats: reference.time_sampling(
            model, n=batch, repeats=repeats)["maps_per_s"],
    }
    return model, timers


def compiled_reference_log_prob(model, batch, repeats):
    """The reference's log_prob under `torch.compile`: (maps/s, compile seconds)."""
    import reference

    compiled = reference.time_compiled_log_prob(model, batch=batch, repeats=repeats)
    return compiled["maps_per_s"], compiled.get("compile_s")


def alternating_rounds(jglow, reference, rounds, repeats):
    """`rounds` rounds, each timing every measure of jglow then of the reference (when given)."""
    measured = []
    for _ in range(rounds):
        one = {"jglow": {name: timer(repeats) for name, timer in jglow.items()}}
        if reference:
            one["reference"] = {name: timer(repeats) for name, timer in reference.items()}
            one["ratios"] = {name: one["jglow"][name] / one["reference"][name] for name in jglow}
        measured.append(one)
    return measured


def median_over_rounds(measured, side):
    """`{measure: median over the rounds}` for `side` ("jglow", "reference" or "ratios")."""
    return {name: statistics.median(one[side][name] for one in measured)
            for name in measured[0][side]}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="maps per call (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure jglow and the reference in turn this many times (medians)")
    parser.add_argument("--reference", help="path of a local checkout of friedmanroy/HI-generation")
    parser.add_argument("--compile-reference", action="store_true",
                        help="also time the reference under torch.compile (minutes of compilation)")
    args = parser.parse_args()

    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")

    peak = common.matmul_peak_gflops()
    static, jglow = jglow_timers(args.batch)
    model, reference = None, None
    if args.reference:
        common.add_reference_path(args.reference)
        model, reference = reference_timers(args.reference, args.batch)
    measured = alternating_rounds(jglow, reference, args.rounds, args.repeats)
    result = {"batch": args.batch, "matmul_peak_gflops": peak,
              "jglow": {**static, **median_over_rounds(measured, "jglow")}}
    result["jglow"]["fraction_of_matmul_peak"] = (
        result["jglow"]["log_prob_maps_per_s"] * common.REFERENCE_GFLOP_PER_MAP / peak)
    if args.reference:
        result["reference"] = median_over_rounds(measured, "reference")
        result["ratios"] = median_over_rounds(measured, "ratios")
        if args.compile_reference:
            maps_per_s, compile_s = compiled_reference_log_prob(model, args.batch, args.repeats)
            result["reference"]["compiled_log_prob_maps_per_s"] = maps_per_s
            result["reference"]["compiled_compile_s"] = compile_s
            result["ratios"]["log_prob_vs_compiled_reference"] = (
                result["jglow"]["log_prob_maps_per_s"] / maps_per_s)
    if args.rounds > 1:
        result["rounds"] = measured
    common.print_json(result)


if __name__ == "__main__":
    main()
