"""Speed of the paper-configuration model on this machine: log_prob and sampling (issue 2).

    python benchmarks/bench_model.py [--reference PATH] [--batch 64] [--repeats 5]

Prints JSON: parameter count, compile seconds of jit(log_prob) and jit(sample), maps/s, the
fraction of the measured fp32 matmul peak (counting the reference's 0.23 GFLOP per map), and,
with --reference (a local checkout of friedmanroy/HI-generation), the PyTorch reference timed in
the same run with the ratios. Only ratios from one run are comparable on a shared machine.
"""

import argparse

import jax
import jax.numpy as jnp

import jglow
from jglow.model import _log_prob, _sample

import common


def _inputs(batch, seed=0):
    key_x, key_z = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.uniform(key_x, (batch, 64, 64, 1), minval=-1.0, maxval=1.0)
    z = jax.random.uniform(key_z, (batch, 2), minval=-1.0, maxval=1.0)
    return x, z


def _perturbed_paper_model(x, z):
    """Paper configuration with every weight moved off its (partly zero) initialisation."""
    params = jglow.init(jax.random.PRNGKey(0), jglow.paper_config(), x[:1], z[:1])
    mask = jglow.trainable_mask(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    noisy = [leaf + 1e-3 * jax.random.normal(k, leaf.shape) if trainable else leaf
             for leaf, k, trainable in zip(leaves, keys, jax.tree_util.tree_leaves(mask))]
    return jax.tree_util.tree_unflatten(treedef, noisy), mask


def measure_jglow(batch, repeats):
    x, z = _inputs(batch)
    params, mask = _perturbed_paper_model(x, z)
    count = sum(leaf.size for leaf, trainable in zip(jax.tree_util.tree_leaves(params),
                                                     jax.tree_util.tree_leaves(mask)) if trainable)
    log_prob_compile, log_prob_fn = common.compile_seconds(_log_prob, params, x, z)
    key, temperature = jax.random.PRNGKey(2), jnp.float32(1.0)
    sample_compile, sample_fn = common.compile_seconds(_sample, params, key, z, temperature)
    log_prob_s = common.median_seconds(lambda: log_prob_fn(params, x, z).block_until_ready(), repeats)
    sample_s = common.median_seconds(lambda: sample_fn(params, key, z, temperature).block_until_ready(), repeats)
    samples = sample_fn(params, key, z, temperature)
    return {
        "parameters": int(count),
        "compile_log_prob_s": log_prob_compile,
        "compile_sample_s": sample_compile,
        "log_prob_maps_per_s": batch / log_prob_s,
        "sample_maps_per_s": batch / sample_s,
        "nonfinite_samples": int(jnp.sum(~jnp.all(jnp.isfinite(samples), axis=(1, 2, 3)))),
    }


def measure_reference(path, batch, repeats, compile_reference):
    import reference

    model = reference.build_reference(path)
    result = {
        "log_prob_maps_per_s": reference.time_log_prob(model, batch=batch, repeats=repeats)["maps_per_s"],
        "sample_maps_per_s": reference.time_sampling(model, n=batch, repeats=repeats)["maps_per_s"],
    }
    if compile_reference:
        compiled = reference.time_compiled_log_prob(model, batch=batch, repeats=repeats)
        result["compiled_log_prob_maps_per_s"] = compiled["maps_per_s"]
        result["compiled_compile_s"] = compiled.get("compile_s")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="maps per call (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--reference", help="path of a local checkout of friedmanroy/HI-generation")
    parser.add_argument("--compile-reference", action="store_true",
                        help="also time the reference under torch.compile (minutes of compilation)")
    args = parser.parse_args()

    peak = common.matmul_peak_gflops()
    result = {"batch": args.batch, "matmul_peak_gflops": peak, "jglow": measure_jglow(args.batch, args.repeats)}
    result["jglow"]["fraction_of_matmul_peak"] = (
        result["jglow"]["log_prob_maps_per_s"] * common.REFERENCE_GFLOP_PER_MAP / peak)
    if args.reference:
        common.add_reference_path(args.reference)
        ref = measure_reference(args.reference, args.batch, args.repeats, args.compile_reference)
        result["reference"] = ref
        result["ratios"] = {name: result["jglow"][name] / ref[name]
                            for name in ("log_prob_maps_per_s", "sample_maps_per_s")}
        if "compiled_log_prob_maps_per_s" in ref:
            result["ratios"]["log_prob_vs_compiled_reference"] = (
                result["jglow"]["log_prob_maps_per_s"] / ref["compiled_log_prob_maps_per_s"])
    common.print_json(result)


if __name__ == "__main__":
    main()
