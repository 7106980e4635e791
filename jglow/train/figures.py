"""Figures written to `workdir/figures/` after each epoch (matplotlib, Agg, small PNGs).

* `samples.png`: for a few held-out simulations, real maps beside samples drawn with the same
  parameters (log10 of the raw maps, one colour scale per row from the real maps);
* `loss.png`: training loss and validation NLL in bits/dim against steps, and the exact
  (best possible) validation bits/dim on synthetic data;
* `power.png`: mean ± std of P(k) of log10 maps, samples against held-out maps of the same
  parameters.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import jax  # noqa: E402  (imports after choosing the backend)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import jglow  # noqa: E402
from jglow.data import BOX_SIZE, Preprocessing  # noqa: E402
from jglow.stats import power_spectrum  # noqa: E402
from jglow.train.data import Split  # noqa: E402

FIGURE_DIR = "figures"
GRID_SIMS, GRID_MAPS, SPECTRUM_MAPS = 4, 3, 64
DPI = 72


class FigureSet(NamedTuple):
    """The held-out maps the figures show, fixed for the whole run.

    Attributes:
      grid: `(GRID_SIMS, GRID_MAPS)` indices into the validation split (rows: simulations
        spread over Ωm).
      spectra: up to `SPECTRUM_MAPS` indices of maps from distinct validation simulations.
    """

    grid: np.ndarray
    spectra: np.ndarray


def choose(val: Split) -> FigureSet:
    """The figure maps of the validation split `val`."""
    sims, first = np.unique(val.sim, return_index=True)
    by_omega = first[np.argsort(val.params[first, 0])]
    rows = by_omega[np.linspace(0, len(by_omega) - 1, min(GRID_SIMS, len(by_omega))).astype(int)]
    grid = np.stack([np.flatnonzero(val.sim == val.sim[row])[:GRID_MAPS] for row in rows])
    return FigureSet(grid, first[:SPECTRUM_MAPS])


def log10_maps(preprocessing: Preprocessing, x) -> np.ndarray:
    """Model-space `x (N, H, W, 1)` → `log10` of the raw maps, `(N, H, W)` float32 dex."""
    return np.log10(np.asarray(preprocessing.inverse_maps(x), np.float64)).astype(np.float32)


def finite_maps(maps: np.ndarray) -> np.ndarray:
    """`(N,)` bool: maps whose every pixel is finite."""
    return np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)


def samples_figure(path, real, fake, params, title):
    rows, cols = real.shape[:2]
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(1.1 * 2 * cols + 0.5, 1.1 * rows + 0.5),
                             squeeze=False)
    for r in range(rows):
        low, high = np.percentile(real[r], [1, 99])
        for c in range(2 * cols):
            image = real[r, c] if c < cols else fake[r, c - cols]
            axes[r, c].imshow(image, vmin=low, vmax=high, cmap="viridis",
                              interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(f"Ωm {params[r, 0]:.2f}\nσ8 {params[r, 1]:.2f}", fontsize=7)
    fig.subplots_adjust(left=0.09, right=0.99, bottom=0.02, top=0.88, wspace=0.05, hspace=0.08)
    axes[0, 0].set_title("held-out maps", fontsize=8, loc="left")
    axes[0, cols].set_title("samples, same parameters", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _loss_figure(path, records, exact_bits):
    train = [r for r in records if r["kind"] == "train" and r["bits_per_dim"] is not None]
    val = [r for r in records if r["kind"] == "val" and r["val_bits_per_dim"] is not None]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in train], [r["bits_per_dim"] for r in train], lw=0.8,
            label="training batches")
    ax.plot([r["step"] for r in val], [r["val_bits_per_dim"] for r in val], "o-", ms=3,
            label="validation")
    if exact_bits is not None:
        ax.axhline(exact_bits, color="k", ls="--", lw=0.8, label="exact (best possible)")
    ax.set_xlabel("step")
    ax.set_ylabel("NLL (bits/dim)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def power_figure(path, k, pk_real, pk_fake, title):
    fig, ax = plt.subplots(figsize=(5, 3.2))
    means = []
    for pk, label in ((pk_real, "held-out maps"), (pk_fake, "samples")):
        if len(pk):
            mean, std = pk.mean(axis=0), pk.std(axis=0)
            means.append(mean)
            ax.plot(k, mean, label=f"{label} ({len(pk)})")
            ax.fill_between(k, np.maximum(mean - std, 1e-3 * mean), mean + std, alpha=0.3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(0.1 * np.min(means), 10.0 * np.max(means))  # a band reaching 0 must not rescale
    ax.set_xlabel("k (h/Mpc)")
    ax.set_ylabel("P(k) of log10 map ((Mpc/h)²)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def write(workdir, params, preprocessing: Preprocessing, val: Split, chosen: FigureSet,
          records: list, exact_bits, seed: int, epoch: int) -> int:
    """Write the three figures for `params` (host arrays) after `epoch`; samples are drawn with
    a key fixed by `seed`, so figures of successive epochs are comparable.

    Returns the number of non-finite samples (excluded from `power.png`, named in titles).
    """
    directory = pathlib.Path(workdir) / FIGURE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    indices = np.concatenate([chosen.grid.ravel(), chosen.spectra])
    x = jglow.sample(params, jax.random.key(seed), val.z[indices])
    fake = log10_maps(preprocessing, x)
    real = log10_maps(preprocessing, val.x[indices])
    finite = finite_maps(fake)
    bad = int((~finite).sum())
    note = f"epoch {epoch}" + (f", {bad} non-finite samples" if bad else "")
    n_grid = chosen.grid.size
    grid_shape = (*chosen.grid.shape, *real.shape[1:])
    samples_figure(directory / "samples.png", real[:n_grid].reshape(grid_shape),
                    fake[:n_grid].reshape(grid_shape), val.params[chosen.grid[:, 0]], note)
    _loss_figure(directory / "loss.png", records, exact_bits)
    k, pk_real, _ = power_spectrum(real[n_grid:], BOX_SIZE)
    spectra_fake = fake[n_grid:][finite[n_grid:]]
    pk_fake = (power_spectrum(spectra_fake, BOX_SIZE)[1] if len(spectra_fake)
               else np.zeros((0, len(k))))
    power_figure(directory / "power.png", np.asarray(k), np.asarray(pk_real),
                  np.asarray(pk_fake), note)
    return bad
