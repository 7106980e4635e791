"""Posterior inference of (Ωm, σ8) for maps with a trained model (issue 5).

    python -m train.infer --model WORKDIR (--map FILE.npy | --synthetic N) [options]

* `--map FILE.npy`: raw maps `(H, W)` or `(N, H, W)` in physical units at the model's resolution;
  `--params FILE.npy` (`(2,)` or `(N, 2)`, physical Ωm, σ8) gives their truths when known.
* `--synthetic N`: `N` held-out synthetic maps (`jglow.data.synthetic_maps`, one per Latin-
  hypercube point, `--seed` different from the training data's) with known truths; the exact
  likelihood's posteriors are computed on the same grid, side by side with the model's.

Writes to `--out` (default `WORKDIR/inference`): `map_NNNN.json` (the posterior summary per map,
with the truth's credibility and ranks when known, and the exact posterior's for synthetic maps),
`map_NNNN.png` for the first `--figures` maps (filled HPD contours, truth marked, marginals),
`posteriors.npz` (grid axes and the log-likelihood tables), and, when two or more maps have known
truths, `coverage.json` and `coverage.png` (HPD coverage and rank statistics, model and exact).
`summary.json` repeats what is printed.
"""

import argparse
import json
import os
import sys

import numpy as np

from jglow import posterior
from jglow.data import synthetic_maps
from jglow.saving import load


def load_maps(path, params_path=None):
    """`(maps (N, H, W) float32, truths (N, 2) or None)` from `.npy` files."""
    maps = np.load(path, mmap_mode="r")
    maps = np.asarray(maps[None] if maps.ndim == 2 else maps, np.float32)
    if maps.ndim != 3:
        raise ValueError(f"{path}: expected maps of shape (H, W) or (N, H, W), got {maps.shape}")
    if params_path is None:
        return maps, None
    truths = np.atleast_2d(np.load(params_path)).astype(np.float64)
    if truths.shape not in ((1, 2), (maps.shape[0], 2)):
        raise ValueError(f"{params_path}: expected parameters of shape (2,) or "
                         f"({maps.shape[0]}, 2), got {truths.shape}")
    return maps, np.broadcast_to(truths, (maps.shape[0], 2))


def _write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def _write_map(out_dir, i, post, truth, reference, estimate, figure):
    """`map_NNNN.json` (and `map_NNNN.png` if `figure`) for map `i`."""
    record = {"index": i, "model": post.summary(truth)}
    if reference is not None:
        record["exact"] = reference.summary(truth)
    if estimate is not None:
        record["gradient_map"] = {"theta": estimate.theta.tolist(),
                                  "log_posterior": estimate.log_posterior}
    _write_json(os.path.join(out_dir, f"map_{i:04d}.json"), record)
    if figure:
        fig = posterior.plot_posterior(post, truth, reference, title=f"map {i}", label="model",
                                       reference_label="exact")
        fig.savefig(os.path.join(out_dir, f"map_{i:04d}.png"), dpi=100)


def _write_tables(out_dir, posteriors, references, truths):
    """`posteriors.npz`: grid axes, log-likelihood tables `(N, n_Ωm, n_σ8)`, truths."""
    tables = {f"axis_{name}": axis for name, axis in zip(posteriors[0].names, posteriors[0].axes)}
    tables["model_log_likelihood"] = np.stack([p.log_likelihood for p in posteriors])
    if references is not None:
        tables["exact_log_likelihood"] = np.stack([p.log_likelihood for p in references])
    if truths is not None:
        tables["truths"] = np.asarray(truths)
    np.savez(os.path.join(out_dir, "posteriors.npz"), **tables)


def _write_coverage(out_dir, posteriors, references, truths) -> dict:
    """`coverage.json` and `coverage.png` of the model (and exact) posteriors; their summaries."""
    calibrations = {"model": posterior.calibrate(posteriors, truths)}
    if references is not None:
        calibrations["exact"] = posterior.calibrate(references, truths)
    coverage = {name: c.summary() for name, c in calibrations.items()}
    _write_json(os.path.join(out_dir, "coverage.json"), coverage)
    posterior.plot_coverage(calibrations).savefig(os.path.join(out_dir, "coverage.png"), dpi=100)
    return coverage


def infer(model, maps, out_dir, truths=None, exact=None, grid=30, chunk_size=None,
          map_batch=16, figures=10, refine=False, progress=True) -> dict:
    """Grid posteriors of `maps` under `model`, written to `out_dir` (module docstring).

    Args:
      model: a trained model with `.params` (`GlowParams`) and `.preprocessing`
        (`jglow.saving.load`).
      maps: raw maps `(N, H, W)`.
      out_dir: output directory (created).
      truths: physical `(N, 2)` truths, or `None`.
      exact: a log-likelihood of the same maps to compare against (e.g. `SyntheticLikelihood`).
      grid: `jglow.posterior.grid_axes` argument over the model's prior box.
      chunk_size: conditions per chunk in `grid_log_prob`; map_batch: maps per call.
      figures: posterior figures drawn for the first this many maps.
      refine: also refine each grid MAP by gradient (`gradient_map`).
      progress: show progress bars of the likelihood calls.
    Returns:
      The summary dict (also written to `summary.json`).
    """
    height, width, _ = model.params.config.image_shape
    if np.ndim(maps) != 3 or np.shape(maps)[1:] != (height, width):
        raise ValueError(f"maps must have shape (N, {height}, {width}) for this model, got "
                         f"{np.shape(maps)}")
    os.makedirs(out_dir, exist_ok=True)
    box = model.preprocessing.box
    likelihood = posterior.ModelLikelihood(model.params, model.preprocessing, chunk_size)
    posteriors = posterior.grid_posteriors(likelihood, maps, grid, box, map_batch=map_batch,
                                           progress="model posteriors" if progress else None)
    references = (None if exact is None else
                  posterior.grid_posteriors(exact, maps, grid, box, map_batch=map_batch,
                                            progress="exact posteriors" if progress else None))
    for i, post in enumerate(posteriors):
        estimate = (posterior.gradient_map(likelihood, maps[i], init=post.map_estimate, box=box)
                    if refine else None)
        _write_map(out_dir, i, post, None if truths is None else truths[i],
                   None if references is None else references[i], estimate, i < figures)
    _write_tables(out_dir, posteriors, references, truths)
    summary = {"n_maps": len(posteriors), "out_dir": out_dir,
               "grid_shape": list(posteriors[0].probability.shape),
               "n_nonfinite": int(sum(p.n_nonfinite for p in posteriors)),
               "outside_box": posteriors[0].outside_box}
    if truths is not None and len(posteriors) >= 2:
        summary["coverage"] = _write_coverage(out_dir, posteriors, references, truths)
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m train.infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="workdir of a trained model (jglow.saving.load)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--map", help=".npy file of raw maps (H, W) or (N, H, W)")
    source.add_argument("--synthetic", type=int, metavar="N", help="N held-out synthetic maps")
    parser.add_argument("--params", help=".npy file of the maps' true (Ωm, σ8), (2,) or (N, 2)")
    parser.add_argument("--out", help="output directory (default WORKDIR/inference)")
    parser.add_argument("--grid", type=int, nargs="+", default=[30],
                        help="grid points per axis: one int, or one per parameter (default 30)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the synthetic maps")
    parser.add_argument("--box-size", type=float, default=25.0, help="map side in Mpc/h (synthetic)")
    parser.add_argument("--chunk-size", type=int, help="conditions per chunk (default: automatic)")
    parser.add_argument("--map-batch", type=int, default=16, help="maps per likelihood call")
    parser.add_argument("--figures", type=int, default=10, help="posterior figures for the first N maps")
    parser.add_argument("--refine", action="store_true", help="refine each MAP by gradient")
    args = parser.parse_args(argv)
    if args.params and args.synthetic:
        parser.error("--params goes with --map; synthetic maps come with their parameters")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    model = load(args.model)
    exact = None
    if args.synthetic:
        height, width, _ = model.params.config.image_shape
        if height != width:
            raise ValueError(f"synthetic maps are square; the model's maps are {height}x{width}")
        held_out = synthetic_maps(args.synthetic, 1, size=height, box_size=args.box_size,
                                  seed=args.seed)
        maps, truths = np.asarray(held_out.maps), np.asarray(held_out.params, np.float64)
        exact = posterior.SyntheticLikelihood(args.box_size)
    else:
        maps, truths = load_maps(args.map, args.params)
    grid = args.grid[0] if len(args.grid) == 1 else tuple(args.grid)
    summary = infer(model, maps, args.out or os.path.join(args.model, "inference"), truths, exact,
                    grid, args.chunk_size, args.map_batch, args.figures, args.refine)
    if summary["n_nonfinite"]:
        print(f"warning: {summary['n_nonfinite']} non-finite log-likelihoods on the grids "
              f"(given zero posterior mass)", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
