"""Write simulated maps in the CAMELS Multifield layout, for the trainer's `--data DIR`.

    python -m train.make_data --kind hi-like --sims 1000 --size 32 --out OUT

writes `OUT/Maps_HI_<Suite>_LH_z=0.00.npy` (`(15 S, size, size)` float32 column densities)
and `OUT/params_LH_<Suite>.txt` (`S` rows of Ωm, σ8, A_SN1, A_AGN1, A_SN2, A_AGN2), the
suite being `HILike` or `Lognormal` (whose feedback columns are 1: it has no feedback).
An existing file is never overwritten unless `--overwrite`.
"""

import pathlib
import sys

import numpy as np

from jglow.data import hi_like
from jglow.data.prior import latin_hypercube
from jglow.data.synthetic import sample_synthetic
from jglow.errors import InputError
from jglow.train.cli import ArgumentParser, command

SUITES = {"hi-like": "HILike", "lognormal": "Lognormal"}
"""The suite name each kind is written under."""


def simulation_table(kind, n_sims, seed):
    """`(n_sims, 6)` parameters of each simulation of `kind` (Latin hypercube)."""
    if kind == "hi-like":
        return hi_like.hi_like_parameters(n_sims, seed)
    rng = np.random.default_rng([seed, 0])
    cosmology = latin_hypercube(n_sims, rng=rng)
    return np.concatenate([cosmology, np.ones((n_sims, 4))], axis=1)


def simulated_maps(kind, table, size, seed):
    """Maps `(15 S, size, size)` float32 of the simulations `table (S, 6)` of `kind`."""
    if kind == "hi-like":
        return hi_like.simulate_all(table, size, seed, progress=True)
    maps = sample_synthetic(table[:, :2], hi_like.MAPS_PER_SIM, size, hi_like.BOX_SIZE,
                            seed=[seed, 1])
    return np.asarray(maps, np.float32).reshape(-1, size, size)


def output_paths(out, kind):
    """`(maps_path, params_path)` of `kind` in the folder `out`."""
    suite = SUITES[kind]
    out = pathlib.Path(out)
    return out / f"Maps_HI_{suite}_LH_z=0.00.npy", out / f"params_LH_{suite}.txt"


def write(out, kind, n_sims, size, seed=0, overwrite=False):
    """Simulate and write `n_sims` simulations of `kind` into the folder `out` (created).

    Returns `(maps_path, params_path)`. Raises `InputError` if a file exists and not
    `overwrite`, or `out` is not a folder.
    """
    maps_path, params_path = output_paths(out, kind)
    if maps_path.parent.exists() and not maps_path.parent.is_dir():
        raise InputError(f"output {str(maps_path.parent)!r} exists and is not a folder")
    existing = [str(p) for p in (maps_path, params_path) if p.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing} exist; pass --overwrite to replace them")
    maps_path.parent.mkdir(parents=True, exist_ok=True)
    table = simulation_table(kind, n_sims, seed)
    np.save(maps_path, simulated_maps(kind, table, size, seed))
    np.savetxt(params_path, table, fmt="%.6f",
               header=" ".join(hi_like.PARAMETER_NAMES), comments="# ")
    return maps_path, params_path


def build_parser():
    parser = ArgumentParser(description="Simulate maps and write them in the CAMELS "
                                        "Multifield layout (maps .npy and parameter table).")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--kind", choices=sorted(SUITES), default="hi-like",
                        help="hi-like: HI-like maps from 2LPT density with feedback "
                             "(jglow.data.hi_like); lognormal: the maps with an exact "
                             "likelihood (jglow.data.synthetic)")
    parser.add_argument("--sims", type=int, default=1000, help="simulations, 15 maps each")
    parser.add_argument("--size", type=int, default=32, help="pixels per side (a power of 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of parameters and fields")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    return parser


@command
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.sims < 1:
        raise InputError(f"--sims must be a positive integer, got {args.sims}")
    if args.size < 4 or args.size & (args.size - 1):
        raise InputError(f"--size must be a power of two >= 4, got {args.size}")
    maps_path, params_path = write(args.out, args.kind, args.sims, args.size, args.seed,
                                   args.overwrite)
    print(f"wrote {maps_path} and {params_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
