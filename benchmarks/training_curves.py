"""What more training buys: held-out NLL gap and 68% coverage against training minutes.

    python benchmarks/training_curves.py --out docs/training_curves.png \
        quick=runs/quick standard=runs/standard "standard ×4=runs/standard_x4"

Each argument is `LABEL=WORKDIR`: a `train.main` workdir, or a `train.ensemble` workdir (its
`ensemble.json` lists the members). Single runs draw their validation NLL gap (synthetic data:
the model's bits/dim minus the exact likelihood's on the validation maps) against `elapsed_s`
from `metrics.jsonl`; an ensemble's minutes are its members' summed. Every run evaluated by
`train.evaluate` (`WORKDIR/evaluation/report.json`) adds a marker at its end: the test split's
NLL gap, and the 68% HPD coverage of its held-out posteriors with the exact likelihood's on the
same maps and the 99% band of a calibrated posterior. Prints one JSON line per run.
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jglow.saving import ENSEMBLE_FILE, ensemble_member_dirs  # noqa: E402
from jglow.train.metrics import MetricsLog  # noqa: E402

LEVEL = "0.68"


def validation_curve(workdir: pathlib.Path) -> tuple[list, list]:
    """(minutes, NLL gap in bits/dim) of every validation record of a single run."""
    val = [r for r in MetricsLog(workdir).read()
           if r.get("kind") == "val" and r.get("elapsed_s") is not None]
    return ([r["elapsed_s"] / 60 for r in val],
            [r["val_bits_per_dim"] - r["exact_bits_per_dim"] for r in val])


def members(workdir: pathlib.Path) -> list:
    """The member workdirs of an ensemble workdir, or `[workdir]` for a single run."""
    if not (workdir / ENSEMBLE_FILE).is_file():
        return [workdir]
    return ensemble_member_dirs(workdir)


def run_summary(label: str, workdir: pathlib.Path) -> dict:
    """Training minutes, validation curve (single runs) and the evaluation's end point."""
    parts = members(workdir)
    curves = [validation_curve(part) for part in parts]
    summary = {"label": label, "workdir": str(workdir), "members": len(parts),
               "minutes": sum(minutes[-1] for minutes, _ in curves),
               "curve": curves[0] if len(parts) == 1 else None}
    report = workdir / "evaluation" / "report.json"
    if report.exists():
        data = json.loads(report.read_text())
        inference = data["inference"]
        summary.update(
            test_gap=data["likelihood"]["gap_bits_per_dim"],
            coverage_68=inference["model"]["coverage"][LEVEL]["empirical"],
            exact_coverage_68=inference["exact"]["coverage"][LEVEL]["empirical"],
            band_68=inference["model"]["coverage"][LEVEL]["interval"],
            max_deviation=inference["model"]["max_deviation"])
    return summary


def plot(summaries: list) -> plt.Figure:
    """Two panels: NLL gap (log scale) and 68% coverage, both against training minutes."""
    fig, (gap_axis, coverage_axis) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    for i, s in enumerate(summaries):
        color = f"C{i}"
        if s["curve"] is not None:
            gap_axis.plot(*s["curve"], color=color, lw=1.2, label=s["label"])
        if "test_gap" in s:
            gap_axis.plot(s["minutes"], s["test_gap"], "o", color=color,
                          label=None if s["curve"] is not None else s["label"])
            coverage_axis.plot(s["minutes"], s["coverage_68"], "o", color=color,
                               label=s["label"])
    evaluated = [s for s in summaries if "test_gap" in s]
    if evaluated:
        low, high = evaluated[0]["band_68"]
        coverage_axis.axhspan(low, high, color="0.85", label="99% band, calibrated")
        coverage_axis.axhline(0.68, color="k", lw=0.8)
        coverage_axis.plot([s["minutes"] for s in evaluated],
                           [s["exact_coverage_68"] for s in evaluated], "x", color="k",
                           label="exact likelihood, same maps")
    gap_axis.set(xlabel="training minutes (2-core CPU)", ylabel="NLL gap to exact (bits/dim)",
                 yscale="log", title="held-out likelihood")
    coverage_axis.set(xlabel="training minutes (2-core CPU)", ylabel="68% HPD coverage",
                      title="held-out posteriors")
    gap_axis.legend(fontsize=7)
    coverage_axis.legend(fontsize=7)
    fig.tight_layout()
    return fig


def parse_runs(values: list) -> list:
    """`LABEL=WORKDIR` arguments as `(label, Path)`; a missing `=` or workdir is refused."""
    runs = []
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label:
            raise SystemExit(f"error: {value!r}: expected LABEL=WORKDIR")
        if not (pathlib.Path(path) / "run.json").exists():
            raise SystemExit(f"error: {path!r} is not a training workdir (no run.json)")
        runs.append((label, pathlib.Path(path)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=WORKDIR")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()
    summaries = [run_summary(label, path) for label, path in parse_runs(args.runs)]
    for s in summaries:
        print(json.dumps({k: v for k, v in s.items() if k != "curve"}))
    plot(summaries).savefig(args.out, dpi=90)


if __name__ == "__main__":
    main()
