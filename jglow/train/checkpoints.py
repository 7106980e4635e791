"""The workdir: which run it holds (`run.json`) and its orbax checkpoints (`checkpoints/`).

A checkpoint holds the whole `TrainState` (parameters, optimiser and schedule state, step, RNG,
counters) and a JSON record: the data-order position (epoch and index within it), the run's
configuration and the fitted preprocessing. Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a run killed at any moment leaves the previous ones
intact. Kept: the latest `keep` checkpoints and the one with the best validation NLL.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from jglow.files import replace_atomically
from jglow.train.config import TrainConfig, UsageError

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


def claim_workdir(workdir, config: TrainConfig, overwrite: bool, write: bool = True) -> None:
    """Tie `workdir` to `config`: a fresh or matching workdir is accepted; one holding a
    different configuration is refused, naming the differences, unless `overwrite`. With
    `write`, a workdir not yet holding `config` gets its `run.json` (after deleting the old
    run's files with `overwrite`); without, this only checks."""
    workdir = pathlib.Path(workdir)
    run_file = workdir / RUN_FILE
    wanted = json.loads(json.dumps(config.identity()))
    if run_file.is_file():
        differences = _differences(TrainConfig.with_defaults(json.loads(run_file.read_text())),
                                   wanted)
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


def save(manager: ocp.CheckpointManager, state, meta: dict, val_nll: float | None = None):
    """Checkpoint `state` (a pytree of arrays) with the JSON `meta` at step `meta["step"]`,
    replacing a checkpoint already there (one saved before that step's validation); `val_nll`
    (finite or None) ranks it for keeping the best. Asynchronous."""
    metrics = {"val_nll": val_nll} if val_nll is not None else None
    if meta["step"] in manager.all_steps():
        manager.delete(meta["step"])
    manager.save(meta["step"], metrics=metrics,
                 args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         meta=ocp.args.JsonSave(meta)))


def restore(manager: ocp.CheckpointManager, template, step: int | None = None):
    """`(state, meta)` of the checkpoint at `step` (default: the latest complete one), laid out
    like `template` (same structure, shapes and shardings), or None when there is none."""
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta
