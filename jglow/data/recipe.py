"""The data recipe that training, evaluation and inference share: how a data spec becomes a
`MapSet`, and the constants of the split.

A data spec is one of the embedded simulators (`SIMULATORS`: "synthetic", the lognormal maps
with an exact likelihood, or "hi-like", `jglow.data.hi_like`; `n_sims` simulations drawn with
`SYNTHETIC_SEED`) or a CAMELS maps file or folder (`find_maps_file`), block-averaged to the
model's map size. Every data set is split by simulation with `SPLIT_FRACTIONS` and `SPLIT_SEED`
(`jglow.data.split_by_simulation`), so runs of any seed share their validation and test
simulations.
"""

import pathlib

import numpy as np

from jglow.data.camels import load_camels
from jglow.data.hi_like import hi_like_maps
from jglow.data.mapset import MapSet
from jglow.data.synthetic import synthetic_maps
from jglow.errors import InputError

SYNTHETIC_SEED = 0
SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
"""Fractions of the simulations in the training, validation and test splits."""
MAPS_PER_SIM = 15
BOX_SIZE = 25.0
"""Side of the CAMELS box in Mpc/h (also that of the synthetic maps)."""


SIMULATORS = ("synthetic", "hi-like")
"""Data specs that name an embedded simulator instead of a file."""
EXACT_LIKELIHOOD = "synthetic"
"""The simulator whose likelihood is known exactly (`jglow.data.synthetic_log_prob`)."""


def simulate(spec: str, n_sims: int, size: int, seed) -> MapSet:
    """`n_sims` simulations of the embedded simulator `spec` (one of `SIMULATORS`), maps
    `size × size`, drawn from `seed` (an integer or a sequence of them)."""
    if spec == "synthetic":
        return synthetic_maps(n_sims, MAPS_PER_SIM, size=size, box_size=BOX_SIZE, seed=seed)
    if spec == "hi-like":
        return hi_like_maps(n_sims, size=size, seed=seed, progress=True)
    raise DataSpecError(f"data {spec!r}: expected one of the simulators {SIMULATORS}")


class DataSpecError(InputError):
    """A data spec that names no usable maps file, or maps that cannot take the asked size (an
    `InputError`, so the commands report it as one `error: ...` line)."""


def find_maps_file(path) -> pathlib.Path:
    """The `.npy` maps file named by `path`, a file or a folder holding exactly one CAMELS maps
    file (`Maps_HI_*.npy` or `Images_HI_*.npy`)."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("Maps_HI_*.npy")) + sorted(path.glob("Images_HI_*.npy"))
        if len(found) == 1:
            return found[0]
        if found:
            raise DataSpecError(f"data {str(path)!r} holds several maps files "
                                f"{[f.name for f in found]}; pass one of them")
    raise FileNotFoundError(
        f"data {str(path)!r}: expected a simulator {SIMULATORS}, a CAMELS maps file (.npy, with "
        f"params_LH_<suite>.txt or CAMELs_params.csv beside it) or a folder holding one "
        f"Maps_HI_*.npy / Images_HI_*.npy; found no such file")


def load_mapset(spec: str, size: int, n_sims: int) -> MapSet:
    """All maps of the data spec `spec`, `size × size`; `n_sims` simulations of a simulator."""
    if spec in SIMULATORS:
        return simulate(spec, n_sims, size, SYNTHETIC_SEED)
    maps_file = find_maps_file(spec)
    native = np.load(maps_file, mmap_mode="r").shape
    if len(native) != 3 or native[1] != native[2] or native[1] % size:
        raise DataSpecError(f"{maps_file}: maps of shape {native} cannot be block-averaged "
                            f"to {size}×{size}; expected (N, n, n) with n a multiple of {size}")
    return load_camels(maps_file, maps_per_sim=MAPS_PER_SIM, downsample=native[1] // size)
