"""One held-out map's posterior under two likelihoods of an evaluation, in one figure.

    python benchmarks/posterior_figure.py --tables WORKDIR/evaluation/inference/posteriors.npz \
        --map 0 --main recalibrated --reference baseline --out docs/hi_like_posterior.png

Reads the log-likelihood tables that `train.infer` (and so `train.evaluate`) writes to
`posteriors.npz` (flat prior over each set's grid), and draws the `--main` set's posterior with
filled HPD regions and the `--reference` set's as dashed contours
(`jglow.posterior.plot_posterior`).
"""

import argparse
import sys

import numpy as np

from jglow.data import PRIOR_BOX
from jglow.posterior import plot_posterior, posterior_on_grid
from jglow.posterior.density import parameter_names
from jglow.train.infer import REFERENCE_LABELS

LABELS = {"model": "model", **REFERENCE_LABELS}


def posterior_of(tables, name, index):
    """The `GridPosterior` of map `index` of the set `name` of `tables` (flat prior)."""
    axes = tuple(tables[f"{name}_axis_{p}"][index] for p in parameter_names(2))
    log_likelihood = tables[f"{name}_log_likelihood"][index]
    truth = tables["truths"][index] if "truths" in tables else None
    extra = {} if truth is None else {
        "truth": truth, "truth_log_likelihood": tables[f"{name}_truth_log_likelihood"][index]}
    return posterior_on_grid(axes, log_likelihood, np.zeros_like(log_likelihood), PRIOR_BOX,
                             **extra)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", required=True, help="posteriors.npz of train.infer")
    parser.add_argument("--map", type=int, default=0, help="index of the map")
    parser.add_argument("--main", default="model", help="set drawn filled")
    parser.add_argument("--reference", default="baseline", help="set drawn dashed")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    tables = np.load(args.tables)
    main_post = posterior_of(tables, args.main, args.map)
    reference = posterior_of(tables, args.reference, args.map)
    figure = plot_posterior(main_post, main_post.truth, reference, title=f"map {args.map}",
                            label=LABELS.get(args.main, args.main),
                            reference_label=LABELS.get(args.reference, args.reference))
    figure.savefig(args.out, dpi=80)
    return 0


if __name__ == "__main__":
    sys.exit(main())
