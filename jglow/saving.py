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

from jglow import ensemble, records
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
RECORD_KINDS = {"format": records.TEXT, "version": records.INT, "config": records.OBJECT,
                "preprocessing": records.OBJECT, "params_sha256": records.TEXT}
"""The keys of `model.json` and the kinds of their values (`jglow.records`)."""
PREPROCESSING_KINDS = {"method": records.TEXT, "center": records.NUMBER,
                       "scale": records.NUMBER, "box": records.PAIRS}
"""The keys of `model.json`'s preprocessing (`Preprocessing.to_dict`)."""
CONFIG_ADDED_LATER = {"padding": "zero"}
"""`GlowConfig` fields added after the first records were written, at the value the models of
those records have: a record without them reads as it always did."""
ENSEMBLE_KINDS = {"format": records.TEXT, "version": records.INT, "members": records.TEXTS}
"""The keys of `ensemble.json`."""


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
    record = records.read_json(config_path)
    if record.get("format") != FORMAT or record.get("version") != VERSION:
        raise InputError(f"{config_path}: format {record.get('format')!r} version "
                         f"{record.get('version')!r}, expected {FORMAT!r} version {VERSION}")
    records.check_keys(record, RECORD_KINDS, str(config_path))
    record = dict(record, config=config_record(record["config"], f"{config_path}: config"))
    records.check_keys(record["preprocessing"], PREPROCESSING_KINDS,
                       f"{config_path}: preprocessing")
    if record["params_sha256"] != _sha256(params_path):
        raise InputError(f"{params_path} does not match the checksum in {config_path}: the pair "
                         f"was torn (e.g. a crash while saving); save the model again")
    return record


def config_record(config: dict, source: str) -> dict:
    """A `GlowConfig`'s record (`model.json`'s config, `run.json`'s model) with
    `CONFIG_ADDED_LATER` filled in, its keys and their kinds checked (`InputError` naming
    `source`)."""
    config = {**CONFIG_ADDED_LATER, **config}
    records.check_keys(config, records.kinds_of(GlowConfig), source)
    return config


def _model_of(record: dict, directory: pathlib.Path):
    """`(GlowConfig, Preprocessing)` of a checked `model.json` record; `InputError` naming the
    file for values they refuse."""
    source = str(directory / CONFIG_FILE)
    return (records.construct(GlowConfig, source, **record["config"]),
            records.construct(Preprocessing.from_dict, source, record["preprocessing"]))


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


def _check_members_agree(member_dirs, member_records) -> None:
    """Every member's config and preprocessing must equal member 0's (`model.json` records)."""
    first = member_records[0]
    for directory, record in zip(member_dirs[1:], member_records[1:]):
        for key in ("config", "preprocessing"):
            if record[key] != first[key]:
                differences = ensemble.field_differences(first[key], record[key])
                raise InputError(f"ensemble member {directory} has another {key} than member "
                                 f"{member_dirs[0]} ({differences}); the members of an "
                                 f"ensemble must share their config and preprocessing")


def ensemble_member_dirs(directory: pathlib.Path) -> list:
    """The member directories listed by `directory/ensemble.json`, checked."""
    path = directory / ENSEMBLE_FILE
    record = records.read_json(path)
    if record.get("format") != ENSEMBLE_FORMAT or record.get("version") != ENSEMBLE_VERSION:
        raise InputError(f"{path}: format {record.get('format')!r} version "
                         f"{record.get('version')!r}, expected {ENSEMBLE_FORMAT!r} version "
                         f"{ENSEMBLE_VERSION}")
    records.check_keys(record, ENSEMBLE_KINDS, f"{path} (members: directories relative to "
                                               f"{directory})")
    return [directory / m for m in record["members"]]


def _load_ensemble(directory: pathlib.Path) -> TrainedModel:
    member_dirs = ensemble_member_dirs(directory)
    member_records = [_read_record(d) for d in member_dirs]
    _check_members_agree(member_dirs, member_records)
    config, preprocessing = _model_of(member_records[0], member_dirs[0])
    template = _template(config)
    params = ensemble.stack([_read_params(d, template) for d in member_dirs])
    return TrainedModel(config, params, preprocessing)


def load(path) -> TrainedModel:
    """Read the `TrainedModel` saved in the directory `path` (or a training workdir).

    A directory holding `ensemble.json` gives the ensemble of its members (`EnsembleParams`).

    Raises:
      FileNotFoundError: `path` (or a member) lacks `model.json` or `params.npz`.
      InputError (a `ValueError`): unknown format, a `model.json` or `ensemble.json` that is
        not valid JSON or has a missing or unknown key or a value of the wrong kind or range
        (naming the file, the key and the value), a checksum mismatch, leaves whose names or
        shapes do not match the configuration (naming the first difference), or ensemble
        members whose config or preprocessing differ (naming the first differing member and
        the fields).
    """
    directory = pathlib.Path(path)
    if (directory / ENSEMBLE_FILE).is_file():
        return _load_ensemble(directory)
    config, preprocessing = _model_of(_read_record(directory), directory)
    params = _read_params(directory, _template(config))
    return TrainedModel(config, params, preprocessing)


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
