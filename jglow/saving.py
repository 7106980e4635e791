"""A trained model on disk: configuration, parameters and preprocessing in one directory.

Layout of a model directory (also the root of every training workdir, so
`jglow.load(workdir)` returns the model the trainer kept, its best by validation NLL):

* `model.json`: `{"format", "version", "config": GlowConfig fields, "preprocessing":
  Preprocessing.to_dict(), "params_sha256"}`, readable by people;
* `params.npz`: one float32 array per parameter leaf, named by its pytree path
  (e.g. `.levels[0]['steps']['invconv']['lower']`).

Both files are written to temporary names and renamed, `params.npz` first; the checksum in
`model.json` makes a pair torn by a crash between the two renames an error, not a silent
mismatch. The round trip is bit-exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import NamedTuple

import jax
import numpy as np

from jglow.config import GlowConfig
from jglow.data.preprocessing import Preprocessing
from jglow.model import GlowParams, init

FORMAT = "jglow-model"
VERSION = 1
CONFIG_FILE = "model.json"
PARAMS_FILE = "params.npz"


class TrainedModel(NamedTuple):
    """What research code needs of a trained model.

    Attributes:
      config: the `GlowConfig` (equal to `params.config`).
      params: `GlowParams` for `jglow.log_prob`, `jglow.sample`, ...
      preprocessing: the fitted `jglow.data.Preprocessing` between raw maps / physical
        parameters and the model-space `x`, `z`.
    """

    config: GlowConfig
    params: GlowParams
    preprocessing: Preprocessing


def _leaves_by_name(params: GlowParams) -> dict:
    """`{pytree path string: numpy array}` for every leaf of `params`."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _replace_atomically(path: pathlib.Path, write) -> None:
    """Call `write(handle)` on a temporary file beside `path`, then rename it to `path`."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(path, model: TrainedModel) -> None:
    """Write `model` to the directory `path` (created if needed; the two files replaced).

    Raises:
      TypeError: `model` is not a `TrainedModel` of `GlowConfig`, `GlowParams`, `Preprocessing`.
      ValueError: `model.config` differs from `model.params.config`.
    """
    if not isinstance(model, TrainedModel):
        raise TypeError(f"model must be a jglow.TrainedModel(config, params, preprocessing), "
                        f"got {type(model).__name__}")
    config, params, preprocessing = model
    if not isinstance(params, GlowParams) or not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"expected TrainedModel(GlowConfig, GlowParams, Preprocessing), got "
                        f"({type(config).__name__}, {type(params).__name__}, "
                        f"{type(preprocessing).__name__})")
    if config != params.config:
        raise ValueError(f"model.config {config} differs from the params' own config "
                         f"{params.config}")
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    _replace_atomically(directory / PARAMS_FILE,
                        lambda handle: np.savez(handle, **_leaves_by_name(params)))
    record = {"format": FORMAT, "version": VERSION, "config": dataclasses.asdict(config),
              "preprocessing": preprocessing.to_dict(),
              "params_sha256": _sha256(directory / PARAMS_FILE)}
    _replace_atomically(directory / CONFIG_FILE,
                        lambda handle: handle.write(json.dumps(record, indent=2).encode()))


def _read_record(directory: pathlib.Path) -> dict:
    """The checked contents of `model.json`."""
    config_path, params_path = directory / CONFIG_FILE, directory / PARAMS_FILE
    for required in (config_path, params_path):
        if not required.is_file():
            raise FileNotFoundError(f"{required} not found: {directory} is not a jglow model "
                                    f"directory (expected {CONFIG_FILE} and {PARAMS_FILE}, as "
                                    f"written by jglow.save or the trainer)")
    record = json.loads(config_path.read_text())
    if record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ValueError(f"{config_path}: format {record.get('format')!r} version "
                         f"{record.get('version')!r}, expected {FORMAT!r} version {VERSION}")
    if record["params_sha256"] != _sha256(params_path):
        raise ValueError(f"{params_path} does not match the checksum in {config_path}: the pair "
                         f"was torn (e.g. a crash while saving); save the model again")
    return record


def _template(config: GlowConfig) -> GlowParams:
    """Parameters of the right structure for `config` (values irrelevant, all replaced)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (2, *config.image_shape)).astype(np.float32)
    z = rng.uniform(-1.0, 1.0, (2, config.cond_dim)).astype(np.float32)
    return init(jax.random.key(0), config, x, z)


def load(path) -> TrainedModel:
    """Read the `TrainedModel` saved in the directory `path` (or a training workdir).

    Raises:
      FileNotFoundError: `path` lacks `model.json` or `params.npz`.
      ValueError: unknown format, a checksum mismatch, or leaves whose names or shapes do
        not match the configuration (naming the first difference).
    """
    directory = pathlib.Path(path)
    record = _read_record(directory)
    config = GlowConfig(**record["config"])
    preprocessing = Preprocessing.from_dict(record["preprocessing"])
    template = _template(config)
    expected = _leaves_by_name(template)
    with np.load(directory / PARAMS_FILE) as stored:
        arrays = {name: stored[name] for name in stored.files}
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise ValueError(f"{directory / PARAMS_FILE} does not fit {config}: missing leaves "
                         f"{missing[:3]}, unexpected leaves {extra[:3]}")
    for name, want in expected.items():
        if arrays[name].shape != want.shape or arrays[name].dtype != want.dtype:
            raise ValueError(f"{directory / PARAMS_FILE}: leaf {name} has shape "
                             f"{arrays[name].shape} {arrays[name].dtype}, expected "
                             f"{want.shape} {want.dtype}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = [jax.numpy.asarray(arrays[jax.tree_util.keystr(p)]) for p, _ in flat]
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    return TrainedModel(config, params, preprocessing)
