"""`python -m train.main`: train a conditional Glow on HI maps (run with `--help`).

The loop: for each global step, the batch of `(seed, step)` is sharded over the device mesh and
`train_step` runs on every device. At each epoch end: validation NLL on held-out simulations
(and, on synthetic data, the exact NLL of the same maps), the health of the inverse on a few
validation maps (`_inverse_check`: the round-trip error and non-finite samples, with a warning
when unsound), the plateau schedule and early stopping, the best model exported to the workdir
(`jglow.load(workdir)`), a checkpoint, and the figures. A run ends at `--epochs`, `--max-steps`
or early stopping; ending mid-epoch, it validates once more. Re-running the same command resumes
from the newest usable checkpoint (`checkpoints`: a damaged one is skipped with a warning).

One trainer per workdir: process 0 holds the workdir's lock (`lock`) for the whole run, and a
second trainer started on it is refused at once, naming the holder's host and pid.

SIGTERM or Ctrl-C stops the run at the next step or validation batch: it checkpoints the
current step (a validation it cut short is marked as still due, and a resumed run does it
first) and exits with 128 + the signal's number (`stopping`). With several processes
(`--coordinator`), every process checks at start-up that the others run the same flags,
workdir and data (`multihost`), and all stop at the same step.
"""

from __future__ import annotations

import contextlib
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
from jglow.files import replace_atomically
from jglow.train import checkpoints, cli, figures, lock, memory, multihost, parallel
from jglow.train.config import (PRESET_NOTES, TrainConfig, UsageError, build_parser,
                                config_from_args, data_line)
from jglow.train.data import (Data, batch_indices, epoch_training_set, fingerprint, prepare,
                              steps_per_epoch)
from jglow.train.metrics import MetricsLog, inverse_check, inverse_problems, mean_nll, nll_sum
from jglow.train.state import (TrainState, bits_per_dim, end_epoch, init_state, loss_fn,
                         record_validation, train_step)
from jglow.train.stopping import NoSignals, StopRequested, StopSignals, exit_status


class TrainingStopped(cli.Stopped):
    """The run was stopped: too many consecutive non-finite steps."""


class RunInterrupted(RuntimeError):
    """The run stopped on a signal after checkpointing its current step.

    Attributes:
      step: the step checkpointed.
      exit_status: 128 + the signal's number (`stopping.exit_status`).
    """

    def __init__(self, request: StopRequested, step: int, checkpoint: pathlib.Path):
        super().__init__(f"{request.name} at step {step}; checkpoint written to {checkpoint}; "
                         f"run the same command again to resume")
        self.step, self.exit_status = step, exit_status(request.signum)


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
    stop: NoSignals
    clock_origin: float = 0.0
    """`time.perf_counter()` at which the run's training time (`elapsed_s` of the records) was
    0, resumed runs included."""


def total_steps(config: TrainConfig, per_epoch: int) -> int:
    """Steps of the whole run: `epochs` epochs, capped by `max_steps`."""
    total = config.epochs * per_epoch
    return total if config.max_steps is None else min(total, config.max_steps)


def _meta(ctx: _Run, step: int, validated: bool = True) -> dict:
    """The JSON record stored with a checkpoint; `validated` False: the validation due at
    `step` has not been done (a stop cut it short)."""
    epoch, index = divmod(step, ctx.steps_per_epoch)
    return {"step": step, "epoch": epoch, "index": index, "config": ctx.config.identity(),
            "preprocessing": ctx.data.preprocessing.to_dict(), "validated": validated}


def _validation_due(ctx: _Run, step: int, total: int) -> bool:
    """Whether the run validates after `step` steps: at each epoch end and at its last step."""
    return step % ctx.steps_per_epoch == 0 or step == total


def _say(ctx: _Run, message: str) -> None:
    if ctx.main_process:
        tqdm.write(message, file=sys.stderr)


def _inverse_check(ctx: _Run, params) -> dict:
    """`inverse_check` of `params` (host arrays) on one validation map of each simulation the
    figures show (up to `figures.GRID_SIMS`, spread over Ωm), samples drawn with a key fixed by
    the seed."""
    rows = ctx.figure_set.grid[:, 0]
    return inverse_check(params, ctx.data.val.x[rows], ctx.data.val.z[rows],
                         jax.random.key(ctx.config.seed))


def _validate(ctx: _Run, state: TrainState, step: int, epoch_end: bool, functions):
    """Validation, schedule, export of an improved model, figures, record, checkpoint.

    Returns `(state, exported model or None)`.
    """
    config, dim = ctx.config, ctx.config.model.dim
    val_nll = mean_nll(functions["nll"], ctx.mesh, state.ema_params, ctx.data.val.x,
                       ctx.data.val.z, config.batch_size, before_batch=ctx.stop.check)
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
    problems = []
    if ctx.main_process:
        record["inverse"] = _inverse_check(ctx, host.ema_params)
        problems = inverse_problems(record["inverse"]["round_trip_max_abs"],
                                    record["inverse"]["nonfinite_samples"],
                                    record["inverse"]["maps"])
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
    for problem in problems:
        _say(ctx, f"warning: step {step}: {problem}")
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


def _truncate_metrics(ctx: _Run, step: int) -> None:
    """`MetricsLog.truncate_after(step)`, showing its warning."""
    warning = ctx.log.truncate_after(step)
    if warning is not None:
        _say(ctx, warning)


def _resume(ctx: _Run, state: TrainState) -> tuple[TrainState, int, bool]:
    """The newest usable checkpoint's state and step (or `state` and 0), records after it (and
    a torn last record) dropped, and whether the validation due at that step is still to be
    done."""
    restored = checkpoints.restore(ctx.manager, state, warn=lambda line: _say(ctx, line))
    if restored is None:
        _truncate_metrics(ctx, 0)
        return state, 0, False
    state, meta = restored
    if meta["preprocessing"] != ctx.data.preprocessing.to_dict():
        raise UsageError(f"the data changed since the checkpoint at step {meta['step']}: its "
                         f"preprocessing {meta['preprocessing']} differs from the one fitted "
                         f"now {ctx.data.preprocessing.to_dict()}; use --overwrite or another "
                         f"--workdir")
    step = int(parallel.host_value(state.step))
    validation_due = not meta.get("validated", True)
    _truncate_metrics(ctx, step)
    _say(ctx, f"resuming from step {step} (epoch {meta['epoch']}, batch {meta['index']})"
              f"{', validating it first' if validation_due else ''}")
    return state, step, validation_due


def _write_split(ctx: _Run) -> None:
    """`split.json`: the simulations of each split, for evaluating on held-out data later."""
    if ctx.main_process:
        record = {name: np.unique(split.sim).tolist()
                  for name, split in (("train", ctx.data.train), ("val", ctx.data.val))}
        record["test"] = ctx.data.test_sims.tolist()
        text = json.dumps(record).encode()
        replace_atomically(ctx.workdir / "split.json", lambda handle: handle.write(text))


def _stops_early(ctx: _Run, state: TrainState, step: int) -> bool:
    """Whether the run ends by early stopping after the validation at `step` (epoch ends only)."""
    patience = ctx.config.early_stop_patience
    if step % ctx.steps_per_epoch or int(parallel.host_value(state.bad_epochs)) < patience:
        return False
    _say(ctx, f"early stopping: no better validation NLL for {patience} epochs")
    return True


def _stop_if_nonfinite(ctx: _Run, bar, window: list, step: int, clock: float) -> None:
    """Raise `TrainingStopped` when the last `max_nonfinite` steps, up to `step`, were all
    non-finite (`window`: the metrics of the steps not yet logged)."""
    streak = int(window[-1]["nonfinite_streak"])
    if streak == 1:
        _say(ctx, f"step {step}: non-finite loss or gradient; update skipped")
    if streak < ctx.config.max_nonfinite:
        return
    _log_training(ctx, bar, window, step, time.perf_counter() - clock)
    ctx.manager.wait_until_finished()
    ctx.log.write({"kind": "event", "step": step, "epoch": step // ctx.steps_per_epoch,
                   "event": "stopped", "nonfinite_streak": streak})
    bar.close()
    raise TrainingStopped(
        f"{streak} steps in a row (steps {step - streak + 1}–{step}) had a non-finite loss or "
        f"gradient (--max-nonfinite {ctx.config.max_nonfinite}); stopping. Those steps never "
        f"changed the parameters; the last checkpoint (step {ctx.manager.latest_step()}) in "
        f"{ctx.workdir} is intact. Lower --lr or check the data")


def _interrupt(ctx: _Run, request: StopRequested, state: TrainState, step: int,
               validated: bool, saved: int) -> RunInterrupted:
    """After a stop request at `step`: the event recorded and `state` checkpointed (unless the
    checkpoint at `step` exists, `saved == step`), marked as `validated` or not. Returns the
    exception to raise."""
    ctx.log.write({"kind": "event", "step": step, "epoch": step // ctx.steps_per_epoch,
                   "event": "interrupted", "signal": request.name,
                   "elapsed_s": time.perf_counter() - ctx.clock_origin})
    if saved != step:
        checkpoints.save(ctx.manager, state, _meta(ctx, step, validated))
    ctx.manager.wait_until_finished()
    return RunInterrupted(request, step, ctx.workdir / checkpoints.CHECKPOINT_DIR / str(step))


def _train(ctx: _Run, progress: bool) -> RunResult:
    config = ctx.config
    state = initial_state(config, ctx.data, ctx.mesh)
    total = total_steps(config, ctx.steps_per_epoch)
    functions = compiled_functions(config, ctx.mesh, total)
    state, step, validation_due = _resume(ctx, state)
    elapsed = [r["elapsed_s"] for r in ctx.log.read() if r.get("elapsed_s") is not None]
    ctx = ctx._replace(clock_origin=time.perf_counter() - (elapsed[-1] if elapsed else 0.0))
    _write_split(ctx)
    if step >= total and not validation_due:
        _say(ctx, f"nothing to do: the run in {ctx.workdir} is at step {step} of {total}")
        return RunResult(state, None, "already complete")
    n_train = len(ctx.data.train.x)
    bar = tqdm(total=total, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    window, clock, model, reason, saved = [], time.perf_counter(), None, "finished", step
    epoch, train = None, None
    start = step
    try:
        while True:
            if validation_due:
                ctx.stop.begin_work()
                state, exported = _validate(ctx, state, step, step % ctx.steps_per_epoch == 0,
                                            functions)
                memory.release_freed_memory()
                model, saved, validation_due = exported or model, step, False
                if _stops_early(ctx, state, step):
                    reason = "early stopping"
                    break
            if step >= total:
                break
            ctx.stop.check()
            if step // ctx.steps_per_epoch != epoch:
                epoch = step // ctx.steps_per_epoch
                train = epoch_training_set(config, ctx.data, epoch)
            rows = batch_indices(config.seed, step, n_train, config.batch_size)
            x, z = parallel.global_batch(ctx.mesh, train.x[rows], train.z[rows])
            state, metrics = functions["step"](state, x, z)
            window.append(parallel.host_value(metrics))
            if step == start:  # the step has just been compiled
                memory.release_freed_memory()
                ctx.stop.begin_work()
            step += 1
            bar.update(1)
            _stop_if_nonfinite(ctx, bar, window, step, clock)
            if step % config.log_every == 0 or step == total:
                now = time.perf_counter()
                _log_training(ctx, bar, window, step, now - clock)
                window, clock = [], now
            validation_due = _validation_due(ctx, step, total)
            if (not validation_due and config.checkpoint_every
                    and step % config.checkpoint_every == 0):
                checkpoints.save(ctx.manager, state, _meta(ctx, step))
                saved = step
    except StopRequested as request:
        if window:
            _log_training(ctx, bar, window, step, time.perf_counter() - clock)
        bar.close()
        raise _interrupt(ctx, request, state, step, not validation_due, saved) from None
    bar.close()
    if saved != step:
        checkpoints.save(ctx.manager, state, _meta(ctx, step))
    ctx.manager.wait_until_finished()
    return RunResult(state, model, reason)


def _attempt(fn, *args):
    """`(fn(*args), None)`, or `(None, the refusal)` where it raises `UsageError`,
    `DataSpecError` (an unusable `--data`) or `FileNotFoundError`."""
    try:
        return fn(*args), None
    except (UsageError, DataSpecError, FileNotFoundError) as refusal:
        return None, refusal


def _checked_mesh(config: TrainConfig, workdir: pathlib.Path, accelerator: Optional[str],
                  overwrite: bool, held: contextlib.ExitStack) -> jax.sharding.Mesh:
    """The run's device mesh, after checking the devices, the batch and the workdir, and taking
    the workdir's lock (process 0; released when `held` closes)."""
    mesh = parallel.make_mesh(parallel.select_devices(accelerator))
    parallel.check_batch(config.batch_size, mesh)
    checkpoints.check_workdir(workdir)
    checkpoints.claim_workdir(workdir, config, overwrite, write=False)
    if jax.process_index() == 0:
        held.enter_context(lock.hold(workdir))
    return mesh


def run(config: TrainConfig, workdir, accelerator: Optional[str] = None,
        overwrite: bool = False, progress: bool = True,
        stop: Optional[StopSignals] = None) -> RunResult:
    """Train (or resume) the run `config` in `workdir` on every device of `accelerator`,
    stopping at the signals of `stop` (installed by `main`; None: no stopping). Process 0 holds
    the workdir's lock (`lock`) until the run ends.

    Raises:
      UsageError: absent accelerator, batch not divisible by the device count, a workdir
        holding another configuration (without `overwrite`) or in use by another trainer, too
        little data; in a multi-host run, processes given different flags, workdirs or data,
        or another process's refusal.
      DataSpecError (an `InputError`): a `config.data` folder holding several maps files, or
        maps that cannot be block-averaged to the map size.
      FileNotFoundError: a `config.data` path that holds no CAMELS maps.
      InputError: CAMELS files that cannot be used (a bad pixel, a map count that does not
        match the parameter file, ...), a damaged line in the workdir's metrics, no usable
        checkpoint among those in the workdir.
      TrainingStopped: `config.max_nonfinite` non-finite steps in a row.
      RunInterrupted: a stop signal; the current step was checkpointed.
    """
    workdir = pathlib.Path(workdir)
    with contextlib.ExitStack() as held:
        mesh, refusal = _attempt(_checked_mesh, config, workdir, accelerator, overwrite, held)
        multihost.agree({"workdir": str(workdir.absolute()),
                         "configuration": dataclasses.asdict(config)}, refusal)
        data, refusal = _attempt(prepare, config)
        multihost.agree({"data": None if data is None else fingerprint(data)}, refusal)
        main_process = jax.process_index() == 0
        if main_process:
            checkpoints.claim_workdir(workdir, config, overwrite, write=True)
        per_epoch = steps_per_epoch(len(data.train.x), config.batch_size)
        exact = (None if data.exact_val_nll is None
                 else bits_per_dim(np.mean(data.exact_val_nll), config.model.dim))
        manager = checkpoints.open_manager(workdir, config.keep_checkpoints)
        ctx = _Run(config, workdir, mesh, data, main_process, MetricsLog(workdir, main_process),
                   manager, per_epoch, exact, figures.choose(data.val), stop or NoSignals())
        _say(ctx, data_line(config))
        _say(ctx, f"{len(data.train.x)} training / {len(data.val.x)} validation maps "
                  f"({per_epoch} steps per epoch) on {mesh.size} "
                  f"{mesh.devices.flat[0].platform} device(s); workdir {workdir}")
        try:
            return _train(ctx, progress and main_process)
        finally:
            manager.close()


@cli.command
def main(argv=None) -> int:
    """The command line: returns the exit status (0 done, 2 refused, 1 stopped by non-finite
    steps; `cli`), or 128 + the signal's number after SIGTERM (143) or Ctrl-C (130)."""
    args = build_parser().parse_args(argv)
    with StopSignals() as stop:
        try:
            config = config_from_args(args)
            if args.coordinator is not None:
                multihost.connect(args.coordinator, args.num_processes, args.process_id,
                                  args.peer_timeout)
            result = run(config, args.workdir, args.accelerator, args.overwrite,
                         progress=not args.no_progress, stop=stop)
        except RunInterrupted as interruption:
            print(f"interrupted: {interruption}", file=sys.stderr)
            return interruption.exit_status
    final = parallel.host_value(result.state)
    best = bits_per_dim(final.best_val_nll, config.model.dim)
    print(f"{result.reason}: step {int(final.step)}; best validation {best:.4f} bits/dim; "
          f"model in {args.workdir} (jglow.load)")
    if args.preset in PRESET_NOTES:
        print(f"note: {PRESET_NOTES[args.preset]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
