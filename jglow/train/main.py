"""`python -m train.main`: train a conditional Glow on HI maps (run with `--help`).

The loop: for each global step, the batch of `(seed, step)` is sharded over the device mesh and
`train_step` runs on every device. At each epoch end: validation NLL on held-out simulations
(and, on synthetic data, the exact NLL of the same maps), the plateau schedule and early
stopping, the best model exported to the workdir (`jglow.load(workdir)`), a checkpoint, and the
figures. A run ends at `--epochs`, `--max-steps` or early stopping; ending mid-epoch, it
validates once more. Re-running the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import NamedTuple, Optional

import jax
import numpy as np
from tqdm import tqdm

import jglow
from jglow.data import DataSpecError
from jglow.saving import TrainedModel
from jglow.train import checkpoints, figures, memory, parallel
from jglow.train.config import (PRESET_NOTES, TrainConfig, UsageError, build_parser,
                          config_from_args)
from jglow.train.data import Data, batch_indices, epoch_training_set, prepare, steps_per_epoch
from jglow.train.metrics import MetricsLog, mean_nll, nll_sum
from jglow.train.state import (TrainState, bits_per_dim, end_epoch, init_state, loss_fn,
                         record_validation, train_step)


class TrainingStopped(RuntimeError):
    """The run was stopped: too many consecutive non-finite steps."""


class RunResult(NamedTuple):
    """What `run` returns.

    Attributes:
      state: the final `TrainState` (replicated on the mesh).
      model: the best model by validation NLL, as exported to the workdir (None if the run
        had no validation).
      reason: why the run ended: "finished", "early stopping" or "already complete".
    """

    state: TrainState
    model: Optional[TrainedModel]
    reason: str


class _Run(NamedTuple):
    """The fixed context of one run, shared by the helpers of `_train`."""

    config: TrainConfig
    workdir: pathlib.Path
    mesh: jax.sharding.Mesh
    data: Data
    main_process: bool
    log: MetricsLog
    manager: object
    steps_per_epoch: int
    exact_bits: Optional[float]
    figure_set: figures.FigureSet
    clock_origin: float = 0.0
    """`time.perf_counter()` at which the run's training time (`elapsed_s` of the records) was
    0, resumed runs included."""


def total_steps(config: TrainConfig, per_epoch: int) -> int:
    """Steps of the whole run: `epochs` epochs, capped by `max_steps`."""
    total = config.epochs * per_epoch
    return total if config.max_steps is None else min(total, config.max_steps)


def _meta(ctx: _Run, step: int) -> dict:
    """The JSON record stored with a checkpoint."""
    epoch, index = divmod(step, ctx.steps_per_epoch)
    return {"step": step, "epoch": epoch, "index": index, "config": ctx.config.identity(),
            "preprocessing": ctx.data.preprocessing.to_dict()}


def _say(ctx: _Run, message: str) -> None:
    if ctx.main_process:
        tqdm.write(message, file=sys.stderr)


def _validate(ctx: _Run, state: TrainState, step: int, epoch_end: bool, functions):
    """Validation, schedule, export of an improved model, figures, record, checkpoint.

    Returns `(state, exported model or None)`.
    """
    config, dim = ctx.config, ctx.config.model.dim
    val_nll = mean_nll(functions["nll"], ctx.mesh, state.ema_params, ctx.data.val.x,
                       ctx.data.val.z, config.batch_size)
    update = functions["end_epoch"] if epoch_end else functions["record"]
    state, improved = update(state, np.float32(val_nll))
    improved = bool(parallel.host_value(improved))
    exported = None
    if improved:
        exported = TrainedModel(config.model, parallel.host_value(state.ema_params),
                                ctx.data.preprocessing)
        if ctx.main_process:
            jglow.save(ctx.workdir, exported)
    finite = bool(np.isfinite(val_nll))
    epoch = step // ctx.steps_per_epoch
    host = parallel.host_value(state)
    record = {"kind": "val", "step": step, "epoch": epoch, "val_nll": val_nll,
              "val_finite": finite, "val_bits_per_dim": bits_per_dim(val_nll, dim),
              "exact_bits_per_dim": ctx.exact_bits,
              "best_val_bits_per_dim": bits_per_dim(host.best_val_nll, dim),
              "improved": improved, "bad_epochs": int(host.bad_epochs),
              "lr_scale": float(host.plateau.scale), "end_of_epoch": epoch_end,
              "elapsed_s": time.perf_counter() - ctx.clock_origin}
    if ctx.main_process and config.figure_every and (
            not epoch_end or epoch % config.figure_every == 0):
        record["nonfinite_samples"] = figures.write(
            ctx.workdir, host.ema_params, ctx.data.preprocessing, ctx.data.val, ctx.figure_set,
            ctx.log.read() + [record], ctx.exact_bits, config.seed, epoch)
    ctx.log.write(record)  # before the checkpoint: a resumption drops it if that is lost
    checkpoints.save(ctx.manager, state, _meta(ctx, step),
                     val_nll if finite and epoch_end else None)
    bits = record["val_bits_per_dim"]
    gap = ("" if ctx.exact_bits is None
           else f", exact {ctx.exact_bits:.4f} (gap {bits - ctx.exact_bits:+.4f})")
    _say(ctx, f"epoch {epoch} step {step}: validation {bits:.4f} "
              f"bits/dim{gap}{' (best)' if improved else ''}")
    return state, exported


def _log_training(ctx: _Run, bar, window: list, step: int, seconds: float) -> None:
    """A training record of the steps in `window` (host metrics dicts)."""
    finite = [m for m in window if m["finite"]]
    loss = float(np.mean([m["loss"] for m in finite])) if finite else float("nan")
    record = {"kind": "train", "step": step, "epoch": step // ctx.steps_per_epoch,
              "loss": loss, "bits_per_dim": loss / np.log(2.0),
              "grad_norm": float(np.mean([m["grad_norm"] for m in finite])) if finite else None,
              "learning_rate": float(window[-1]["learning_rate"]),
              "skipped": len(window) - len(finite),
              "nonfinite_total": int(window[-1]["nonfinite_total"]),
              "steps_per_s": len(window) / seconds}
    ctx.log.write(record)
    bar.set_postfix(loss=f"{loss:.4f}", bpd=f"{record['bits_per_dim']:.4f}",
                    skipped=record["nonfinite_total"], refresh=False)


def compiled_functions(config: TrainConfig, mesh, total: int) -> dict:
    """The jitted functions of a run of `total` steps, laid out on `mesh`; cached per
    (`config.canonical()` without its seed, mesh, total), so runs, resumptions and the members
    of an ensemble in one process compile them once (a step reads its randomness from the
    state, never from `config.seed`)."""
    return _compiled_functions(dataclasses.replace(config.canonical(), seed=0), mesh, total)


@functools.lru_cache(maxsize=4)
def _compiled_functions(config: TrainConfig, mesh, total: int) -> dict:
    on_mesh = parallel.jit_on_mesh
    loss_and_grad = parallel.reduce_over_shards(jax.value_and_grad(loss_fn), mesh)
    step = functools.partial(train_step, config, total, loss_and_grad=loss_and_grad)
    return {"step": on_mesh(step, mesh, 1, 2, donate_first=True),
            "end_epoch": on_mesh(functools.partial(end_epoch, config), mesh, 2, 0),
            "record": on_mesh(record_validation, mesh, 2, 0),
            "nll": on_mesh(parallel.reduce_over_shards(nll_sum, mesh, jax.lax.psum),
                           mesh, 1, 3)}


def initial_state(config: TrainConfig, data: Data, mesh) -> TrainState:
    """The state before the first step, replicated on `mesh`. Parameters are initialised on
    the run's first batch (data-dependent ActNorm, if enabled)."""
    init_key, augment_key = jax.random.split(jax.random.key(config.seed))
    first = batch_indices(config.seed, 0, len(data.train.x), config.batch_size)
    params = jglow.init(init_key, config.model, data.train.x[first], data.train.z[first])
    return parallel.replicate(mesh, init_state(config, params, augment_key))


def _resume(ctx: _Run, state: TrainState) -> tuple[TrainState, int]:
    """The latest checkpoint's state and step (or `state` and 0), records after it dropped."""
    restored = checkpoints.restore(ctx.manager, state)
    if restored is None:
        return state, 0
    state, meta = restored
    if meta["preprocessing"] != ctx.data.preprocessing.to_dict():
        raise UsageError(f"the data changed since the checkpoint at step {meta['step']}: its "
                         f"preprocessing {meta['preprocessing']} differs from the one fitted "
                         f"now {ctx.data.preprocessing.to_dict()}; use --overwrite or another "
                         f"--workdir")
    step = int(parallel.host_value(state.step))
    ctx.log.truncate_after(step)
    _say(ctx, f"resuming from step {step} (epoch {meta['epoch']}, batch {meta['index']})")
    return state, step


def _write_split(ctx: _Run) -> None:
    """`split.json`: the simulations of each split, for evaluating on held-out data later."""
    if ctx.main_process:
        record = {name: np.unique(split.sim).tolist()
                  for name, split in (("train", ctx.data.train), ("val", ctx.data.val))}
        record["test"] = ctx.data.test_sims.tolist()
        (ctx.workdir / "split.json").write_text(json.dumps(record))


def _train(ctx: _Run, progress: bool) -> RunResult:
    config = ctx.config
    state = initial_state(config, ctx.data, ctx.mesh)
    total = total_steps(config, ctx.steps_per_epoch)
    functions = compiled_functions(config, ctx.mesh, total)
    state, step = _resume(ctx, state)
    elapsed = [r["elapsed_s"] for r in ctx.log.read() if r.get("elapsed_s") is not None]
    ctx = ctx._replace(clock_origin=time.perf_counter() - (elapsed[-1] if elapsed else 0.0))
    _write_split(ctx)
    if step >= total:
        _say(ctx, f"nothing to do: the run in {ctx.workdir} is at step {step} of {total}")
        return RunResult(state, None, "already complete")
    n_train = len(ctx.data.train.x)
    bar = tqdm(total=total, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    window, clock, model, reason, saved = [], time.perf_counter(), None, "finished", step
    epoch, train = None, None
    start = step
    while step < total:
        if step // ctx.steps_per_epoch != epoch:
            epoch = step // ctx.steps_per_epoch
            train = epoch_training_set(config, ctx.data, epoch)
        rows = batch_indices(config.seed, step, n_train, config.batch_size)
        x, z = parallel.global_batch(ctx.mesh, train.x[rows], train.z[rows])
        state, metrics = functions["step"](state, x, z)
        metrics = parallel.host_value(metrics)
        if step == start:  # the step has just been compiled
            memory.release_freed_memory()
        step += 1
        window.append(metrics)
        bar.update(1)
        streak = int(metrics["nonfinite_streak"])
        if streak == 1:
            _say(ctx, f"step {step}: non-finite loss or gradient; update skipped")
        if streak >= config.max_nonfinite:
            _log_training(ctx, bar, window, step, time.perf_counter() - clock)
            ctx.manager.wait_until_finished()
            ctx.log.write({"kind": "event", "step": step, "epoch": step // ctx.steps_per_epoch,
                           "event": "stopped", "nonfinite_streak": streak})
            bar.close()
            raise TrainingStopped(
                f"{streak} steps in a row (steps {step - streak + 1}–{step}) had a non-finite "
                f"loss or gradient (--max-nonfinite {config.max_nonfinite}); stopping. Those "
                f"steps never changed the parameters; the last checkpoint "
                f"(step {ctx.manager.latest_step()}) in {ctx.workdir} is intact. Lower --lr or "
                f"check the data")
        if step % config.log_every == 0 or step == total:
            now = time.perf_counter()
            _log_training(ctx, bar, window, step, now - clock)
            window, clock = [], now
        epoch_end = step % ctx.steps_per_epoch == 0
        if epoch_end or step == total:
            state, exported = _validate(ctx, state, step, epoch_end, functions)
            memory.release_freed_memory()
            model, saved = exported or model, step
            bad_epochs = int(parallel.host_value(state.bad_epochs))
            if epoch_end and bad_epochs >= config.early_stop_patience:
                reason = "early stopping"
                _say(ctx, f"early stopping: no better validation NLL for "
                          f"{config.early_stop_patience} epochs")
                break
        elif config.checkpoint_every and step % config.checkpoint_every == 0:
            checkpoints.save(ctx.manager, state, _meta(ctx, step))
            saved = step
    bar.close()
    if saved != step:
        checkpoints.save(ctx.manager, state, _meta(ctx, step))
    ctx.manager.wait_until_finished()
    return RunResult(state, model, reason)


def run(config: TrainConfig, workdir, accelerator: Optional[str] = None,
        overwrite: bool = False, progress: bool = True) -> RunResult:
    """Train (or resume) the run `config` in `workdir` on every device of `accelerator`.

    Raises:
      UsageError: absent accelerator, batch not divisible by the device count, a workdir
        holding another configuration (without `overwrite`), unusable data.
      FileNotFoundError: a `config.data` path that holds no CAMELS maps.
      TrainingStopped: `config.max_nonfinite` non-finite steps in a row.
    """
    mesh = parallel.make_mesh(parallel.select_devices(accelerator))
    parallel.check_batch(config.batch_size, mesh)
    workdir = pathlib.Path(workdir)
    main_process = jax.process_index() == 0
    checkpoints.claim_workdir(workdir, config, overwrite, write=False)
    data = prepare(config)
    if main_process:
        checkpoints.claim_workdir(workdir, config, overwrite, write=True)
    per_epoch = steps_per_epoch(len(data.train.x), config.batch_size)
    exact = (None if data.exact_val_nll is None
             else bits_per_dim(np.mean(data.exact_val_nll), config.model.dim))
    manager = checkpoints.open_manager(workdir, config.keep_checkpoints)
    ctx = _Run(config, workdir, mesh, data, main_process, MetricsLog(workdir, main_process),
               manager, per_epoch, exact, figures.choose(data.val))
    _say(ctx, f"{len(data.train.x)} training / {len(data.val.x)} validation maps "
              f"({per_epoch} steps per epoch) on {mesh.size} {mesh.devices.flat[0].platform} "
              f"device(s); workdir {workdir}")
    try:
        return _train(ctx, progress and main_process)
    finally:
        manager.close()


def main(argv=None) -> int:
    """The command line: returns the exit status (0 done, 2 refused, 1 stopped)."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        if args.coordinator is not None:
            jax.distributed.initialize(coordinator_address=args.coordinator,
                                       num_processes=args.num_processes,
                                       process_id=args.process_id)
        result = run(config, args.workdir, args.accelerator, args.overwrite,
                     progress=not args.no_progress)
    except (UsageError, DataSpecError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as error:
        print(f"stopped: {error}", file=sys.stderr)
        return 1
    final = parallel.host_value(result.state)
    best = bits_per_dim(final.best_val_nll, config.model.dim)
    print(f"{result.reason}: step {int(final.step)}; best validation {best:.4f} bits/dim; "
          f"model in {args.workdir} (jglow.load)")
    if args.preset in PRESET_NOTES:
        print(f"note: {PRESET_NOTES[args.preset]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
