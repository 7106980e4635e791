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

An ensemble directory (`jglow.ensemble`; also the workdir of `python -m train.ensemble`) holds
`ensemble.json`, `{"format": "jglow-ensemble", "version": 1, "members": [paths]}`, the members'
model directories relative to it, written by `save_ensemble`. `load` of such a directory returns
a `TrainedModel` whose params are an `EnsembleParams`; the members must share their config and
preprocessing.
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

from jglow import ensemble
from jglow.config import GlowConfig
from jglow.data.preprocessing import Preprocessing
from jglow.errors import InputError
from jglow.files import replace_atomically
from jglow.model import init
from jglow.model_params import GlowParams

FORMAT = "jglow-model"
VERSION = 1
CONFIG_FILE = "model.json"
PARAMS_FILE = "params.npz"
ENSEMBLE_FORMAT = "jglow-ensemble"
ENSEMBLE_VERSION = 1
ENSEMBLE_FILE = "ensemble.json"


class TrainedModel(NamedTuple):
    """What research code needs of a trained model.

    Attributes:
      config: the `GlowConfig` (equal to `params.config`).
      params: `GlowParams` for `jglow.log_prob`, `jglow.sample`, ..., or the `EnsembleParams`
        of an ensemble directory.
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
    if isinstance(params, ensemble.EnsembleParams):
        raise TypeError("jglow.save writes one model; an ensemble is its members' model "
                        "directories (each jglow.save'd) listed by "
                        "jglow.save_ensemble(path, member_dirs)")
    if not isinstance(params, GlowParams) or not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"expected TrainedModel(GlowConfig, GlowParams, Preprocessing), got "
                        f"({type(config).__name__}, {type(params).__name__}, "
                        f"{type(preprocessing).__name__})")
    if config != params.config:
        raise ValueError(f"model.config {config} differs from the params' own config "
                         f"{params.config}")
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    replace_atomically(directory / PARAMS_FILE,
                        lambda handle: np.savez(handle, **_leaves_by_name(params)))
    record = {"format": FORMAT, "version": VERSION, "config": dataclasses.asdict(config),
              "preprocessing": preprocessing.to_dict(),
              "params_sha256": _sha256(directory / PARAMS_FILE)}
    replace_atomically(directory / CONFIG_FILE,
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
        raise InputError(f"{config_path}: format {record.get('format')!r} version "
                         f"{record.get('version')!r}, expected {FORMAT!r} version {VERSION}")
    if record["params_sha256"] != _sha256(params_path):
        raise InputError(f"{params_path} does not match the checksum in {config_path}: the pair "
                         f"was torn (e.g. a crash while saving); save the model again")
    return record


def _template(config: GlowConfig) -> GlowParams:
    """Parameters of the right structure for `config` (values irrelevant, all replaced)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (2, *config.image_shape)).astype(np.float32)
    z = rng.uniform(-1.0, 1.0, (2, config.cond_dim)).astype(np.float32)
    return init(jax.random.key(0), config, x, z)


def _read_params(directory: pathlib.Path, template: GlowParams) -> GlowParams:
    """The parameters in `directory/params.npz`, checked against the structure of `template`."""
    config = template.config
    expected = _leaves_by_name(template)
    with np.load(directory / PARAMS_FILE) as stored:
        arrays = {name: stored[name] for name in stored.files}
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise InputError(f"{directory / PARAMS_FILE} does not fit {config}: missing leaves "
                         f"{missing[:3]}, unexpected leaves {extra[:3]}")
    for name, want in expected.items():
        if arrays[name].shape != want.shape or arrays[name].dtype != want.dtype:
            raise InputError(f"{directory / PARAMS_FILE}: leaf {name} has shape "
                             f"{arrays[name].shape} {arrays[name].dtype}, expected "
                             f"{want.shape} {want.dtype}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = [jax.numpy.asarray(arrays[jax.tree_util.keystr(p)]) for p, _ in flat]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _check_members_agree(member_dirs, records) -> None:
    """Every member's config and preprocessing must equal member 0's (`model.json` records)."""
    for directory, record in zip(member_dirs[1:], records[1:]):
        for key in ("config", "preprocessing"):
            if record[key] != records[0][key]:
                differences = ensemble.field_differences(records[0][key], record[key])
                raise InputError(f"ensemble member {directory} has another {key} than member "
                                 f"{member_dirs[0]} ({differences}); the members of an "
                                 f"ensemble must share their config and preprocessing")


def ensemble_member_dirs(directory: pathlib.Path) -> list:
    """The member directories listed by `directory/ensemble.json`, checked."""
    path = directory / ENSEMBLE_FILE
    record = json.loads(path.read_text())
    if record.get("format") != ENSEMBLE_FORMAT or record.get("version") != ENSEMBLE_VERSION:
        raise InputError(f"{path}: format {record.get('format')!r} version "
                         f"{record.get('version')!r}, expected {ENSEMBLE_FORMAT!r} version "
                         f"{ENSEMBLE_VERSION}")
    members = record.get("members")
    if not isinstance(members, list) or not members or not all(
            isinstance(m, str) for m in members):
        raise InputError(f"{path}: members {members!r}, expected a non-empty list of member "
                         f"directories relative to {directory}")
    return [directory / m for m in members]


def _load_ensemble(directory: pathlib.Path) -> TrainedModel:
    member_dirs = ensemble_member_dirs(directory)
    records = [_read_record(d) for d in member_dirs]
    _check_members_agree(member_dirs, records)
    config = GlowConfig(**records[0]["config"])
    template = _template(config)
    params = ensemble.stack([_read_params(d, template) for d in member_dirs])
    return TrainedModel(config, params, Preprocessing.from_dict(records[0]["preprocessing"]))


def load(path) -> TrainedModel:
    """Read the `TrainedModel` saved in the directory `path` (or a training workdir).

    A directory holding `ensemble.json` gives the ensemble of its members (`EnsembleParams`).

    Raises:
      FileNotFoundError: `path` (or a member) lacks `model.json` or `params.npz`.
      InputError (a `ValueError`): unknown format, a checksum mismatch, leaves whose names or
        shapes do not match the configuration (naming the first difference), or ensemble
        members whose config or preprocessing differ (naming the first differing member and
        the fields).
    """
    directory = pathlib.Path(path)
    if (directory / ENSEMBLE_FILE).is_file():
        return _load_ensemble(directory)
    record = _read_record(directory)
    config = GlowConfig(**record["config"])
    params = _read_params(directory, _template(config))
    return TrainedModel(config, params, Preprocessing.from_dict(record["preprocessing"]))


def save_ensemble(path, member_dirs) -> None:
    """Write `path/ensemble.json` (atomically; `path` created if needed) listing `member_dirs`.

    `member_dirs`: a non-empty sequence of model directories (`jglow.save`, training workdirs),
    recorded relative to `path`; `jglow.load(path)` then reads the ensemble.

    Raises:
      FileNotFoundError: a member lacks `model.json` or `params.npz`.
      ValueError: no members.
      InputError (a `ValueError`): a member torn or of another format, or members whose config
        or preprocessing differ (naming the first differing member and the fields).
    """
    directory = pathlib.Path(path)
    if isinstance(member_dirs, (str, os.PathLike)):
        raise TypeError(f"member_dirs must be a sequence of model directories, got the single "
                        f"path {member_dirs!r}")
    member_dirs = [pathlib.Path(d) for d in member_dirs]
    if not member_dirs:
        raise ValueError("an ensemble needs at least one member directory; got none")
    _check_members_agree(member_dirs, [_read_record(d) for d in member_dirs])
    directory.mkdir(parents=True, exist_ok=True)
    members = [pathlib.Path(os.path.relpath(d, directory)).as_posix() for d in member_dirs]
    record = {"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION, "members": members}
    replace_atomically(directory / ENSEMBLE_FILE,
                        lambda handle: handle.write(json.dumps(record, indent=2).encode()))
