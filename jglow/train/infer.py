"""Posterior inference of (Ωm, σ8) for maps with a trained model.

    python -m train.infer --model WORKDIR (--map FILE.npy | --synthetic N) [options]

* `--map FILE.npy`: raw maps `(H, W)` or `(N, H, W)` in physical units at the model's resolution;
  `--params FILE.npy` (`(2,)` or `(N, 2)`, physical Ωm, σ8) gives their truths when known.
* `--synthetic N`: `N` held-out synthetic maps (`jglow.data.synthetic_maps`, one per Latin-
  hypercube point, `--seed` different from the training data's) with known truths; the exact
  likelihood's posteriors are computed on the same grid, side by side with the model's.

The posteriors are on zoomed grids by default (`jglow.posterior.grid_posteriors(...,
zoom=True)`): with `--grid 30`, a 10×10 pass over the prior box, then for each map a 28×28 grid
over the region holding all but 1e-6 of that pass's posterior mass (884 evaluations per map
instead of 900); `--no-zoom` evaluates the plain `--grid` over the box. When truths are known,
the likelihood is evaluated at each truth too, and the truth's credible level is the posterior
mass denser than the posterior density there.

Beside the model's, the posteriors of reference likelihoods of the same maps are computed on
their own grids: the exact likelihood's for `--synthetic` maps, and, once `python -m
train.evaluate` has run on the workdir, the summary-statistic baseline's (`baseline`, fitted on
the training split, `WORKDIR/evaluation/baseline.json`) and the recalibrated model's
(`recalibrated`: the log-likelihood divided by the temperature fitted on validation maps,
`WORKDIR/evaluation/recalibration.json`).

Writes to `--out` (default `WORKDIR/inference`): `map_NNNN.json` (the posterior summary per map,
with the truth's credibility and ranks when known, and each reference's), `map_NNNN.png` for
the first `--figures` maps (filled HPD contours, truth marked, marginals, the first reference
dashed),
`posteriors.npz` (each map's grid axes and log-likelihood table, the truths and their
log-likelihoods), and, when two or more maps have known truths, `coverage.json` and
`coverage.png` (HPD coverage, the expected-coverage curve with its band and the rank histograms,
of the model and each reference). `summary.json` holds the printed summary; after it, the
calibration the model reached on held-out data is printed from `WORKDIR/evaluation/report.json`
(`python -m train.evaluate`), with a `warning:` line on stderr when it is outside the binomial
band.
"""

import json
import os
import sys

import numpy as np

from jglow import backend, posterior
from jglow.data import BOX_SIZE, PRIOR_BOX, synthetic_maps
from jglow.data.validation import check_positive_maps, load_numbers
from jglow.errors import InputError
from jglow.posterior.density import parameter_names
from jglow.posterior.grid import evaluations_per_chunk
from jglow.posterior.recalibration import TemperedLikelihood
from jglow.saving import load
from jglow.train import cli, inputs, report

CPU_MAP_BATCH = 16
"""Maps per likelihood call by default on the CPU."""


def default_map_batch(params, points: int) -> int:
    """Maps per likelihood call by default for grids of `points` conditions per map (with a
    zoom, its coarse pass): `CPU_MAP_BATCH` on the CPU (`jglow.backend.on_cpu`); on an
    accelerator as many maps as one chunk of `evaluations_per_chunk(params)` pairs holds at
    `points` conditions each (sized to the device's free memory), at least `CPU_MAP_BATCH`."""
    if backend.on_cpu():
        return CPU_MAP_BATCH
    return max(CPU_MAP_BATCH, evaluations_per_chunk(params) // points)


def points_per_map(grid, zoom: bool, box) -> int:
    """Conditions of one map in the calls that batch maps: the points of `grid` over `box`
    (`jglow.posterior.grid_axes`), or with `zoom` those of its coarse pass (`zoom_counts`)."""
    if zoom:
        return int(np.prod(posterior.zoom_counts(grid, len(box))[0]))
    return int(np.prod([axis.size for axis in posterior.grid_axes(grid, box)]))


def load_maps(path, params_path=None, box=PRIOR_BOX):
    """`(maps (N, H, W) float32, truths (N, 2) or None)` from `.npy` files of real numbers
    (`load_numbers`); `InputError` for arrays of other shapes, no maps, or truths that are not
    finite or lie outside `box`."""
    maps = load_numbers(path, "--map")
    maps = np.asarray(maps[None] if maps.ndim == 2 else maps, np.float32)
    if maps.ndim != 3:
        raise InputError(f"{path}: expected maps of shape (H, W) or (N, H, W), got {maps.shape}")
    if not maps.size:
        raise InputError(f"{path}: holds no maps (shape {maps.shape}); expected at least one map")
    if params_path is None:
        return maps, None
    truths = np.atleast_2d(load_numbers(params_path, "--params")).astype(np.float64)
    if truths.shape not in ((1, 2), (maps.shape[0], 2)):
        raise InputError(f"{params_path}: expected parameters of shape (2,) or "
                         f"({maps.shape[0]}, 2), got {truths.shape}")
    check_in_box(truths, box, params_path)
    return maps, np.broadcast_to(truths, (maps.shape[0], 2))


def check_in_box(truths, box, source) -> None:
    """Physical truths `(N, D)` must be finite and inside the prior box `box` (`D` intervals);
    `InputError` naming `source`, the row, the parameter, its value and the box."""
    low, high = np.asarray(box, np.float64).T
    bad = ~(np.isfinite(truths) & (truths >= low) & (truths <= high))
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        name, value = parameter_names(len(box))[column], float(truths[row, column])
        raise InputError(f"{source}: row {row} has {name} = {value!r}; expected a finite value "
                         f"in the prior box {name} in [{low[column]:g}, {high[column]:g}]")


def check_maps(model, maps, source="maps") -> None:
    """Raw maps must be `(N, H, W)` with the model's `H, W`, every pixel positive and finite;
    `InputError` naming `source` and the first bad map otherwise."""
    height, width, _ = model.params.config.image_shape
    if np.ndim(maps) != 3 or np.shape(maps)[1:] != (height, width):
        raise InputError(f"maps must have shape (N, {height}, {width}) for this model, got "
                         f"{np.shape(maps)}")
    check_positive_maps(maps, source)


def _write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


REFERENCE_LABELS = {"exact": "exact likelihood", "baseline": "power spectrum + moments",
                    "recalibrated": "recalibrated model"}
"""How figures name the reference likelihoods a model's posteriors are compared with."""


def _write_map(out_dir, i, post, truth, references, estimate, figure):
    """`map_NNNN.json` (and `map_NNNN.png` if `figure`) for map `i`; `references` maps a name
    to that likelihood's posterior of the same map."""
    record = {"index": i, "model": post.summary(truth),
              **{name: ref.summary(truth) for name, ref in references.items()}}
    if estimate is not None:
        record["gradient_map"] = {"theta": estimate.theta.tolist(),
                                  "log_posterior": estimate.log_posterior}
    _write_json(os.path.join(out_dir, f"map_{i:04d}.json"), record)
    if figure:
        name, reference = next(iter(references.items()), (None, None))
        fig = posterior.plot_posterior(post, truth, reference, title=f"map {i}", label="model",
                                       reference_label=REFERENCE_LABELS.get(name, name))
        fig.savefig(os.path.join(out_dir, f"map_{i:04d}.png"), dpi=100)


def _write_tables(out_dir, sets, truths):
    """`posteriors.npz`, for each named set of posteriors `SET` of `sets` (`model`, and the
    references such as `exact` or `baseline`): `SET_axis_NAME` `(N, n_NAME)` each map's grid
    axis (a zoomed grid is each map's own), `SET_log_likelihood` `(N, n_Ωm, n_σ8)` nats and
    `SET_truth_log_likelihood` `(N,)` at the truths; `truths` `(N, 2)` physical."""
    tables = {}
    for label, posts in sets.items():
        for d, name in enumerate(posts[0].names):
            tables[f"{label}_axis_{name}"] = np.stack([p.axes[d] for p in posts])
        tables[f"{label}_log_likelihood"] = np.stack([p.log_likelihood for p in posts])
        if truths is not None:
            tables[f"{label}_truth_log_likelihood"] = np.array([p.truth_log_likelihood
                                                                for p in posts])
    if truths is not None:
        tables["truths"] = np.asarray(truths)
    np.savez(os.path.join(out_dir, "posteriors.npz"), **tables)


def _write_coverage(out_dir, sets) -> dict:
    """`coverage.json` and `coverage.png` of each named set of posteriors, whose truths were
    evaluated; their `Calibration.summary()`s by name."""
    calibrations = {name: posterior.calibrate(posts) for name, posts in sets.items()}
    coverage = {name: c.summary() for name, c in calibrations.items()}
    _write_json(os.path.join(out_dir, "coverage.json"), coverage)
    posterior.plot_coverage(calibrations).savefig(os.path.join(out_dir, "coverage.png"), dpi=100)
    return coverage


def _grid_summary(grid, zoom, sets) -> dict:
    """The grid part of the summary: shapes, the zoom's split and how often its region touched
    the box, and the fewest grid cells per posterior std per axis, for each named set of
    posteriors in `sets`."""
    first = sets["model"][0]
    out = {"grid_shape": list(first.probability.shape),
           "min_cells_per_std": {name: np.min([p.cells_per_std for p in posts], axis=0).tolist()
                                 for name, posts in sets.items()},
           "zoom": None}
    if zoom:
        coarse, fine = posterior.zoom_counts(grid)
        out["zoom"] = {"budget": np.broadcast_to(grid, len(coarse)).tolist(),
                       "coarse_shape": list(coarse), "fine_shape": list(fine),
                       "tail": first.zoom.tail,
                       "n_touching_box": {name: int(sum(p.zoom_touches_box for p in posts))
                                          for name, posts in sets.items()}}
    return out


def infer(model, maps, out_dir, truths=None, references=None, grid=30, chunk_size=None,
          map_batch=None, figures=10, refine=False, progress=True, zoom=True) -> dict:
    """Grid posteriors of `maps` under `model`, written to `out_dir` (module docstring).

    Args:
      model: a trained model with `.params` (`GlowParams`) and `.preprocessing`
        (`jglow.saving.load`).
      maps: raw maps `(N, H, W)`.
      out_dir: output directory (created).
      truths: physical `(N, 2)` truths, or `None`; the likelihoods are evaluated there too.
      references: `{name: log-likelihood}` of the same maps to compare against (each on its
        own grids, zoomed where its own posterior is), e.g. `{"exact": SyntheticLikelihood()}`
        or `{"baseline": SummaryLikelihood}` (`jglow.posterior.summary`); the first is drawn in
        the posterior figures.
      grid: `jglow.posterior.grid_axes` argument over the model's prior box; with `zoom`, the
        budget of evaluations per map (`jglow.posterior.zoom_counts`).
      chunk_size: conditions per chunk in `grid_log_prob` (None: its default for the backend);
        map_batch: maps per call (None: `default_map_batch`).
      figures: posterior figures drawn for the first this many maps.
      refine: also refine each grid MAP by gradient (`gradient_map`).
      progress: show progress bars of the likelihood calls.
      zoom: a coarse pass, then a fine grid per map where its posterior is (default).
    Returns:
      The summary dict (also written to `summary.json`); `summary["coverage"]` holds each
      set's calibration by name when truths are known.
    Raises:
      InputError: maps not of shape `(N, H, W)` with the model's `H, W`, or with a pixel
        that is not positive and finite.
    """
    check_maps(model, maps)
    os.makedirs(out_dir, exist_ok=True)
    box = model.preprocessing.box
    map_batch = map_batch or default_map_batch(model.params, points_per_map(grid, zoom, box))
    likelihood = posterior.ModelLikelihood(model.params, model.preprocessing, chunk_size)
    options = dict(grid=grid, box=box, map_batch=map_batch, truths=truths, zoom=zoom)
    sets = {name: posterior.grid_posteriors(fn, maps, **options,
                                            progress=f"{name} posteriors" if progress else None)
            for name, fn in {"model": likelihood, **(references or {})}.items()}
    posteriors = sets["model"]
    for i, post in enumerate(posteriors):
        estimate = (posterior.gradient_map(likelihood, maps[i], init=post.map_estimate, box=box)
                    if refine else None)
        _write_map(out_dir, i, post, None if truths is None else truths[i],
                   {name: posts[i] for name, posts in sets.items() if name != "model"},
                   estimate, i < figures)
    _write_tables(out_dir, sets, truths)
    summary = {"n_maps": len(posteriors), "out_dir": out_dir,
               **_grid_summary(grid, zoom, sets),
               "n_nonfinite": int(sum(p.n_nonfinite for p in posteriors)),
               "outside_box": posteriors[0].outside_box}
    if truths is not None and len(posteriors) >= 2:
        summary["coverage"] = _write_coverage(out_dir, sets)
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True,
                        help="workdir of a trained model (jglow.saving.load)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--map", help=".npy file of raw maps (H, W) or (N, H, W)")
    source.add_argument("--synthetic", type=int, metavar="N", help="N held-out synthetic maps")
    parser.add_argument("--params", help=".npy file of the maps' true (Ωm, σ8), (2,) or (N, 2)")
    parser.add_argument("--out", help="output directory (default WORKDIR/inference)")
    parser.add_argument("--grid", type=int, nargs="+", default=[30],
                        help="grid points per axis: one int, or one per parameter (default 30); "
                        "zoomed, the evaluations per map (30: a 10x10 coarse pass and a 28x28 "
                        "fine grid)")
    parser.add_argument("--no-zoom", action="store_true",
                        help="one plain grid over the prior box instead of a coarse pass and a "
                        "fine grid per map")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the synthetic maps")
    parser.add_argument("--box-size", type=float, default=BOX_SIZE,
                        help="map side in Mpc/h (synthetic)")
    parser.add_argument("--chunk-size", type=int, help="conditions per chunk (default: automatic)")
    parser.add_argument("--map-batch", type=int,
                        help=f"maps per likelihood call (default: {CPU_MAP_BATCH} on the CPU; on "
                        f"an accelerator, from its free memory)")
    parser.add_argument("--figures", type=int, default=10,
                        help="posterior figures for the first N maps")
    parser.add_argument("--refine", action="store_true", help="refine each MAP by gradient")
    args = parser.parse_args(argv)
    if args.params and args.synthetic:
        parser.error("--params goes with --map; synthetic maps come with their parameters")
    if len(args.grid) not in (1, len(PRIOR_BOX)):
        parser.error(f"--grid {' '.join(map(str, args.grid))}: expected one count, or one per "
                     f"parameter ({len(PRIOR_BOX)})")
    cli.check_at_least({**vars(args), "grid": min(args.grid)},
                       {"synthetic": 1, "grid": 2 if args.no_zoom else 3, "chunk_size": 1,
                        "map_batch": 1, "figures": 0})
    return args


def run(argv=None) -> dict:
    """The command without its exit status: parse `argv`, write the posteriors (module
    docstring), print the summary and the held-out calibration.

    Returns the summary dict (also in `summary.json`); raises the errors that `main` reports
    (`cli.INPUT_ERRORS`).
    """
    args = parse_args(argv)
    model = load(args.model)
    if args.synthetic:
        height, width, _ = model.params.config.image_shape
        if height != width:
            raise cli.UsageError(f"--synthetic {args.synthetic}: synthetic maps are square; the "
                                 f"model's maps are {height}x{width}")
        held_out = synthetic_maps(args.synthetic, 1, size=height, box_size=args.box_size,
                                  seed=args.seed)
        maps, truths = np.asarray(held_out.maps), np.asarray(held_out.params, np.float64)
    else:
        maps, truths = load_maps(args.map, args.params, model.preprocessing.box)
        check_maps(model, maps, f"--map {args.map}")
        for line in inputs.range_warnings(model.preprocessing, maps, f"--map {args.map}"):
            print(line, file=sys.stderr)
    grid = args.grid[0] if len(args.grid) == 1 else tuple(args.grid)
    references = {"exact": posterior.SyntheticLikelihood(args.box_size)} if args.synthetic else {}
    baseline, temperature = report.saved_baseline(args.model), report.saved_temperature(args.model)
    if baseline is not None:
        references["baseline"] = baseline
    if temperature is not None:
        references["recalibrated"] = TemperedLikelihood(
            posterior.ModelLikelihood(model.params, model.preprocessing), temperature)
    summary = infer(model, maps, args.out or os.path.join(args.model, "inference"), truths,
                    references, grid, args.chunk_size, args.map_batch, args.figures, args.refine,
                    zoom=not args.no_zoom)
    if summary["n_nonfinite"]:
        print(f"warning: {summary['n_nonfinite']} non-finite log-likelihoods on the grids "
              f"(given zero posterior mass)", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    lines, warnings = report.held_out_calibration(args.model)
    print("\n".join(lines))
    for warning in warnings:
        print(warning, file=sys.stderr)
    return summary


@cli.command
def main(argv=None) -> int:
    """The command line: 0 when the posteriors are written, 2 when refused (`cli`)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
