"""The workdir: which run it holds (`run.json`) and its orbax checkpoints (`checkpoints/`).

A checkpoint holds the whole `TrainState` (parameters, optimiser and schedule state, step, RNG,
counters) and a JSON record: the data-order position (epoch and index within it), the run's
configuration, the fitted preprocessing and the SHA-256 of all that (`checksum`). Orbax writes
each checkpoint to a temporary directory and renames it when complete, so a run killed at any
moment leaves the previous ones intact. Kept: the latest `keep` checkpoints and the one with the
best validation NLL.

A resumed run restores the newest checkpoint that orbax can read, whose checksum matches and
whose parameters are finite; each newer one is named in a `warning:` line and left alone (a run
that reaches its step again replaces it). With none usable, the run is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sys
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from jglow import records
from jglow.errors import InputError
from jglow.files import replace_atomically
from jglow.saving import config_record
from jglow.train.config import RESUMABLE_FIELDS, TrainConfig, UsageError

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
RUN_ENTRIES = (RUN_FILE, CHECKPOINT_DIR, "metrics.jsonl", "figures", "split.json",
               "model.json", "params.npz")
"""Everything a run writes in its workdir (and all that `--overwrite` deletes)."""


def flat_fields(record: dict, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flat_fields(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(stored: dict, wanted: dict) -> list[str]:
    """`"field: stored → wanted"` for each field that differs."""
    old, new = flat_fields(stored), flat_fields(wanted)
    return [f"{key}: {old.get(key, '(absent)')!r} → {new.get(key, '(absent)')!r}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def clear_run(workdir: pathlib.Path) -> None:
    """Delete the entries of `RUN_ENTRIES` in `workdir` (nothing else)."""
    for name in RUN_ENTRIES:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_workdir(workdir: pathlib.Path) -> None:
    """`workdir` must be a folder this process can write in, created here if absent; a regular
    file, a path through one, or a folder that cannot be created or written is a `UsageError`
    naming it."""
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {workdir} is a file; expected a folder (new, or holding a "
                         f"run to resume)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--workdir {workdir}: cannot create the folder ({error.strerror}); "
                         f"expected a folder that can be written") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir {workdir}: the folder is not writable; expected a folder "
                         f"that can be written")


def read_run(path) -> dict:
    """The record of the `run.json` at `path` (`TrainConfig.identity`), the fields added after
    it was written at their defaults (`TrainConfig.with_defaults`), every key and its kind
    checked (`InputError` naming the file and the key)."""
    record = TrainConfig.with_defaults(records.read_json(path))
    kinds = {name: kind for name, kind in records.kinds_of(TrainConfig).items()
             if name not in RESUMABLE_FIELDS}
    records.check_keys(record, {"model": records.OBJECT, **kinds}, str(path))
    return dict(record, model=config_record(record["model"], f"{path}: model"))


def read_run_config(path) -> TrainConfig:
    """The `TrainConfig` of the `run.json` at `path` (`read_run`); `InputError` naming the file
    for values it refuses."""
    return records.construct(TrainConfig.from_identity, str(path), read_run(path))


def claim_workdir(workdir, config: TrainConfig, overwrite: bool, write: bool = True) -> None:
    """Tie `workdir` to `config`: a fresh or matching workdir is accepted; one holding a
    different configuration is refused, naming the differences, unless `overwrite`. With
    `write`, a workdir not yet holding `config` gets its `run.json` (after deleting the old
    run's files with `overwrite`); without, this only checks."""
    workdir = pathlib.Path(workdir)
    run_file = workdir / RUN_FILE
    wanted = json.loads(json.dumps(config.identity()))
    if run_file.is_file():
        differences = _differences(read_run(run_file), wanted)
        if differences and not overwrite:
            raise UsageError(
                f"workdir {workdir} holds a run with a different configuration "
                f"({'; '.join(differences)}); resume it with the same flags, choose another "
                f"--workdir, or pass --overwrite to delete it and start afresh")
        if not differences:
            return
    if write:
        if overwrite:
            clear_run(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        record = json.dumps(wanted, indent=2).encode()
        replace_atomically(run_file, lambda handle: handle.write(record))


def open_manager(workdir, keep: int) -> ocp.CheckpointManager:
    """The orbax manager of `workdir/checkpoints`, keeping the latest `keep` checkpoints and
    the best one by the `val_nll` metric."""
    policy = AnyPreservationPolicy([
        LatestN(n=keep),
        # reverse=True sorts descending and BestN keeps the tail: the lowest val_nll.
        BestN(get_metric_fn=lambda metrics: metrics["val_nll"], reverse=True, n=1,
              keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           cleanup_tmp_directories=True, create=True)
    directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
    return ocp.CheckpointManager(directory, item_names=("state", "meta"), options=options)


CHECKSUM_FIELD = "sha256"
"""The field of a checkpoint's JSON record holding its `checksum`."""


def _host(leaf) -> np.ndarray:
    """A numpy copy of `leaf`: a numpy array, or a replicated (or single-device) jax array,
    read through this process's first shard."""
    if isinstance(leaf, jax.Array):
        return np.asarray(leaf.addressable_shards[0].data)
    return np.asarray(leaf)


def checksum(state, meta: dict) -> str:
    """SHA-256 (64 hex digits) of a checkpoint: its JSON record `meta` (keys sorted, without
    `CHECKSUM_FIELD`), then each leaf of `state` in tree order as its dtype, shape and bytes."""
    record = {key: value for key, value in meta.items() if key != CHECKSUM_FIELD}
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
    for leaf in jax.tree_util.tree_leaves(state):
        array = np.ascontiguousarray(_host(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save(manager: ocp.CheckpointManager, state, meta: dict, val_nll: float | None = None):
    """Checkpoint `state` (a pytree of arrays) with the JSON `meta` at step `meta["step"]` and
    their `checksum`, replacing a checkpoint already there (one saved before that step's
    validation, or a damaged one); `val_nll` (finite or None) ranks it for keeping the best.
    Asynchronous."""
    metrics = {"val_nll": val_nll} if val_nll is not None else None
    if meta["step"] in manager.all_steps():
        manager.delete(meta["step"])
    meta = {**meta, CHECKSUM_FIELD: checksum(state, meta)}
    manager.save(meta["step"], metrics=metrics,
                 args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         meta=ocp.args.JsonSave(meta)))


def _first_line(error: Exception, limit: int = 300) -> str:
    """`error` as `"Type: first line of its message"`, at most `limit` characters."""
    lines = str(error).strip().splitlines() or [""]
    return f"{type(error).__name__}: {lines[0]}"[:limit]


def _nonfinite_leaves(state) -> list[str]:
    """The paths of the floating-point leaves of `state`'s parameters, their moving average and
    the optimiser's state (where `state` has such fields; else of every leaf) that hold a NaN
    or infinity. The other fields may be infinite by design (the best validation NLL before
    the first validation)."""
    names = ("params", "ema_params", "opt_state")
    parts = {name: getattr(state, name) for name in names if hasattr(state, name)} or state
    arrays = [(jax.tree_util.keystr(path), _host(leaf))
              for path, leaf in jax.tree_util.tree_leaves_with_path(parts)]
    return [name for name, array in arrays
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array))]


def _restore_step(manager: ocp.CheckpointManager, abstract, step: int):
    """`((state, meta), None)` of the checkpoint at `step`, restored like `abstract`, or
    `(None, why it cannot be used)`."""
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as error:  # orbax and tensorstore raise many kinds on damaged files
        return None, f"it cannot be read: {_first_line(error)}"
    state, meta = restored.state, restored.meta
    if not isinstance(meta, dict) or CHECKSUM_FIELD not in meta:
        return None, f"its record has no {CHECKSUM_FIELD!r} field (written by an older jglow?)"
    actual = checksum(state, meta)
    if actual != meta[CHECKSUM_FIELD]:
        return None, (f"its arrays and record have SHA-256 {actual[:16]}..., expected "
                      f"{meta[CHECKSUM_FIELD][:16]}... (damaged on disk)")
    nonfinite = _nonfinite_leaves(state)
    if nonfinite:
        return None, (f"{len(nonfinite)} of its parameter and optimiser arrays hold NaN or "
                      f"infinity, e.g. {nonfinite[0]}; expected finite values")
    return (state, meta), None


def restore(manager: ocp.CheckpointManager, template, step: int | None = None,
            warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr)):
    """`(state, meta)` of the checkpoint at `step` (default: the newest usable one), laid out
    like `template` (same structure, shapes and shardings), or None when there is none.

    A checkpoint that orbax cannot read, whose `checksum` does not match or whose parameters
    are not finite is named in one `warning: ...` line passed to `warn`, and (without `step`)
    the next older one is tried. `meta` is returned without its checksum.

    Raises:
      InputError: no checkpoint is usable (naming their steps; the warnings say why).
    """
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    directory = pathlib.Path(manager.directory)
    for candidate in steps:
        restored, problem = _restore_step(manager, abstract, candidate)
        if restored is not None:
            state, meta = restored
            return state, {key: value for key, value in meta.items() if key != CHECKSUM_FIELD}
        warn(f"warning: checkpoint {directory / str(candidate)} cannot be used: {problem}; "
             f"{'trying the next older one' if candidate != steps[-1] else 'none left'}")
    if not steps:
        return None
    raise InputError(f"none of the checkpoints in {directory} (steps "
                     f"{', '.join(map(str, steps))}) can be used (warnings above); delete "
                     f"{directory} to train from the start, or choose another --workdir")
