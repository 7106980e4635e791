"""The files of `python -m train.evaluate`: figures (small PNGs), `report.json` and `report.md`.

`write_figures` draws from the evaluation's arrays, reusing the trainer's sample-grid and P(k)
figures (`train.figures`); `write` turns the result dict into JSON (arrays as lists, non-finite
numbers as null) and a Markdown page that shows every figure with its numbers.
"""

from __future__ import annotations

import json
import pathlib

import matplotlib.ticker
import numpy as np

from jglow.posterior.summary import SummaryLikelihood
from jglow.saving import CONFIG_FILE
from jglow.train import figures
from jglow.train.figures import DPI, plt
from jglow.train.metrics import inverse_problems, json_safe

MODEL_COLOUR, EXACT_COLOUR = "C1", "0.4"
LIKELIHOOD_LABELS = {"model": "calibration", "exact": "exact likelihood",
                     "baseline": "summary-statistic baseline",
                     "recalibrated": "recalibrated model (temperature fitted on validation maps)"}
"""The likelihoods an evaluation may hold, in the order reported, with their labels."""
BASELINE_FILE = "baseline.json"
"""The fitted summary-statistic baseline in `WORKDIR/evaluation` (`SummaryLikelihood.save`)."""
RECALIBRATION_FILE = "recalibration.json"
"""The likelihood temperature fitted on validation maps, in `WORKDIR/evaluation`."""


# --- figures ---------------------------------------------------------------------------------

def _ratio_figure(path, power, exact_power):
    """Marginal P(k) ratios (samples / held-out) of the mean and the std against k."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.axhline(1.0, color="k", lw=0.8)
    for key, style in (("mean_ratio", "-"), ("std_ratio", "--")):
        name = key.split("_")[0]
        ax.plot(power["k"], power[key], style, color=MODEL_COLOUR, label=f"model, {name}")
        if exact_power is not None:
            ax.plot(exact_power["k"], exact_power[key], style, color=EXACT_COLOUR, lw=0.8,
                    label=f"exact generator, {name}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("k (h/Mpc)")
    ax.set_ylabel("samples / held-out")
    ax.set_title("marginal P(k) of log10 maps: ratios per k", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _pdf_figure(path, pixels):
    """Pixel PDFs of the log10 maps, held-out against samples."""
    edges = np.asarray(pixels["pdf_edges"])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.stairs(pixels["pdf_true"], edges, label="held-out maps", color="C0")
    ax.stairs(pixels["pdf_gen"], edges, label="samples", color=MODEL_COLOUR)
    ax.set_yscale("log")
    ax.set_xlabel("log10 pixel value (dex)")
    ax.set_ylabel("density")
    ax.set_title(f"pixel PDF, KS distance {pixels['ks_distance']:.3f}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _r2_figure(path, per_sim, exact_per_sim, names):
    """Per-simulation R²: histogram (model and exact generator) and over the parameter plane.
    Scores below −1 are drawn at −1."""
    sets = [(np.asarray(per_sim["r2"], np.float64), "model", MODEL_COLOUR)]
    if exact_per_sim is not None:
        sets.append((np.asarray(exact_per_sim["r2"], np.float64), "exact generator",
                     EXACT_COLOUR))
    low = max(-1.0, min(np.nanmin(scores) for scores, _, _ in sets) - 0.05)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for scores, label, colour in sets:
        left.hist(np.clip(scores, low, 1.0), np.linspace(low, 1.0, 31), histtype="step",
                  color=colour, label=label)
    left.set_xlabel("R² of the mean P(k) per simulation")
    left.set_ylabel("simulations")
    left.legend(fontsize=7)
    params = np.asarray(per_sim["params"])
    points = right.scatter(params[:, 0], params[:, 1], c=np.clip(sets[0][0], low, 1.0),
                           vmin=low, vmax=1.0, cmap="viridis", s=18)
    fig.colorbar(points, ax=right, label="R² (model)")
    right.set_xlabel(names[0])
    right.set_ylabel(names[1])
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def write_figures(out, result, held, held_log, held_pk, samples, spectra) -> None:
    """Draw the report's figures into `out`.

    Args:
      result: the evaluation's result dict (arrays not yet converted).
      held: the held-out `train.data.Split`; held_log: its `log10` maps `(N, H, W)` dex;
        held_pk: their spectra `(N, K)`.
      samples: the model's `sample_sets` dict; spectra: its `SampleSpectra`.
    """
    out = pathlib.Path(out)
    chosen = figures.choose(held)
    health = result["health"]
    note = f"temperature 1, {health['n_nonfinite']} of {health['n_samples']} samples non-finite"
    figures.samples_figure(out / "samples.png", held_log[chosen.grid],
                            samples["marginal"][chosen.grid], held.params[chosen.grid[:, 0]],
                            note)
    power = result["marginal"]["power"]
    figures.power_figure(out / "power.png", np.asarray(power["k"]), held_pk,
                          spectra.marginal_pk, "marginal: every held-out map vs one sample each")
    exact = result["exact_generator"]
    _ratio_figure(out / "power_ratio.png", power, exact and exact["marginal"]["power"])
    _pdf_figure(out / "pixel_pdf.png", result["marginal"]["pixels"])
    conditional = result["conditional"]
    names = [key for key in conditional["worst"][0] if key not in
             ("sim", "r2", "within_2se", "n_gen")]
    _r2_figure(out / "r2.png", conditional["per_sim"], exact and exact["conditional"]["per_sim"],
               names)
    worst = conditional["worst"][0]
    sim = worst["sim"]
    figures.power_figure(out / "worst_power.png", np.asarray(power["k"]), held_pk[held.sim == sim],
                          spectra.conditional_pk[spectra.conditional_sim == sim],
                          f"worst simulation {sim}: " + ", ".join(
                              f"{name} {worst[name]:.3f}" for name in names)
                          + f", R² {worst['r2']:.3f}")


# --- Markdown --------------------------------------------------------------------------------

def _number(value, digits=3) -> str:
    """`value` with `digits` significant digits; None (a non-finite number) as n/a."""
    return "n/a" if value is None else f"{value:.{digits}g}"


def _table(header, rows) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def _summary_rows(conditional, key, label):
    summary = conditional[key]
    return [label, _number(summary["median"]), _number(summary["mean"]), _number(summary["p10"]),
            _number(summary["fraction_above"]), summary["n_nan"]]


def _conditional_lines(data) -> list:
    conditional, exact = data["conditional"], data["exact_generator"]
    header = ["statistic", "median", "mean", "10th pct", "fraction > 0.9", "NaN sims"]
    rows = [_summary_rows(conditional, "r2", "R² of mean P(k), model"),
            _summary_rows(conditional, "within_2se", "fraction of k within 2 SE, model")]
    if exact:
        rows += [_summary_rows(exact["conditional"], "r2", "R² of mean P(k), exact generator"),
                 _summary_rows(exact["conditional"], "within_2se",
                               "fraction of k within 2 SE, exact generator")]
    names = [key for key in conditional["worst"][0]
             if key not in ("sim", "r2", "within_2se", "n_gen")]
    worst = [[w["sim"], *(_number(w[n], 4) for n in names), _number(w["r2"]),
              _number(w["within_2se"]), w["n_gen"]] for w in conditional["worst"]]
    options = data["options"]
    return ([f"Each of the {conditional['n_sims']} held-out simulations: all its maps against "
             f"{options['samples_per_sim']} samples at its parameters. A perfect generator "
             f"scores about 0.954 on the within-2-SE fraction (the difference of two means "
             f"within 2 of its standard errors)" + (", and the exact generator's row shows the "
                                                   "R² it reaches with this many maps." if exact
                                                   else "."), ""]
            + _table(header, rows) + ["", "Worst simulations by R²:", ""]
            + _table(["sim", *names, "R²", "within 2 SE", "samples"], worst)
            + ["", "![R² per simulation](r2.png)", "", "![worst simulation](worst_power.png)"])


def _marginal_lines(data) -> list:
    marginal, exact = data["marginal"], data["exact_generator"]
    power, pixels = marginal["power"], marginal["pixels"]
    rows = [[_number(k, 3), _number(mt), _number(mg), _number(mr), _number(st), _number(sg),
             _number(sr)] for k, mt, mg, mr, st, sg, sr in zip(
                 power["k"], power["mean_true"], power["mean_gen"], power["mean_ratio"],
                 power["std_true"], power["std_gen"], power["std_ratio"])]
    pixel_rows = [[name, *(_number(pixels[name][key], 4) for key in
                           ("mean", "std", "p1", "p50", "p99"))] for name in ("true", "gen")]
    lines = [f"{marginal['n_true']} held-out maps against {marginal['n_gen']} finite samples, "
             f"one at the parameters of each map. R² of the mean P(k): "
             f"**{_number(marginal['r2'], 4)}**"
             + (f" (exact generator: {_number(exact['marginal']['r2'], 4)})" if exact else "")
             + f"; pixel KS distance **{_number(pixels['ks_distance'])}**"
             + (f" (exact generator: {_number(exact['marginal']['pixels']['ks_distance'])})"
                if exact else "") + ".", "",
             "![samples beside held-out maps](samples.png)", "", "![P(k)](power.png)",
             "![P(k) ratios](power_ratio.png)", "",
             "P(k) of log10 maps in (Mpc/h)² dex², ratios samples / held-out:", ""]
    lines += _table(["k (h/Mpc)", "mean held-out", "mean samples", "ratio", "std held-out",
                     "std samples", "ratio"], rows)
    lines += ["", "Pixel values of log10 maps (dex):", ""]
    lines += _table(["set", "mean", "std", "1%", "50%", "99%"], pixel_rows)
    return lines + ["", "![pixel PDF](pixel_pdf.png)"]


def _likelihood_lines(likelihood) -> list:
    rows = [["model", _number(likelihood["bits_per_dim"], 5),
             _number(likelihood["nll_nats_per_map"], 6)]]
    if "exact_bits_per_dim" in likelihood:
        rows.append(["exact (best possible)", _number(likelihood["exact_bits_per_dim"], 5),
                     _number(likelihood["exact_nll_nats_per_map"], 6)])
        rows.append(["gap", _number(likelihood["gap_bits_per_dim"], 3), ""])
    return ([f"NLL of the {likelihood['n_maps']} held-out maps in model space "
             f"({likelihood['n_nonfinite']} non-finite):", ""]
            + _table(["", "bits/dim", "nats per map"], rows))


def _inference_lines(inference) -> list:
    names = [name for name in LIKELIHOOD_LABELS if name in inference]
    coverage = [[name, *(f"{_number(c['empirical'])} ({_number(c['interval'][0])}–"
                         f"{_number(c['interval'][1])}){'' if c['is_nominal'] else ' ✗'}"
                         for c in inference[name]["coverage"].values()),
                 f"{_number(inference[name]['max_deviation'])}"
                 f"{'' if inference[name]['inside_band'] else ' ✗'}"] for name in names]
    levels = list(inference["model"]["coverage"])
    errors = [[name, parameter, _number(e["bias"]), _number(e["rmse"]), _number(e["mean_std"])]
              for name in names for parameter, e in inference[name]["errors"].items()]
    shape = "×".join(map(str, inference["grid_shape"]))
    zoom = inference["zoom"]
    grid = (f"a {'×'.join(map(str, zoom['coarse_shape']))} pass over the box, then per map a "
            f"fine grid of {shape} over the region holding all but {zoom['tail']:g} of the "
            f"pass's posterior mass, within the budget of a {'×'.join(map(str, zoom['budget']))} "
            f"grid (the region reached the box edge for {zoom['n_touching_box']['model']} of "
            f"{inference['n_maps']} maps)" if zoom else f"a {shape} grid over the box")
    resolution = ", ".join(f"{name} {', '.join(_number(c, 2) for c in cells)}"
                           for name, cells in inference["min_cells_per_std"].items())
    return ([f"Grid posteriors of {inference['n_maps']} held-out maps spread over the "
             f"simulations, flat prior on the training box: {grid}. "
             f"{inference['n_nonfinite']} non-finite log-likelihoods; fewest grid cells per "
             f"posterior std (Ωm, σ8): {resolution}. The credible level of a truth is the "
             f"posterior mass denser than the posterior density at the truth. Coverage of the "
             f"HPD regions (in brackets the 99% interval of a calibrated posterior; ✗ outside "
             f"it) and the largest deviation of the expected-coverage curve from the diagonal "
             f"(✗: the curve leaves its pointwise 99% band):", ""]
            + _table(["likelihood", *levels, "max deviation"], coverage)
            + ["", "Posterior mean − truth and posterior width, in the parameters' units:", ""]
            + _table(["likelihood", "parameter", "bias", "RMS error", "mean posterior std"],
                     errors)
            + _relative_lines(inference)
            + ["", "The expected-coverage curve (fraction of truths inside the HPD region at "
               "each level) with its band, and the marginal rank histograms with the 99% band "
               "of a bin's count:", "", "![coverage](inference/coverage.png)", ""]
            + [f"![posterior]({path})" for path in inference["figures"]])


def _relative_lines(inference) -> list:
    """The model's RMS error and width as multiples of each reference's (exact, baseline)."""
    lines = []
    for name in ("exact", "baseline", "recalibrated"):
        if name not in inference:
            continue
        model, reference = inference["model"]["errors"], inference[name]["errors"]
        ratios = ", ".join(f"{parameter} {_number(e['rmse'] / reference[parameter]['rmse'], 3)}"
                           f" / {_number(e['mean_std'] / reference[parameter]['mean_std'], 3)}"
                           for parameter, e in model.items())
        lines += ["", f"Model / {LIKELIHOOD_LABELS[name]}, RMS error / width: {ratios}."]
    return lines


def _recalibration_lines(recalibration) -> list:
    """What the `recalibrated` rows are: the temperature and where it was fitted."""
    if recalibration is None:
        return []
    return ["", f"The `recalibrated` rows are post-hoc: the model's log-likelihood divided by a "
                f"temperature T = {_number(recalibration['temperature'])}, fitted on the grid "
                f"posteriors of {recalibration['n_maps']} validation maps (simulations neither "
                f"trained on nor judged here) to make their truths' credible levels closest to "
                f"uniform (Cramér–von Mises distance "
                f"{_number(recalibration['distance_before'])} at T = 1, "
                f"{_number(recalibration['distance_after'])} at T). It widens the posteriors; "
                f"their means and errors are the model's."]


def _health_lines(health) -> list:
    reconstruction = health["reconstruction"]
    return [f"- non-finite samples at temperature 1: **{health['n_nonfinite']} of "
            f"{health['n_samples']}** (fraction {_number(health['fraction_nonfinite'])}); they "
            f"are left out of the statistics above and counted here",
            f"- reconstruction `decode(encode(x)) − x` on the held-out maps: largest "
            f"{_number(reconstruction['max_abs_model_space'])} (RMS "
            f"{_number(reconstruction['rms_model_space'])}) in model space, largest "
            f"{_number(reconstruction['max_abs_dex'])} dex in log10 of the map"]


def _percent(level) -> str:
    return f"{float(level):.0%}"


def calibration_text(inference, source) -> tuple:
    """`(lines, warnings)` on the calibration in the `inference` section of an evaluation
    report (JSON-ready): per likelihood (model, then the exact likelihood and the summary-statistic
    baseline where present) one line with the 68% and
    95% HPD coverage, their 99% binomial intervals and the largest deviation of the
    expected-coverage curve; `warning:` lines when the model's coverage at a level, or its
    curve, leaves the band. `source` names where the numbers come from."""
    lines, warnings = [], []
    for name, label in LIKELIHOOD_LABELS.items():
        if name not in inference:
            continue
        entry = inference[name]
        parts = [f"{_percent(level)}{' HPD coverage' if i == 0 else ''} "
                 f"{c['empirical']:.2f} [{c['interval'][0]:.2f}, {c['interval'][1]:.2f}]"
                 for i, (level, c) in enumerate(entry["coverage"].items())]
        deviation = entry.get("max_deviation")
        parts.append("max deviation of the expected-coverage curve "
                     + ("n/a (report predates it)" if deviation is None else f"{deviation:.3f}"))
        lines.append(f"{label} on held-out data ({inference['n_maps']} maps, {source}): "
                     + ", ".join(parts))
        if name != "model":
            continue
        outside = [f"{_percent(level)} HPD coverage {c['empirical']:.2f} outside "
                   f"[{c['interval'][0]:.2f}, {c['interval'][1]:.2f}]"
                   for level, c in entry["coverage"].items() if not c["is_nominal"]]
        if entry.get("inside_band") is False:
            outside.append(f"the expected-coverage curve leaves its 99% band (max deviation "
                           f"{deviation:.3f})")
        if outside:
            warnings.append(f"warning: the model's posteriors are not calibrated on held-out "
                            f"data ({source}): " + "; ".join(outside))
    return lines, warnings


def saved_baseline(workdir):
    """The summary-statistic baseline fitted by `python -m train.evaluate` on the workdir's
    training split (`WORKDIR/evaluation/baseline.json`), or None if there is none yet."""
    path = pathlib.Path(workdir) / "evaluation" / BASELINE_FILE
    return SummaryLikelihood.load(path) if path.is_file() else None


def saved_temperature(workdir):
    """The likelihood temperature `python -m train.evaluate` fitted on the workdir's validation
    maps (`WORKDIR/evaluation/recalibration.json`), or None if there is none."""
    path = pathlib.Path(workdir) / "evaluation" / RECALIBRATION_FILE
    return json.loads(path.read_text())["temperature"] if path.is_file() else None


def held_out_calibration(workdir) -> tuple:
    """`(lines, warnings)` (`calibration_text`) from `WORKDIR/evaluation/report.json`, the
    evaluation report of the workdir; one line saying there is none yet when it is missing, and
    a note when it was measured on other parameters than the saved model's."""
    path = pathlib.Path(workdir) / "evaluation" / "report.json"
    if not path.is_file():
        return [f"no held-out calibration yet: run python -m train.evaluate --model {workdir}"], []
    data = json.loads(path.read_text())
    lines, warnings = calibration_text(data["inference"], str(path))
    measured, saved = data.get("params_sha256"), params_sha256(workdir)
    if measured is not None and measured != saved:
        lines.append(f"note: {path} was measured on other parameters than the saved model's; "
                     f"run python -m train.evaluate --model {workdir} again")
    return lines, warnings


def params_sha256(workdir):
    """The checksum of the saved model's parameters in `WORKDIR/model.json`, or None."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    return json.loads(path.read_text()).get("params_sha256") if path.is_file() else None


def headline(data) -> str:
    """A few lines with the report's main numbers (for the terminal), the calibration lines of
    `calibration_text` among them."""
    data = json_safe(data)
    likelihood, health = data["likelihood"], data["health"]
    gap = likelihood.get("gap_bits_per_dim")
    calibration, _ = calibration_text(data["inference"], "this evaluation")
    return "\n".join([
        f"report in {data['out']} ({_number(data['timing_s']['total'], 3)} s)",
        f"held-out NLL {_number(likelihood['bits_per_dim'], 5)} bits/dim"
        + ("" if gap is None else f", gap to exact {_number(gap, 3)}"),
        f"marginal R² {_number(data['marginal']['r2'], 4)}; per-simulation R² median "
        f"{_number(data['conditional']['r2']['median'], 4)}, 10th pct "
        f"{_number(data['conditional']['r2']['p10'], 4)}; within 2 SE "
        f"{_number(data['conditional']['within_2se']['mean'])}",
        *calibration,
        f"non-finite samples {health['n_nonfinite']} of {health['n_samples']}; round trip "
        f"max |decode(encode(x)) - x| {_number(health['reconstruction']['max_abs_model_space'])}"
        f" (model space)"])


def warnings_of(data) -> list:
    """The `warning:` lines of the report `data`: those of `calibration_text`, and one when the
    inverse is unsound (`jglow.train.metrics.inverse_problems` of its health section)."""
    data = json_safe(data)
    health = data["health"]
    problems = inverse_problems(health["reconstruction"]["max_abs_model_space"],
                                health["n_nonfinite"], health["n_samples"])
    inverse = [f"warning: the model's inverse is unsound on held-out data: {'; '.join(problems)}"]
    return calibration_text(data["inference"], "this evaluation")[1] + (inverse if problems else [])


def markdown(data) -> str:
    """`report.md` of the JSON-ready result `data`."""
    held = data["held_out"]
    lines = [f"# Evaluation of `{data['model']}`", "",
             f"Data: `{data['data']}`, the {held['n_maps']} maps of the {held['n_sims']} "
             f"simulations of its {held['split']} split (never trained on). Statistics of "
             f"log10 maps; samples at temperature 1. Reproduce with `{data['command']}` "
             f"({_number(data['timing_s']['total'], 3)} s).", "", "```", headline(data),
             *warnings_of(data), "```", "", "## Sample health", ""]
    lines += _health_lines(data["health"])
    lines += ["", "## Marginal statistics", ""] + _marginal_lines(data)
    lines += ["", "## Conditional statistics per simulation", ""] + _conditional_lines(data)
    lines += ["", "## Likelihood", ""] + _likelihood_lines(data["likelihood"])
    lines += ["", "## Inference of (Ωm, σ8)", ""] + _inference_lines(data["inference"])
    lines += _recalibration_lines(data.get("recalibration"))
    timing = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in data["timing_s"].items())
    return "\n".join(lines + ["", f"Time: {timing}.", ""])


def write(out, result) -> None:
    """`report.json` and `report.md` of `result` in `out`."""
    out = pathlib.Path(out)
    data = json_safe(result)
    (out / "report.json").write_text(json.dumps(data, indent=1))
    (out / "report.md").write_text(markdown(data))
