"""Does a trained model spread its maps as the data do at fixed θ? A diagnosis of overconfidence.

    python benchmarks/spread_check.py --model WORKDIR [--points 20] [--samples 64] [--radius 0.1]

At `--points` parameter points θ (those of held-out test simulations), the global statistics of
`--samples` model samples at θ are compared with those of the data's simulations whose θ lies
within `--radius` (in box coordinates [−1, 1]) of it, all their maps: the spread over
simulations near θ, which includes the variation of everything the model does not condition
on (feedback parameters, initial conditions). A model whose samples spread less than the data
do claims to know more than the maps carry: its likelihood is too narrow and its posteriors
overconfident, whatever its NLL. Statistics, of `log10` maps (dex): the mean level, the pixel
standard deviation, the skewness, and the log of the largest-scale power (the first `Pk_plane`
bin). Prints one JSON object: per statistic the median over points of the ratio of standard
deviations (model / data) and of the offset of the means in units of the data's standard
deviation, and the fraction of non-finite samples.
"""

import argparse
import json
import sys

import jax
import numpy as np

import jglow
from jglow.data import BOX_SIZE, SPLIT_FRACTIONS, SPLIT_SEED, load_mapset, split_by_simulation
from jglow.stats import power_spectrum
from jglow.train.evaluate import run_config
from jglow.train.figures import log10_maps

STATISTICS = ("mean", "std", "skewness", "log_largest_scale_power")


def global_statistics(log_maps):
    """`(N, 4)`: mean, std, skewness and log first-bin power of `log10` maps `(N, n, n)`."""
    pixels = log_maps.reshape(len(log_maps), -1).astype(np.float64)
    mean = pixels.mean(axis=1)
    std = pixels.std(axis=1)
    skewness = np.mean((pixels - mean[:, None]) ** 3, axis=1) / std ** 3
    _, pk, _ = power_spectrum(log_maps.astype(np.float64), BOX_SIZE)
    return np.column_stack([mean, std, skewness, np.log(np.asarray(pk)[:, 0])])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--radius", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args(argv)
    model = jglow.load(args.model)
    config = run_config(args.model)
    mapset = load_mapset(config.data, config.model.image_shape[0], config.n_sims)
    train, _, test = split_by_simulation(mapset, SPLIT_FRACTIONS, SPLIT_SEED)
    pre = model.preprocessing
    unit = np.asarray(pre.forward_params(train.params))
    data_stats = global_statistics(np.log10(np.asarray(train.maps)))
    _, first = np.unique(test.sim, return_index=True)
    points = test.params[first][:args.points]
    ratios, offsets, nonfinite, neighbours = [], [], 0, []
    for i, theta in enumerate(points):
        z = np.asarray(pre.forward_params(theta[None]))
        near = np.linalg.norm(unit - z, axis=1) < args.radius
        neighbours.append(int(near.sum()) // 15)
        x = jglow.sample(model.params, jax.random.key(i), np.repeat(z, args.samples, axis=0),
                         temperature=args.temperature)
        log_maps = log10_maps(pre, x)
        finite = np.all(np.isfinite(log_maps.reshape(len(log_maps), -1)), axis=1)
        nonfinite += int((~finite).sum())
        if finite.sum() < 2 or near.sum() < 2:
            continue
        model_stats = global_statistics(log_maps[finite])
        data = data_stats[near]
        ratios.append(model_stats.std(axis=0) / data.std(axis=0))
        offsets.append((model_stats.mean(axis=0) - data.mean(axis=0)) / data.std(axis=0))
    result = {"model": args.model, "points": len(points), "samples": args.samples,
              "radius": args.radius, "temperature": args.temperature,
              "median_simulations_near": float(np.median(neighbours)),
              "fraction_nonfinite": nonfinite / (len(points) * args.samples),
              "std_ratio_model_over_data": dict(zip(STATISTICS, np.median(ratios, axis=0)
                                                     .round(3).tolist())),
              "mean_offset_in_data_std": dict(zip(STATISTICS, np.median(offsets, axis=0)
                                                   .round(3).tolist()))}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
