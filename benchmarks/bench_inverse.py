"""Is the inverse sound? Round trips and samples of a perturbed model in float32 and float64.

    python benchmarks/bench_inverse.py [--scales 0.01 0.001] [--maps 4] [--tiny]

The paper configuration (`--tiny`: `common.tiny_config`) at its initialisation with
every trainable parameter moved by N(0, scale²) (`bench_model.perturbed_model`), on `--maps`
maps and conditions uniform in [−1, 1] (`bench_model.inputs`). Each precision runs in its own
process on the same parameters and inputs:

* `float32`: jglow as it runs (on the CPU, the fused coupling kernel in the forward pass);
* `float32_xla`: the same with `JGLOW_NATIVE_COUPLING=0` (XLA's couplings both ways);
* `float64`: `jax_enable_x64`, parameters, maps and conditions cast to float64;
  `float32_values` counts the float32 values in the jaxprs of encode, decode and sampling
  (0: the whole path runs in float64).

Per scale: `round_trip_max_abs` and `round_trip_rms` of `decode(encode(x)) − x`; samples at
temperature 1 (`n_nonfinite_samples` of `--maps`, `sample_max_abs` of the finite ones; float64
draws its own noise, so its samples are not float32's); and, in
float64 only, what conditions the inverse: `decode_amplification`, the largest change of
`decode` per unit change of a latent (a random direction at `encode(x)`, by a difference of
1e-6), the 1×1 convolutions' condition numbers (largest, and the sum of `log10` over the
steps), the injector's scales `exp(s)` at the conditions and the couplings' scales met in
`encode` (`scale ∈ (clamp, 1)`; the inverse divides by it), with the steps whose smallest
scale is below 0.01, and `sample_growth`, the factor by which each bijector's inverse grows
the largest value while sampling (per step: largest, median, sum of `log10`). Prints one JSON
object.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys

PRECISIONS = {"float32": {}, "float32_xla": {"JGLOW_NATIVE_COUPLING": "0"}, "float64": {}}
DIFFERENCE = 1e-6
SMALL_SCALE = 0.01


def float32_values(fn, *args) -> int:
    """How many values of dtype float32 the jaxpr of `fn(*args)` computes, nested jaxprs
    (scans, custom derivatives, inner jits) included."""
    import jax
    import jax.extend.core as core
    import numpy as np

    def count(jaxpr) -> int:
        found = 0
        for eqn in jaxpr.eqns:
            found += sum(getattr(v.aval, "dtype", None) == np.float32 for v in eqn.outvars)
            found += sum(count(getattr(sub, "jaxpr", sub)) for sub in core.jaxprs_in_params(
                eqn.params))
        return found

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@contextlib.contextmanager
def recording(cls, method: str, measure):
    """Within the block, every call of `cls.method` (traced, scans included) appends the float
    `measure(args, result)` to the list yielded (through `jax.debug.callback`). Programs must be
    traced inside the block: run them as new functions, so no earlier trace is reused."""
    import jax

    original, values = getattr(cls, method), []

    def patched(self, *args):
        result = original(self, *args)
        jax.debug.callback(lambda value: values.append(float(value)), measure(args, result))
        return result

    setattr(cls, method, patched)
    try:
        yield values
    finally:
        setattr(cls, method, original)


def conditioning(params, x, z) -> dict:
    """What conditions the inverse of `params` at maps `x` and conditions `z` (float64): the
    1×1 convolutions' condition numbers, the injector's scales at `z`, the couplings' scales met
    in `encode(x)` (the smallest of each call)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jglow import model
    from jglow.bijectors import ConditionalCoupling, InvConv1x1

    weights = [np.asarray(jax.vmap(InvConv1x1(block["steps"]["invconv"]["lower"].shape[-1])
                                   .weight)(block["steps"]["invconv"]))
               for block in (*params.levels, params.final)]
    condition_numbers = np.concatenate([np.linalg.cond(w) for w in weights])
    conditioned = model.condition(params, z)
    injector = np.concatenate([np.asarray(block["injector"].scale).ravel()
                               for block in conditioned["blocks"]])
    with recording(ConditionalCoupling, "_scale_shift",
                   lambda args, result: jnp.min(result[0])) as smallest:
        jax.block_until_ready(jax.jit(lambda *args: model._encode.__wrapped__(*args))(
            params, x, z))
    smallest = np.asarray(smallest)
    return {"invconv_condition_max": float(condition_numbers.max()),
            "invconv_log10_condition_sum": float(np.log10(condition_numbers).sum()),
            "injector_scale_min": float(injector.min()),
            "injector_scale_max": float(injector.max()),
            "coupling_scale_min": float(smallest.min()),
            "coupling_steps": int(smallest.size),
            "coupling_steps_below_0.01": int(np.sum(smallest < SMALL_SCALE))}


def sample_growth(params, z) -> dict:
    """Where sampling at conditions `z` grows the maps (float64): for each bijector of a flow
    step, the factor by which its inverse changes the largest `|value|` of the batch, over
    the steps: the largest, the median, and the sum of `log10` (its share of the growth)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jglow import model
    from jglow.bijectors import AffineInjector, ConditionalCoupling, InvConv1x1

    def growth(args, result):
        return jnp.max(jnp.abs(result[0])) / jnp.max(jnp.abs(args[1]))

    parts = {"invconv": InvConv1x1, "injector": AffineInjector, "coupling": ConditionalCoupling}
    with contextlib.ExitStack() as stack:
        factors = {name: stack.enter_context(recording(cls, "inverse", growth))
                   for name, cls in parts.items()}
        jax.block_until_ready(jax.jit(lambda *args: model._sample.__wrapped__(*args))(
            params, jax.random.PRNGKey(2), z, jnp.asarray(1.0, z.dtype)))
    return {name: {"max": float(np.max(f)), "median": float(np.median(f)),
                   "log10_sum": float(np.sum(np.log10(f)))}
            for name, f in factors.items()}


def decode_amplification(params, latents, z) -> float:
    """`max |decode(e + δu) − decode(e)| / δ` for a random direction `u` (`max |u| = 1`) at
    the latents `e`, `δ = DIFFERENCE` (float64)."""
    import jax
    import jax.numpy as jnp

    from jglow import model

    direction = jax.random.uniform(jax.random.PRNGKey(3), latents.shape, latents.dtype, -1.0, 1.0)
    base = model._decode(params, latents, z)
    moved = model._decode(params, latents + DIFFERENCE * direction, z)
    return float(jnp.max(jnp.abs(moved - base)) / (DIFFERENCE * jnp.max(jnp.abs(direction))))


def measure(precision: str, scales, n_maps: int, tiny: bool) -> dict:
    """In this process: the round trips and samples of each scale at `precision`."""
    import jax

    if precision == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import jglow
    from jglow import model

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_model import inputs, perturbed_model
    from common import tiny_config

    config = tiny_config() if tiny else None
    dtype = jnp.float64 if precision == "float64" else jnp.float32
    x, z = inputs(n_maps, side=(config or jglow.paper_config()).image_shape[0])
    x, z = x.astype(dtype), z.astype(dtype)
    result = {}
    for scale in scales:
        params, _ = perturbed_model(x, z, scale, config)
        params = jax.tree_util.tree_map(lambda leaf: leaf.astype(dtype), params)
        latents = model._encode(params, x, z)
        error = np.asarray(model._decode(params, latents, z) - x, np.float64)
        samples = np.asarray(model._sample(params, jax.random.PRNGKey(2), z, dtype(1.0)))
        finite = np.isfinite(samples.reshape(n_maps, -1)).all(axis=1)
        entry = {"round_trip_max_abs": float(np.max(np.abs(error))),
                 "round_trip_rms": float(np.sqrt(np.mean(error**2))),
                 "n_samples": n_maps, "n_nonfinite_samples": int(np.sum(~finite)),
                 "sample_max_abs": float(np.abs(samples[finite]).max()) if finite.any() else None}
        if precision == "float64":
            entry["float32_values"] = sum(float32_values(fn, params, *args) for fn, args in (
                (model._encode.__wrapped__, (x, z)), (model._decode.__wrapped__, (latents, z)),
                (model._sample.__wrapped__, (jax.random.PRNGKey(2), z, dtype(1.0)))))
            entry["decode_amplification"] = decode_amplification(params, latents, z)
            entry["conditioning"] = conditioning(params, x, z)
            entry["sample_growth"] = sample_growth(params, z)
        result[str(scale)] = entry
    return result


def in_child(precision: str, args) -> dict:
    """`measure(precision, ...)` in a fresh process with that precision's environment."""
    command = [sys.executable, os.path.abspath(__file__), "--child", precision,
               "--maps", str(args.maps), "--scales", *map(str, args.scales)]
    done = subprocess.run(command + (["--tiny"] if args.tiny else []), capture_output=True,
                          text=True, env=dict(os.environ, **PRECISIONS[precision]))
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-5:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.001],
                        help="standard deviations of the parameter perturbation")
    parser.add_argument("--maps", type=int, default=4, help="maps and samples per scale")
    parser.add_argument("--tiny", action="store_true", help="the smoke-size model of common.py")
    parser.add_argument("--child", choices=sorted(PRECISIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.scales, args.maps, args.tiny)))
        return
    result = {"config": "tiny" if args.tiny else "paper", "maps": args.maps}
    result.update({precision: in_child(precision, args) for precision in PRECISIONS})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
