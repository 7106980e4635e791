"""Figures of grid posteriors and of calibration, drawn on `matplotlib.figure.Figure` objects.

No pyplot and no global backend state: `Figure.savefig` renders with Agg, so these work on
machines without a display and inside other programs' figures managers alike.
"""

import itertools

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from jglow.posterior.calibration import COVERAGE_LEVELS, RANK_BINS
from jglow.posterior.density import LEVELS

LABELS = {"Omega_m": r"$\Omega_m$", "sigma_8": r"$\sigma_8$"}
FILL_COLOURS = ("#1f5fa8", "#8fb7e3")  # inner (68%) and outer (95%) HPD regions


def _label(name: str) -> str:
    return LABELS.get(name, name)


TRUTH_COLOUR = "#d62728"
REFERENCE_COLOUR = "#2ca02c"
CURVE_COLOURS = ("#1f5fa8", REFERENCE_COLOUR, "#ff7f0e", "#9467bd")  # model, exact, …


def _draw_box(ax, posterior):
    (x0, x1), (y0, y1) = posterior.box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", lw=1, color="grey"))


def plot_posterior(posterior, truth=None, reference=None, title=None, label="posterior",
                   reference_label="reference") -> Figure:
    """Corner figure of a 2-D `GridPosterior`: the joint with filled 68% (dark) and 95% (light)
    HPD regions, the MAP and (if given) the truth `(2,)` marked, the training box dashed when
    the grid leaves it, and both marginal densities. A `reference` posterior (e.g. the exact
    likelihood's, on its own grid) is drawn as dashed contours and marginals."""
    if len(posterior.axes) != 2:
        raise ValueError(f"plot_posterior draws 2-D posteriors, got {len(posterior.axes)} axes")
    fig = Figure(figsize=(6.4, 6.0), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(3, 1.2), height_ratios=(1.2, 3))
    joint = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=joint)
    side = fig.add_subplot(grid[1, 1], sharey=joint)
    x_axis, y_axis = posterior.axes
    joint.contourf(x_axis, y_axis, posterior.credible_level.T, levels=(0.0, *LEVELS),
                   colors=FILL_COLOURS)
    joint.contour(x_axis, y_axis, posterior.credible_level.T, levels=LEVELS, colors="k",
                  linewidths=0.6)
    if reference is not None:
        x_ref_axis, y_ref_axis = reference.axes
        joint.contour(x_ref_axis, y_ref_axis, reference.credible_level.T, levels=LEVELS,
                      colors=REFERENCE_COLOUR, linewidths=1.0, linestyles="--")
        x_reference, y_reference = reference.marginal_densities
        top.plot(x_ref_axis, x_reference, "--", color=REFERENCE_COLOUR, label=reference_label)
        side.plot(y_reference, y_ref_axis, "--", color=REFERENCE_COLOUR)
    if posterior.outside_box:
        _draw_box(joint, posterior)
    joint.set_xlabel(_label(posterior.names[0]))
    joint.set_ylabel(_label(posterior.names[1]))
    x_marginal, y_marginal = posterior.marginal_densities
    top.plot(x_axis, x_marginal, color=FILL_COLOURS[0], label=label)
    side.plot(y_marginal, y_axis, color=FILL_COLOURS[0])
    top.tick_params(labelbottom=False)
    side.tick_params(labelleft=False)
    top.set(ylabel="density", ylim=(0, None))
    side.set(xlabel="density", xlim=(0, None))
    joint.plot(*posterior.map_estimate, "x", color="black", ms=8, label="MAP")
    if truth is not None:
        joint.plot(*truth, "*", color=TRUTH_COLOUR, ms=14, label="truth")
        top.axvline(truth[0], color=TRUTH_COLOUR, lw=1.5)
        side.axhline(truth[1], color=TRUTH_COLOUR, lw=1.5)
    joint.legend(loc="best", fontsize=8)
    top.legend(loc="best", fontsize=7)
    mean, std = posterior.mean, posterior.std
    lines = [f"{_label(n)} = {m:.4f} ± {s:.4f}" for n, m, s in zip(posterior.names, mean, std)]
    if posterior.n_nonfinite:
        lines.append(f"{posterior.n_nonfinite} non-finite log-likelihoods")
    fig.text(0.98, 0.98, "\n".join(lines), ha="right", va="top", fontsize=8)
    if title:
        fig.suptitle(title, x=0.02, ha="left", fontsize=10)
    return fig


def plot_coverage(calibrations, confidence=0.99) -> Figure:
    """Calibration figure of several `Calibration`s by name (e.g. {"model": …, "exact": …}),
    overlaid: the expected-coverage curve (fraction of truths inside the HPD region against its
    level) with the diagonal and the pointwise Binomial band of a calibrated posterior shaded,
    the legend giving each curve's largest deviation; then one panel per parameter with the
    histogram of the marginal ranks (counts per bin) and the Binomial band of a bin's count."""
    first = next(iter(calibrations.values()))
    names = first.parameter_names
    fig = Figure(figsize=(3.2 * (1 + len(names)), 3.0), layout="constrained")
    axes = fig.subplots(1, 1 + len(names))
    levels = COVERAGE_LEVELS
    for n_maps in sorted({c.n_maps for c in calibrations.values()}):
        calibration = next(c for c in calibrations.values() if c.n_maps == n_maps)
        low, high = calibration.coverage_band(levels, confidence)
        axes[0].fill_between(levels, low, high, color="0.85", lw=0,
                             label=f"{confidence:.0%} band, N={n_maps}")
    axes[0].plot(levels, levels, color="0.4", lw=1)
    for colour, (name, calibration) in zip(itertools.cycle(CURVE_COLOURS),
                                            calibrations.items()):
        axes[0].plot(levels, calibration.expected_coverage(levels), color=colour,
                     label=f"{name}: max dev. {calibration.max_coverage_deviation(levels):.3f}")
        band = calibration.rank_band(RANK_BINS, confidence)
        for ax, counts in zip(axes[1:], calibration.rank_histograms(RANK_BINS)):
            ax.stairs(counts, np.linspace(0.0, 1.0, RANK_BINS + 1), color=colour, label=name)
            ax.axhspan(*band, color="0.85", lw=0, zorder=0)
    for a in LEVELS:
        axes[0].axvline(a, color="0.6", ls=":", lw=1)
    axes[0].set(xlabel="HPD credibility level", ylabel="fraction of truths inside", xlim=(0, 1),
                ylim=(0, 1), title="expected coverage")
    axes[0].legend(fontsize=7, loc="upper left")
    for ax, name in zip(axes[1:], names):
        ax.axhline(first.n_maps / RANK_BINS, color="0.4", lw=1)
        ax.set(xlabel=f"marginal CDF at the truth, {_label(name)}", ylabel="maps per bin",
               xlim=(0, 1), ylim=(0, None), title="rank histogram")
        ax.legend(fontsize=7)
    return fig
