"""Loaders for the real CAMELS HI maps in their two layouts.

* CAMELS Multifield Dataset: `Maps_HI_<suite>_LH_z=0.00.npy` (`(N, 256, 256)` float32) with
  `params_LH_<suite>.txt` (whitespace table, one row per simulation, the six physical
  parameters Ωm, σ8, A_SN1, A_AGN1, A_SN2, A_AGN2, read with `np.loadtxt`).
* HIGlow: a `.npy` of maps (e.g. `Images_HI_IllustrisTNG_z=5.99.npy`, 64×64) with
  `CAMELs_params.csv`: a header row, then per simulation `name, Ωm, σ8, A_SN1, A_AGN1,
  A_SN2, A_AGN2, seed`.

A parameter file ending in `.csv` is read in the HIGlow layout, anything else as the
Multifield table. In both, `columns` indexes the six physical parameters (0 = Ωm, 1 = σ8).
Maps are memory-mapped and scanned in chunks of about 64 MiB; map `i` belongs to simulation
`i // maps_per_sim`.
"""

import csv
import pathlib
import re

import numpy as np

from jglow.data.mapset import MapSet
from jglow.data.validation import check_positive_chunk, check_positive_maps, map_chunks
from jglow.errors import InputError

HIGLOW_PARAMS_NAME = "CAMELs_params.csv"
_MULTIFIELD_NAME = re.compile(r"^Maps_[^_]+_(?P<suite>.+)_(?P<set>[^_]+)_z=[^/]*\.npy$")


def _params_path_beside(maps_path):
    """The parameter file next to `maps_path`: `params_<set>_<suite>.txt` for a Multifield
    name `Maps_<field>_<suite>_<set>_z=….npy`, else (or if that is absent) `CAMELs_params.csv`."""
    candidates = []
    match = _MULTIFIELD_NAME.match(maps_path.name)
    if match:
        candidates.append(maps_path.with_name(f"params_{match['set']}_{match['suite']}.txt"))
    candidates.append(maps_path.with_name(HIGLOW_PARAMS_NAME))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no parameter file found beside {maps_path}; looked for {tried}; "
                            f"pass params_path explicitly")


def _parse_csv_row(row, path, line):
    """The six physical parameters of one data row `name, Ωm, …, A_AGN2, seed` as floats."""
    try:
        if len(row) < 7:
            raise ValueError
        return [float(value) for value in row[1:7]]
    except ValueError:
        raise InputError(f"{path}, line {line}: expected a name, six numbers (Ωm, σ8, A_SN1, "
                         f"A_AGN1, A_SN2, A_AGN2) and a seed, got {row}") from None


def _read_csv_params(path):
    """HIGlow `CAMELs_params.csv`: `(S, 6)` float64 physical parameters (name and seed dropped)."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return np.array([_parse_csv_row(row, path, line)
                     for line, row in enumerate(rows[1:], start=2) if row], dtype=np.float64)


def _read_params(path):
    """`(S, P)` float64 physical parameters of each simulation from either layout."""
    if path.suffix.lower() == ".csv":
        return _read_csv_params(path)
    try:
        return np.loadtxt(path, ndmin=2, dtype=np.float64)
    except ValueError as error:
        raise InputError(f"{path}: expected a whitespace table of numbers, one row per "
                         f"simulation (Ωm, σ8, A_SN1, A_AGN1, A_SN2, A_AGN2); {error}") from None


def _downsampled_copy(maps, factor, source):
    """Block averages of `factor × factor` pixels of the memory-mapped `maps` `(N, H, W)`,
    float32, read and checked for positive finite pixels chunk by chunk."""
    n, h, w = maps.shape
    out = np.empty((n, h // factor, w // factor), np.float32)
    with open(maps.filename, "rb") as handle:
        for part in map_chunks(maps):
            chunk = _read_chunk(handle, maps, part)
            check_positive_chunk(chunk, part.start, source)
            blocks = chunk.reshape(len(chunk), h // factor, factor, w // factor, factor)
            out[part] = blocks.mean(axis=(2, 4), dtype=np.float64)
    return out


def _read_chunk(handle, maps, part):
    """The maps `part` (a slice) of the memory map `maps`, read from its open file `handle`:
    pages read through the map would stay in this process's resident memory (all 3.9 GB
    of a Multifield file), those read from the file do not. A Fortran-ordered file is read
    through the map."""
    if not maps.flags.c_contiguous:
        return np.asarray(maps[part])
    values_per_map = int(np.prod(maps.shape[1:]))
    handle.seek(maps.offset + part.start * values_per_map * maps.dtype.itemsize)
    chunk = np.fromfile(handle, maps.dtype, (part.stop - part.start) * values_per_map)
    return chunk.reshape(-1, *maps.shape[1:])


def load_camels(maps_path, params_path=None, maps_per_sim=15, downsample=1, columns=(0, 1)):
    """Read CAMELS HI maps and their parameters (module docstring for the layouts).

    Args:
      maps_path: `.npy` file of `(N, H, W)` maps.
      params_path: parameter file; `None` looks beside the maps for `params_<set>_<suite>.txt`
        (Multifield name `Maps_<field>_<suite>_<set>_z=….npy`), then `CAMELs_params.csv`.
      maps_per_sim: maps per simulation, stored consecutively.
      downsample: integer block-averaging factor (4 turns 256×256 into 64×64); it must
        divide `H` and `W`. With 1 and float32 maps, `MapSet.maps` is the read-only memory map
        itself; otherwise it is a float32 in-memory copy built chunk by chunk.
      columns: indices among the six physical parameters to keep (default Ωm, σ8).
    Returns:
      `MapSet`: maps `(N, H / downsample, W / downsample)` float32, params
      `(N, len(columns))` float32, sim `(N,)`.
    Raises:
      FileNotFoundError: a missing maps or parameter file.
      InputError (a `ValueError`): maps not `(N, H, W)`; `N ≠ maps_per_sim × rows`; a pixel
        ≤ 0 or not finite (naming the first bad map); a malformed parameter file; a column
        outside the parameter table.
      ValueError: a factor that is not a positive integer dividing the side.
    """
    maps_path = pathlib.Path(maps_path)
    if not maps_path.is_file():
        raise FileNotFoundError(f"maps file not found: {maps_path}")
    params_path = (_params_path_beside(maps_path) if params_path is None
                   else pathlib.Path(params_path))
    if not params_path.is_file():
        raise FileNotFoundError(f"parameter file not found: {params_path}")

    maps = np.load(maps_path, mmap_mode="r")
    if maps.ndim != 3:
        raise InputError(f"{maps_path}: expected maps of shape (N, H, W), got {maps.shape}")
    table = _read_params(params_path)
    if maps.shape[0] != maps_per_sim * table.shape[0]:
        raise InputError(
            f"{maps_path} holds {maps.shape[0]} maps but {params_path} has {table.shape[0]} "
            f"simulations; expected maps_per_sim × simulations = {maps_per_sim} × "
            f"{table.shape[0]} = {maps_per_sim * table.shape[0]} maps")
    columns = tuple(int(c) for c in columns)
    bad_columns = [c for c in columns if not 0 <= c < table.shape[1]]
    if bad_columns:
        raise InputError(f"columns {bad_columns} out of range: {params_path} has "
                         f"{table.shape[1]} physical parameters, expected indices in "
                         f"0..{table.shape[1] - 1}")
    _, h, w = maps.shape
    if not (isinstance(downsample, (int, np.integer)) and downsample >= 1
            and h % downsample == 0 and w % downsample == 0):
        raise ValueError(f"downsample={downsample!r} must be a positive integer factor dividing "
                         f"the map side; maps are {h}×{w}")

    source = str(maps_path)
    if downsample == 1 and maps.dtype == np.float32:
        check_positive_maps(maps, source)
    else:
        maps = _downsampled_copy(maps, downsample, source)
    sim = np.arange(maps.shape[0]) // maps_per_sim
    return MapSet(maps, table[sim][:, columns], sim)
