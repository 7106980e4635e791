"""`python -m train.evaluate`: is the emulator right? One report of a trained model.

    python -m train.evaluate --model WORKDIR [--data synthetic|hi-like|PATH] [--out DIR] [options]

The held-out maps are the test split of the data (`jglow.data.recipe`: split by simulation with
`SPLIT_SEED`; never trained on, never used to choose the model), by default the run's own data
as recorded in `WORKDIR/run.json`; `--data` evaluates on other data with the same split. All
statistics are of `log10` of the raw maps (dex), power spectra `P(k)` in Pylians conventions over
the 25 Mpc/h box (`jglow.stats`). Samples are drawn at temperature 1.

Writes to `--out` (default `WORKDIR/evaluation`):

* `report.json`: every number (non-finite numbers as null), and `report.md`, the figures with
  their numbers;
* figures: `samples.png` (held-out maps beside samples at the same parameters), `power.png` and
  `power_ratio.png` (marginal P(k) mean ± std and the ratios per k), `pixel_pdf.png`, `r2.png`
  (per-simulation R² over the parameter plane), `worst_power.png` (the worst simulation's P(k));
* `inference/`: the output of `train.infer` on `--n-maps` held-out maps spread over the
  simulations (posterior figures of the first `--figures`, coverage figure, per-map JSON), on
  zoomed grids of the budget of a `--grid`×`--grid` grid (`--no-zoom`: the plain grid).

Sections of the report:

* marginal: all held-out maps against one sample per map at its parameters: P(k) mean and
  standard deviation with their ratios per k, the HIGlow R² of the mean, the pixel PDF and its
  Kolmogorov–Smirnov distance;
* conditional: per held-out simulation, its maps against `--samples-per-sim` samples at its
  parameters: the R² of the mean P(k) (median, mean, 10th percentile, fraction > 0.9, the worst
  simulations with their parameters) and the fraction of k bins where the sample mean lies within
  2 standard errors of the truth;
* likelihood: held-out NLL in bits/dim (on synthetic data beside the exact NLL, and the gap);
* inference: 68% / 95% HPD coverage over `--n-maps` maps with their 99% binomial intervals, the
  expected-coverage curve (coverage at every level) with its band and largest deviation, the
  marginal rank histograms, posterior-mean error and width in the parameters' units (on
  synthetic data for the model and the exact likelihood); the calibration lines are printed
  (with a `warning:` on stderr when outside the band), and `python -m train.infer` prints them
  from `report.json` beside its posteriors;
* health: non-finite samples (counted, left out of the statistics, never hidden) and the
  reconstruction error `decode(encode(x)) − x` of every held-out map, both in the headline,
  with a `warning:` on stderr when the round trip exceeds
  `jglow.train.metrics.ROUND_TRIP_TOLERANCE` or a sample is not finite (an ill-conditioned
  inverse, see `jglow.model`).

On synthetic data the generator's own samples go through the same marginal and conditional
statistics: the score of a perfect emulator with this many maps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import jglow
from jglow import backend, posterior
from jglow.batching import padded_rows
from jglow.compilation import jit
from jglow.data import (BOX_SIZE, SPLIT_FRACTIONS, SPLIT_SEED, MapSet, load_mapset,
                        sample_synthetic, split_by_simulation)
from jglow.data.recipe import EXACT_LIKELIHOOD
from jglow.posterior.density import parameter_names
from jglow.posterior.recalibration import (TemperedLikelihood, coverage_distance,
                                           credible_levels, fit_temperature)
from jglow.posterior.summary import SummaryLikelihood, fit_summary_likelihood
from jglow.saving import TrainedModel
from jglow.stats import (ks_distance, mean_std_power, pixel_pdfs, power_spectrum, r2_score,
                         score_summary, spectrum_ratios, within_standard_errors)
from jglow.train import cli, figures, infer, inputs, report
from jglow.train.checkpoints import RUN_FILE, read_run_config
from jglow.train.config import TrainConfig, UsageError
from jglow.train.data import Split, exact_nll
from jglow.train.state import bits_per_dim

R2_THRESHOLD = 0.9
N_STANDARD_ERRORS = 2.0
WORST_SIMS = 5
CPU_BATCH = 256
"""Maps per model call by default on the CPU."""
ACCELERATOR_MAX_BATCH = 4096
"""On an accelerator, the most maps per model call by default whatever the memory."""
MIN_RECALIBRATION_MAPS = 10
"""The fewest validation maps a likelihood temperature is fitted on."""
MEASURED_MAPS = 8
"""Maps of the sampling program whose memory gives the memory per map."""


class Options(NamedTuple):
    """The command's options (see `parse_args` for each one's meaning)."""

    model: str
    data: Optional[str] = None
    out: Optional[str] = None
    n_maps: int = 300
    samples_per_sim: int = 50
    grid: int = 30
    figures: int = 3
    batch: Optional[int] = None
    seed: int = 0
    progress: bool = True
    zoom: bool = True
    recalibrate: bool = True


# --- inputs ----------------------------------------------------------------------------------

def run_config(workdir) -> TrainConfig:
    """The `TrainConfig` recorded in `workdir/run.json` by `python -m train.main`."""
    path = pathlib.Path(workdir) / RUN_FILE
    if not path.is_file():
        raise UsageError(f"--model {workdir}: {path} not found; expected the workdir of a "
                         f"training run (python -m train.main --workdir ...), whose run.json "
                         f"names the data and whose test split gives the held-out maps")
    return read_run_config(path)


class HeldOut(NamedTuple):
    """The data an evaluation uses besides the model.

    Attributes:
      test: the test split in model space (the maps judged).
      train: the training maps (`MapSet`), to fit the summary-statistic baseline.
      validation: the validation maps (`MapSet`), to fit a recalibration.
    """

    test: Split
    train: MapSet
    validation: MapSet


def held_out(config: TrainConfig, model: TrainedModel) -> HeldOut:
    """The splits of the data `config.data`, split by simulation as the run split it; the test
    split in model space under `model.preprocessing`."""
    mapset = load_mapset(config.data, config.model.image_shape[0], config.n_sims)
    train, validation, test = split_by_simulation(mapset, SPLIT_FRACTIONS, SPLIT_SEED)
    sims, counts = np.unique(test.sim, return_counts=True)
    if not len(sims) or counts.min() < 2:
        raise UsageError(f"{config.data}: the test split holds {len(test)} maps of {len(sims)} "
                         f"simulations; expected at least one simulation of at least 2 maps")
    maps = np.asarray(test.maps)
    x = np.asarray(model.preprocessing.forward_maps(maps))
    z = np.asarray(model.preprocessing.forward_params(test.params))
    split = Split(x, z, maps, np.asarray(test.params), np.asarray(test.sim))
    return HeldOut(split, train, validation)


def fitted_temperature(model: TrainedModel, validation: MapSet, options: Options,
                       out: pathlib.Path) -> dict:
    """A likelihood temperature (`jglow.posterior.recalibration`) fitted on the grid
    posteriors of `options.n_maps` validation maps spread over the validation simulations,
    saved to `out / report.RECALIBRATION_FILE` for `train.infer`. Returns its record:
    `temperature`, `n_maps` and the validation coverage distance before and after; None (and
    nothing saved) with fewer than `MIN_RECALIBRATION_MAPS` validation maps."""
    chosen = spread_maps(validation.sim, options.n_maps)
    if len(chosen) < MIN_RECALIBRATION_MAPS:
        return None
    maps, truths = np.asarray(validation.maps[chosen]), validation.params[chosen]
    likelihood = posterior.ModelLikelihood(model.params, model.preprocessing)
    posteriors = posterior.grid_posteriors(
        likelihood, maps, options.grid, model.preprocessing.box,
        map_batch=infer.default_map_batch(model.params, infer.points_per_map(
            options.grid, options.zoom, model.preprocessing.box)),
        truths=np.asarray(truths, np.float64), zoom=options.zoom,
        progress="validation posteriors" if options.progress else None)
    temperature = fit_temperature(posteriors)
    record = {"temperature": temperature, "fitted_on": "validation", "n_maps": len(chosen),
              "distance_before": coverage_distance(credible_levels(posteriors)),
              "distance_after": coverage_distance(credible_levels(posteriors, temperature))}
    (out / report.RECALIBRATION_FILE).write_text(json.dumps(record, indent=2))
    return record


def fitted_baseline(train: MapSet, box, out: pathlib.Path) -> SummaryLikelihood:
    """The summary-statistic baseline (`jglow.posterior.summary`) fitted on the training maps
    `train` over the prior `box`, saved to `out / report.BASELINE_FILE` for `train.infer`."""
    baseline = fit_summary_likelihood(np.asarray(train.maps), train.params, box, BOX_SIZE)
    baseline.save(out / report.BASELINE_FILE)
    return baseline


def spread_maps(sim, n) -> np.ndarray:
    """Indices of `n` maps taken round-robin over the simulations `sim (N,)`: the first map of
    every simulation (in simulation order), then the second of each, and so on."""
    order = np.argsort(sim, kind="stable")
    sorted_sim = sim[order]
    rank = np.empty(len(sim), np.int64)
    rank[order] = np.arange(len(sim)) - np.searchsorted(sorted_sim, sorted_sim)
    return np.lexsort((sim, rank))[:n]


# --- model calls in fixed-shape batches ------------------------------------------------------

def default_batch(params) -> int:
    """Maps per model call when `--batch` is not given: `CPU_BATCH` on the CPU
    (`jglow.backend.on_cpu`); on an accelerator as many as fill `jglow.backend.MEMORY_FRACTION`
    of the device's free memory at the sampling program's memory per map
    (`sampling_bytes_per_map`), at most `ACCELERATOR_MAX_BATCH` (`CPU_BATCH` where the device
    reports no memory limit)."""
    if backend.on_cpu():
        return CPU_BATCH
    return backend.items_per_call(sampling_bytes_per_map(params), ACCELERATOR_MAX_BATCH,
                                  CPU_BATCH)


def sampling_bytes_per_map(params) -> float:
    """Device memory per map of `jglow.sample` for `params` (a `GlowParams` or
    `EnsembleParams`), in bytes: the scratch and output of the program for `MEASURED_MAPS`
    maps, divided by that count (the constant part counted in, so this errs high). Sampling
    stands for the model calls of the evaluation (log_prob, encode, decode: the same flow at
    the same batch). Compiled once per process for each parameter structure; nothing is run."""
    return _sampling_bytes_per_map(backend.signature(params))


@functools.lru_cache(maxsize=4)
def _sampling_bytes_per_map(params_signature) -> float:
    params = backend.from_signature(params_signature)
    z = jax.ShapeDtypeStruct((MEASURED_MAPS, params.config.cond_dim), jnp.float32)
    program = jit(lambda p, key, conditions: jglow.sample(p, key, conditions))
    return backend.program_bytes(program, params, jax.random.key(0), z) / MEASURED_MAPS


def in_batches(fn, arrays, batch, desc, progress) -> np.ndarray:
    """`fn(batch_index, *rows)` over consecutive batches of `arrays` (each `(N, ...)`).

    Every call sees `min(batch, N)` rows (the last batch padded by repeating the last row), so
    the model compiles once; the outputs, `(rows, ...)`, are trimmed and concatenated to
    `(N, ...)` numpy.
    """
    n = len(arrays[0])
    batch = min(batch, n)
    outputs = []
    starts = range(0, n, batch)
    for index, start in enumerate(tqdm(starts, desc=desc, disable=not progress, unit="batch",
                                       leave=False, file=sys.stderr)):
        rows = padded_rows(start, batch, n)
        outputs.append(np.asarray(fn(index, *(a[rows] for a in arrays)))[:n - start])
    return np.concatenate(outputs)


def draw_samples(params, key, z, batch, desc, progress) -> np.ndarray:
    """One sample `x` per row of `z (N, D)` at temperature 1: `(N, H, W, C)` float32."""
    return in_batches(lambda i, rows: jglow.sample(params, jax.random.fold_in(key, i), rows),
                      (z,), batch, desc, progress)


# --- statistics (pure) -----------------------------------------------------------------------

def pixel_moments(values) -> dict:
    """Mean, standard deviation and 1st/50th/99th percentiles of the finite `values` (dex)."""
    values = values[np.isfinite(values)]
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    return {"mean": float(values.mean()), "std": float(values.std()), "p1": float(p1),
            "p50": float(p50), "p99": float(p99)}


def marginal_statistics(k, pk_true, pk_gen, log_true, log_gen) -> dict:
    """Marginal comparison of spectra `pk_* (N_*, K)` at wavenumbers `k (K,)` h/Mpc and of the
    `log10` pixel values `log_* (N_*, H, W)` dex: per-k means, standard deviations and ratios
    (generated / true, (Mpc/h)²), the R² of the mean P(k), pixel moments, PDFs and KS distance."""
    mean_true, std_true = mean_std_power(pk_true)
    mean_gen, std_gen = mean_std_power(pk_gen)
    mean_ratio, std_ratio = spectrum_ratios(pk_gen, pk_true)
    edges, density_true, density_gen = pixel_pdfs(log_true, log_gen)
    return {"n_true": len(pk_true), "n_gen": len(pk_gen), "r2": float(r2_score(pk_gen, pk_true)),
            "power": {"k": k, "mean_true": mean_true, "mean_gen": mean_gen,
                      "mean_ratio": mean_ratio, "std_true": std_true, "std_gen": std_gen,
                      "std_ratio": std_ratio},
            "pixels": {"true": pixel_moments(log_true), "gen": pixel_moments(log_gen),
                       "ks_distance": ks_distance(log_true, log_gen),
                       "pdf_edges": edges, "pdf_true": density_true, "pdf_gen": density_gen}}


def per_simulation_scores(pk_true, sim_true, pk_gen, sim_gen, sims) -> tuple:
    """For each simulation of `sims (S,)`: the R² of the mean P(k) of its generated spectra
    (rows of `pk_gen` with `sim_gen == s`) against its true ones, and the fraction of k bins
    within `N_STANDARD_ERRORS` standard errors. Two `(S,)` float64 arrays; NaN for a simulation
    with fewer than 2 generated spectra."""
    r2, within = np.full(len(sims), np.nan), np.full(len(sims), np.nan)
    for i, s in enumerate(sims):
        true, gen = pk_true[sim_true == s], pk_gen[sim_gen == s]
        if len(gen) >= 2:
            r2[i] = r2_score(gen, true)
            within[i] = within_standard_errors(gen, true, N_STANDARD_ERRORS)
    return r2, within


def conditional_statistics(pk_true, sim_true, pk_gen, sim_gen, sims, sim_params) -> dict:
    """Per-simulation scores (`per_simulation_scores`), their summaries and the
    `WORST_SIMS` simulations of lowest R² with their physical parameters `sim_params (S, D)`."""
    r2, within = per_simulation_scores(pk_true, sim_true, pk_gen, sim_gen, sims)
    worst = np.argsort(np.where(np.isnan(r2), -np.inf, r2), kind="stable")[:WORST_SIMS]
    names = parameter_names(sim_params.shape[1])
    return {"n_sims": len(sims), "r2": score_summary(r2, R2_THRESHOLD),
            "within_2se": score_summary(within, R2_THRESHOLD),
            "worst": [{"sim": int(sims[i]), **dict(zip(names, map(float, sim_params[i]))),
                       "r2": float(r2[i]), "within_2se": float(within[i]),
                       "n_gen": int(np.sum(sim_gen == sims[i]))} for i in worst],
            "per_sim": {"sim": sims, "params": sim_params, "r2": r2, "within_2se": within}}


def posterior_errors(records, truths) -> dict:
    """Posterior-mean error and width, per parameter, in the parameters' units, from the
    `summary()` dicts `records` of N grid posteriors with physical `truths (N, D)`: bias and
    RMS of `mean − truth`, mean posterior standard deviation."""
    means = np.array([r["mean"] for r in records])
    stds = np.array([r["std"] for r in records])
    errors = means - truths
    return {name: {"bias": float(e.mean()), "rmse": float(np.sqrt(np.mean(e**2))),
                   "mean_std": float(s.mean())}
            for name, e, s in zip(records[0]["names"], errors.T, stds.T)}


def coverage_table(calibration_summary) -> dict:
    """`{level: {empirical, interval, is_nominal}}` from a `Calibration.summary()`."""
    return {level: {key: entry[key] for key in ("empirical", "interval", "is_nominal")}
            for level, entry in calibration_summary["coverage"].items()}


def calibration_entry(calibration_summary) -> dict:
    """The calibration numbers of the report from a `Calibration.summary()`: `coverage`
    (`coverage_table`), `max_deviation`, `inside_band`, `expected_coverage` and
    `rank_histograms`."""
    return {"coverage": coverage_table(calibration_summary),
            **{key: calibration_summary[key] for key in
               ("max_deviation", "inside_band", "expected_coverage", "rank_histograms")}}


# --- the sections ----------------------------------------------------------------------------

class Context(NamedTuple):
    """What every section needs: the model, held-out maps, options, output folder, and the
    likelihoods the model's posteriors are compared with (`{"exact": …}` on the synthetic
    data, `{"baseline": …}` always)."""

    model: TrainedModel
    held: Split
    options: Options
    out: pathlib.Path
    synthetic: bool
    references: dict


def sample_sets(ctx: Context) -> dict:
    """Model samples (as `log10` maps, dex) at temperature 1: one per held-out map
    (`marginal`), and `samples_per_sim` per held-out simulation (`conditional`, of simulations
    `sim`), drawn in one pass (one compilation)."""
    held, options = ctx.held, ctx.options
    sims, first = np.unique(held.sim, return_index=True)
    z = np.concatenate([held.z, np.repeat(held.z[first], options.samples_per_sim, axis=0)])
    x = draw_samples(ctx.model.params, jax.random.key(options.seed), z, options.batch,
                     "samples", options.progress)
    log_maps = figures.log10_maps(ctx.model.preprocessing, x)
    return {"marginal": log_maps[:len(held.z)], "conditional": log_maps[len(held.z):],
            "sim": np.repeat(sims, options.samples_per_sim), "sims": sims,
            "sim_params": held.params[first]}


def exact_sample_sets(ctx: Context, samples: dict) -> dict:
    """Like `sample_sets`, drawn from the synthetic generator itself (a perfect emulator)."""
    size = ctx.held.maps.shape[1]
    seed = np.random.SeedSequence([ctx.options.seed, 6])
    marginal_seed, conditional_seed = seed.spawn(2)
    marginal = sample_synthetic(ctx.held.params, 1, size, BOX_SIZE, marginal_seed)
    conditional = sample_synthetic(samples["sim_params"], ctx.options.samples_per_sim, size,
                                   BOX_SIZE, conditional_seed)
    return dict(samples, marginal=np.log10(marginal), conditional=np.log10(conditional))


def spectra_of(log_maps) -> tuple:
    """`(k (K,), pk (N, K))` numpy of `log10` maps `(N, n, n)` (h/Mpc, (Mpc/h)² dex²)."""
    k, pk, _ = power_spectrum(log_maps, BOX_SIZE)
    return np.asarray(k), np.asarray(pk)


class SampleSpectra(NamedTuple):
    """The finite samples of a `sample_sets` dict and their spectra (non-finite ones left out).

    Attributes:
      marginal_log: `(N_m, H, W)` dex, finite one-per-held-out-map samples.
      marginal_pk: `(N_m, K)` their spectra.
      conditional_pk: `(N_c, K)` spectra of the finite per-simulation samples.
      conditional_sim: `(N_c,)` their simulation indices.
    """

    marginal_log: np.ndarray
    marginal_pk: np.ndarray
    conditional_pk: np.ndarray
    conditional_sim: np.ndarray


def sample_spectra(samples: dict) -> SampleSpectra:
    """The `SampleSpectra` of `samples` (`sample_sets` or `exact_sample_sets`)."""
    finite_marginal = figures.finite_maps(samples["marginal"])
    finite_conditional = figures.finite_maps(samples["conditional"])
    marginal_log = samples["marginal"][finite_marginal]
    return SampleSpectra(marginal_log, spectra_of(marginal_log)[1],
                         spectra_of(samples["conditional"][finite_conditional])[1],
                         samples["sim"][finite_conditional])


def spectral_sections(k, held_log, held_pk, held: Split, samples: dict,
                      spectra: SampleSpectra) -> dict:
    """`{"marginal", "conditional"}` statistics of the finite samples against the held-out maps
    (`log10` maps `held_log (N, H, W)`, spectra `held_pk (N, K)` at `k (K,)`)."""
    return {"marginal": marginal_statistics(k, held_pk, spectra.marginal_pk, held_log,
                                            spectra.marginal_log),
            "conditional": conditional_statistics(held_pk, held.sim, spectra.conditional_pk,
                                                  spectra.conditional_sim, samples["sims"],
                                                  samples["sim_params"])}


def likelihood_section(ctx: Context) -> dict:
    """Held-out NLL in nats per map and bits/dim (and the exact NLL and gap on synthetic data)."""
    params, held = ctx.model.params, ctx.held
    nll = in_batches(lambda _, x, z: -jglow.log_prob(params, x, z), (held.x, held.z),
                     ctx.options.batch, "held-out NLL", ctx.options.progress)
    dim = ctx.model.config.dim
    section = {"n_maps": len(nll), "n_nonfinite": int(np.sum(~np.isfinite(nll))),
               "nll_nats_per_map": float(nll.mean()), "bits_per_dim": bits_per_dim(nll.mean(), dim)}
    if ctx.synthetic:
        exact = float(exact_nll(held, ctx.model.preprocessing).mean())
        section.update(exact_nll_nats_per_map=exact, exact_bits_per_dim=bits_per_dim(exact, dim),
                       gap_bits_per_dim=bits_per_dim(nll.mean() - exact, dim))
    return section


def inference_section(ctx: Context) -> dict:
    """Grid posteriors of `n_maps` held-out maps by `train.infer`, beside those of the
    reference likelihoods (`Context.references`): HPD coverage, posterior-mean errors and
    widths."""
    chosen = spread_maps(ctx.held.sim, ctx.options.n_maps)
    maps, truths = ctx.held.maps[chosen], ctx.held.params[chosen].astype(np.float64)
    out = ctx.out / "inference"
    grid, zoom = ctx.options.grid, ctx.options.zoom
    names = ["model", *ctx.references]
    if ctx.options.progress:
        tqdm.write(f"posteriors of {len(chosen)} maps on {'zoomed grids of ' if zoom else 'a '}"
                   f"{grid}×{grid}{' evaluations' if zoom else ' grid'} "
                   f"({', '.join(names)})...", file=sys.stderr)
    summary = infer.infer(ctx.model, maps, str(out), truths, ctx.references, grid,
                          figures=ctx.options.figures, progress=ctx.options.progress, zoom=zoom)
    records = [json.loads((out / f"map_{i:04d}.json").read_text()) for i in range(len(chosen))]
    return {"n_maps": len(chosen), "grid": grid, "grid_shape": summary["grid_shape"],
            "zoom": summary["zoom"], "min_cells_per_std": summary["min_cells_per_std"],
            "n_nonfinite": summary["n_nonfinite"],
            "figures": [f"inference/map_{i:04d}.png" for i in range(min(ctx.options.figures,
                                                                        len(chosen)))],
            **{name: {**calibration_entry(summary["coverage"][name]),
                      "errors": posterior_errors([r[name] for r in records], truths)}
               for name in names}}


def single_models(params) -> list:
    """The `GlowParams` of each member of an ensemble, or `[params]` for one model."""
    if isinstance(params, jglow.EnsembleParams):
        return [jglow.ensemble.member(params, k) for k in range(params.size)]
    return [params]


def reconstruction_section(ctx: Context) -> dict:
    """`decode(encode(x)) − x` on the held-out maps: largest and RMS error in model space, and
    the largest error of the `log10` maps in dex (of an ensemble: the worst member's)."""
    held, pre = ctx.held, ctx.model.preprocessing
    worst = {"max_abs_model_space": 0.0, "rms_model_space": 0.0, "max_abs_dex": 0.0}
    for params in single_models(ctx.model.params):
        rebuilt = in_batches(lambda _, x, z: jglow.decode(params, jglow.encode(params, x, z), z),
                             (held.x, held.z), ctx.options.batch, "reconstruction",
                             ctx.options.progress)
        error = rebuilt - held.x
        dex = figures.log10_maps(pre, rebuilt) - figures.log10_maps(pre, held.x)
        member = {"max_abs_model_space": float(np.max(np.abs(error))),
                  "rms_model_space": float(np.sqrt(np.mean(error**2))),
                  "max_abs_dex": float(np.max(np.abs(dex)))}
        worst = {key: max(worst[key], value) for key, value in member.items()}
    return worst


def health_section(samples: dict, reconstruction: dict) -> dict:
    """Non-finite model samples at temperature 1 (counted over all drawn) and reconstruction."""
    flags = np.concatenate([~figures.finite_maps(samples["marginal"]),
                            ~figures.finite_maps(samples["conditional"])])
    return {"n_samples": len(flags), "n_nonfinite": int(flags.sum()),
            "fraction_nonfinite": float(flags.mean()), "temperature": 1.0,
            "reconstruction": reconstruction}


# --- the command -----------------------------------------------------------------------------

def check_options(options: Options) -> None:
    """Refuse option values the statistics cannot use, naming the value and what is expected."""
    cli.check_at_least(options._asdict(), {"n_maps": 2, "samples_per_sim": 2,
                                           "grid": 3 if options.zoom else 2, "figures": 0,
                                           "batch": 1})


def load_inputs(options: Options) -> tuple:
    """`(model, config with the evaluated data, HeldOut)` for `options`; held-out maps mostly
    outside the range the model was trained on are warned of on stderr
    (`jglow.train.inputs.range_warnings`)."""
    workdir = pathlib.Path(options.model)
    if not workdir.is_dir():
        raise UsageError(f"--model {options.model!r}: no such directory; expected the workdir "
                         f"of a training run (python -m train.main --workdir ...)")
    model = jglow.load(workdir)
    config = run_config(workdir)
    if config.model != model.config:
        raise UsageError(f"--model {workdir}: run.json describes {config.model} but the saved "
                         f"model is {model.config}")
    if options.data is not None:
        config = dataclasses.replace(config, data=options.data)
    data = held_out(config, model)
    for line in inputs.range_warnings(model.preprocessing, data.test.maps,
                                      f"held-out maps of {config.data}"):
        print(line, file=sys.stderr)
    return model, config, data


def command_line(options: Options) -> str:
    """The command that reproduces `options` (options at their defaults left out)."""
    defaults, parts = Options(options.model), ["python -m train.evaluate --model", options.model]
    for name, value in options._asdict().items():
        if name != "model" and value != getattr(defaults, name):
            switch = name in ("progress", "zoom", "recalibrate")  # turned off by --no-NAME
            flag = "--" + ("no-" + name if switch else name.replace("_", "-"))
            parts += [flag] if switch else [flag, str(value)]
    return " ".join(parts)


def evaluate(options: Options) -> dict:
    """Write the report of `options.model` (module docstring); returns the report dict."""
    check_options(options)
    started = time.perf_counter()
    model, config, data = load_inputs(options)
    held = data.test
    command = command_line(options)
    options = options._replace(batch=options.batch or default_batch(model.params))
    out = pathlib.Path(options.out or pathlib.Path(options.model) / "evaluation")
    out.mkdir(parents=True, exist_ok=True)
    timing = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        timing[name] = time.perf_counter() - start
        return result

    synthetic = config.data == EXACT_LIKELIHOOD
    references = {"exact": posterior.SyntheticLikelihood(BOX_SIZE)} if synthetic else {}
    references["baseline"] = timed("baseline_fit", fitted_baseline, data.train,
                                   model.preprocessing.box, out)
    recalibration = None
    if options.recalibrate:
        recalibration = timed("recalibration", fitted_temperature, model, data.validation,
                              options, out)
    if recalibration is not None:
        references["recalibrated"] = TemperedLikelihood(
            posterior.ModelLikelihood(model.params, model.preprocessing),
            recalibration["temperature"])
    ctx = Context(model, held, options, out, synthetic, references)
    samples = timed("sampling", sample_sets, ctx)
    held_log = figures.log10_maps(model.preprocessing, held.x)
    k, held_pk = spectra_of(held_log)
    spectra = timed("spectra", sample_spectra, samples)
    sections = spectral_sections(k, held_log, held_pk, held, samples, spectra)
    exact = None
    if ctx.synthetic:
        exact_samples = exact_sample_sets(ctx, samples)
        exact = timed("exact_generator", spectral_sections, k, held_log, held_pk, held,
                      exact_samples, sample_spectra(exact_samples))
    result = {
        "model": str(options.model), "data": config.data, "out": str(out),
        "command": command,
        "params_sha256": report.params_sha256(options.model),
        "held_out": {"split": "test", "n_sims": len(samples["sims"]), "n_maps": len(held.x)},
        "options": options._asdict(), **sections, "exact_generator": exact,
        "likelihood": timed("likelihood", likelihood_section, ctx),
        "inference": timed("inference", inference_section, ctx),
        "recalibration": recalibration,
        "health": timed("health", lambda: health_section(samples, reconstruction_section(ctx))),
    }
    timed("figures", report.write_figures, out, result, held, held_log, held_pk, samples, spectra)
    result["timing_s"] = dict(timing, total=time.perf_counter() - started)
    report.write(out, result)
    return result


def parse_args(argv=None) -> Options:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", required=True, help="workdir of a training run (python -m train.main)")
    add("--data", help="a simulator ('synthetic', 'hi-like') or a CAMELS maps path; its test "
        "split is evaluated (default: the run's own data)")
    add("--out", help="output folder (default: WORKDIR/evaluation)")
    defaults = Options._field_defaults
    add("--n-maps", type=int, default=defaults["n_maps"],
        help="held-out maps for posteriors and coverage (default: %(default)s)")
    add("--samples-per-sim", type=int, default=defaults["samples_per_sim"],
        help="samples per held-out simulation (default: %(default)s)")
    add("--grid", type=int, default=defaults["grid"],
        help="posterior grid points per parameter; zoomed, the evaluations per map (30: a "
        "10x10 coarse pass and a 28x28 fine grid) (default: %(default)s)")
    add("--figures", type=int, default=defaults["figures"],
        help="posterior figures drawn (default: %(default)s)")
    add("--batch", type=int, default=defaults["batch"],
        help=f"maps per model call (default: {CPU_BATCH} on the CPU; on an accelerator, from "
        f"its free memory)")
    add("--seed", type=int, default=defaults["seed"],
        help="seed of the samples (default: %(default)s)")
    add("--no-progress", action="store_true", help="no progress bars")
    add("--no-recalibrate", action="store_true", help="do not fit a likelihood temperature on "
        "validation maps (the recalibrated posteriors are reported beside the model's)")
    add("--no-zoom", action="store_true", help="posteriors on the plain grid over the prior box "
        "instead of a coarse pass and a fine grid per map")
    args = parser.parse_args(argv)
    return Options(args.model, args.data, args.out, args.n_maps, args.samples_per_sim,
                   args.grid, args.figures, args.batch, args.seed, not args.no_progress,
                   not args.no_zoom, not args.no_recalibrate)


@cli.command
def main(argv=None) -> int:
    """The command line: 0 when the report is written, 2 when the request is refused (`cli`)."""
    result = evaluate(parse_args(argv))
    print(report.headline(result))
    for warning in report.warnings_of(result):
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
