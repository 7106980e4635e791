"""The trainer end to end on a tiny model (16×16 synthetic maps, 2 levels × 2 steps, hidden 8).

One uninterrupted reference run (module fixture) is shared: it must learn, write its files and
export a loadable model, and a run of the same flags killed with SIGKILL and resumed must end
on exactly its state. Copies of its workdir with torn metrics or damaged checkpoints are resumed.
"""

import functools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jglow
from helpers import wait_until
from jglow.data import synthetic_maps
from jglow.errors import InputError
from jglow.train import checkpoints, figures, parallel
from jglow.train.config import TrainConfig, UsageError, build_parser, config_from_args
from jglow.train.data import prepare
from jglow.train.lock import hold
from jglow.train.main import (RunInterrupted, RunResult, TrainingStopped, compiled_functions,
                              initial_state, main, run)
from jglow.train.metrics import parse_records
from jglow.train.state import (CONDITION_NOISE_STREAM, end_epoch, init_state, learning_rate,
                               loss_fn, record_validation)
from jglow.train.stopping import NoSignals, StopRequested, StopSignals

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ["--map-size", "16", "--levels", "2", "--steps", "2", "--hidden", "8", "--n-sims", "20",
         "--batch-size", "16", "--epochs", "3", "--warmup-steps", "5", "--no-progress"]
"""240 training maps: 15 steps per epoch, 45 in all."""
TOTAL_STEPS = 45


def tiny(*extra) -> TrainConfig:
    return config_from_args(build_parser().parse_args(FLAGS + list(extra)))


@functools.lru_cache(maxsize=1)
def tiny_data():
    """`prepare(tiny())`, once per process (every flag of `tiny` uses the same data)."""
    return prepare(tiny())


def saved_state(config: TrainConfig, workdir, step=None):
    """`(state as host arrays, meta)` of the checkpoint at `step` (default latest) in `workdir`."""
    mesh = parallel.make_mesh(jax.devices())
    template = initial_state(config, tiny_data(), mesh)
    manager = checkpoints.open_manager(workdir, config.keep_checkpoints)
    state, meta = checkpoints.restore(manager, template, step)
    manager.close()
    return parallel.host_value(state), meta


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[pathlib.Path, RunResult]:
    workdir = tmp_path_factory.mktemp("reference")
    return workdir, run(tiny("--checkpoint-every", "7", "--figure-every", "3"), workdir,
                        progress=False)


def test_training_lowers_the_loss_and_writes_its_files(reference):
    workdir, result = reference
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["epoch"] for r in val] == [1, 2, 3]
    assert val[-1]["val_bits_per_dim"] < val[0]["val_bits_per_dim"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert all(r["nonfinite_total"] == 0 for r in train)
    assert val[0]["exact_bits_per_dim"] < val[-1]["val_bits_per_dim"]  # the best possible
    assert result.reason == "finished" and int(result.state.step) == TOTAL_STEPS
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == TOTAL_STEPS
    for name in ("samples.png", "loss.png", "power.png"):
        size = (workdir / "figures" / name).stat().st_size
        assert 5_000 < size < 200_000, (name, size)
    split = json.loads((workdir / "split.json").read_text())
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))


def test_validation_records_the_health_of_the_inverse(reference):
    workdir, _ = reference
    val = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["kind"] == "val"]
    shown = min(figures.GRID_SIMS, len(np.unique(tiny_data().val.sim)))
    for record in val:
        assert set(record["inverse"]) == {"maps", "round_trip_max_abs", "nonfinite_samples"}
        assert record["inverse"]["maps"] == shown
        assert 0.0 <= record["inverse"]["round_trip_max_abs"] < 1e-5
        assert record["inverse"]["nonfinite_samples"] == 0


def test_loaded_model_matches_the_trainer(reference):
    workdir, result = reference
    loaded = jglow.load(workdir)
    assert loaded.config == result.model.config
    assert loaded.preprocessing == result.model.preprocessing
    data = tiny_data()
    log_p = np.asarray(jglow.log_prob(loaded.params, data.val.x, data.val.z))
    np.testing.assert_array_equal(
        log_p, np.asarray(jglow.log_prob(result.model.params, data.val.x, data.val.z)))
    best = min(r["val_nll"] for r in map(json.loads, (workdir / "metrics.jsonl").open())
               if r["kind"] == "val")
    np.testing.assert_allclose(-np.mean(log_p), best, rtol=1e-5)


def test_constants_of_the_invertible_convolutions_never_move(reference):
    _, result = reference
    config = tiny()
    start = initial_state(config, tiny_data(), parallel.make_mesh(jax.devices()))
    mask = jax.tree_util.tree_leaves(jglow.trainable_mask(start.params))
    before = jax.tree_util.tree_leaves(start.params)
    after = jax.tree_util.tree_leaves(result.state.params)
    frozen = [(b, a) for trainable, b, a in zip(mask, before, after) if not trainable]
    assert frozen and all(np.array_equal(b, a) for b, a in frozen)
    assert not all(np.array_equal(b, a) for trainable, b, a in zip(mask, before, after)
                   if trainable)


def test_sigkilled_run_resumes_to_the_same_state(reference, tmp_path):
    _, uninterrupted = reference
    command = [sys.executable, "-m", "train.main", *FLAGS, "--workdir", str(tmp_path / "w"),
               "--checkpoint-every", "3", "--figure-every", "0"]
    # The resumed process reuses what the killed one compiled.
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "compiled"))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoint_dir = tmp_path / "w" / "checkpoints"
    while process.poll() is None and not (
            checkpoint_dir.is_dir() and any(p.name.isdigit() for p in checkpoint_dir.iterdir())):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = max(int(p.name) for p in checkpoint_dir.iterdir() if p.name.isdigit())
    assert killed_at < TOTAL_STEPS
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    resumed, meta = saved_state(tiny(), tmp_path / "w")
    assert meta["step"] == TOTAL_STEPS and meta["epoch"] == 3 and meta["index"] == 0
    _same_state(parallel.host_value(uninterrupted.state), resumed)
    lines = (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()
    records = [(r["step"], r["kind"]) for r in map(json.loads, lines)]
    assert records == sorted(records, key=lambda r: r[0]) and len(set(records)) == len(records)


def _same_state(expected, resumed) -> None:
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(expected),
                            jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _logged_step(workdir: pathlib.Path, step: int) -> bool:
    path = workdir / "metrics.jsonl"
    return path.is_file() and f'"step": {step},' in path.read_text()


def _signalled_run(command, env, log, signum, wait_s, ready, what):
    """Start `command` (stderr to the file `log`), send it `signum` once `ready()` (waiting up to
    `wait_s` s for `what`); returns (exit status, seconds from the signal to the exit, stderr)."""
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    wait_until(ready, [process], wait_s, what, [log])
    sent = time.monotonic()
    process.send_signal(signum)
    status = process.wait(timeout=60)
    return status, time.monotonic() - sent, log.read_text()


def test_sigterm_checkpoints_the_current_step_and_the_resumed_run_ends_the_same(
        reference, tmp_path):
    _, uninterrupted = reference
    workdir, log = tmp_path / "w", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "train.main", *FLAGS, "--workdir", str(workdir),
               "--figure-every", "0"]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "compiled"))
    status, seconds, error = _signalled_run(command, env, log, signal.SIGTERM, 300,
                                            lambda: _logged_step(workdir, 10),
                                            "the record of step 10")
    assert status == 143, error[-3000:]
    assert seconds < 10
    stopped_at = int(error.split("interrupted: SIGTERM at step ")[1].split(";")[0])
    assert 10 <= stopped_at < TOTAL_STEPS
    assert f"checkpoint written to {workdir / 'checkpoints' / str(stopped_at)}" in error
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert max(steps) == stopped_at  # the latest checkpoint is the stop's
    state, meta = saved_state(tiny(), workdir)
    assert int(state.step) == stopped_at
    if stopped_at != 15:  # at 15, the stop may have cut the epoch's validation short
        assert meta["validated"] is True
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {key: records[-1][key] for key in ("kind", "event", "signal", "step")} == {
        "kind": "event", "event": "interrupted", "signal": "SIGTERM", "step": stopped_at}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from step {stopped_at}" in done.stderr
    resumed, meta = saved_state(tiny(), workdir)
    assert meta["step"] == TOTAL_STEPS
    _same_state(parallel.host_value(uninterrupted.state), resumed)


def test_ctrl_c_before_the_first_step_exits_at_once_with_nothing_written(tmp_path):
    workdir, log = tmp_path / "w", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "train.main", *FLAGS, "--workdir", str(workdir)]
    # printed just before the state is initialised and the first step compiled
    status, seconds, error = _signalled_run(
        command, None, log, signal.SIGINT, 120,
        lambda: "240 training / 30 validation maps" in log.read_text(), "the start-up line")
    assert status == 130, error[-3000:]
    assert seconds < 5
    assert ("interrupted by SIGINT before the run did any work: nothing to checkpoint, the "
            "workdir is as it was") in error
    assert not list((workdir / "checkpoints").iterdir())
    assert not (workdir / "metrics.jsonl").exists()


class StopAtCheck(NoSignals):
    """A stop request (SIGTERM) at the `n`-th check of the training loop."""

    def __init__(self, n: int):
        self.left, self.begun = n, False

    def begin_work(self):
        self.begun = True

    def check(self):
        self.left -= 1
        if self.left == 0:
            raise StopRequested(signal.SIGTERM)


def test_a_validation_cut_short_is_done_first_when_the_run_resumes(reference, tmp_path):
    _, uninterrupted = reference
    config = tiny("--figure-every", "0")
    stop = StopAtCheck(17)  # a check before each of steps 1-15, then before each val batch
    with pytest.raises(RunInterrupted, match="SIGTERM at step 15; checkpoint written to") as cut:
        run(config, tmp_path, progress=False, stop=stop)
    assert cut.value.step == 15 and cut.value.exit_status == 143 and stop.begun
    state, meta = saved_state(config, tmp_path)
    assert int(state.step) == 15 and meta["validated"] is False
    assert float(state.best_val_nll) == np.inf  # the validation did not happen
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records if r["step"] == 15] == ["train", "event"]
    result = run(config, tmp_path, progress=False)
    _same_state(parallel.host_value(uninterrupted.state), parallel.host_value(result.state))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [1, 2, 3]
    _, meta = saved_state(config, tmp_path, 15)
    assert meta["validated"] is True  # replaced by the resumed run's checkpoint


def test_stop_signals_note_the_first_signal_and_put_the_handlers_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        stop.begin_work()
        stop.check()  # no signal yet
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(StopRequested, match="SIGINT") as raised:
            stop.check()
        assert raised.value.signum == signal.SIGINT and stop.received == signal.SIGINT
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


SECOND_SIGNAL = r"""
import time
from jglow.train.stopping import StopSignals
with StopSignals() as stop:
    stop.begin_work()
    print("working", flush=True)
    time.sleep(60)  # like a main thread held in a compilation or a collective
"""


def test_a_second_signal_ends_a_busy_process_at_once(tmp_path):
    out, log = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL], cwd=REPO,
                                   stdout=stdout, stderr=stderr)
    try:
        wait_until(lambda: out.read_text() == "working\n", [process], 60, "working", [log])
        process.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=1)  # noted, for the loop's next check
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 130
        assert time.monotonic() - sent < 2
    finally:
        process.kill()
    assert log.read_text() == ("interrupted by SIGINT a second time: ending at once, without a "
                               "checkpoint (those written before are intact)\n")


def test_rerun_of_a_finished_run_does_nothing(reference, capsys):
    workdir, _ = reference
    assert main(FLAGS + ["--workdir", str(workdir)]) == 0
    assert "already complete" in capsys.readouterr().out


def test_workdir_with_another_configuration_is_refused(reference, capsys):
    workdir, _ = reference
    assert main(FLAGS + ["--workdir", str(workdir), "--hidden", "4"]) == 2
    error = capsys.readouterr().err
    assert "different configuration" in error and "model.hidden: 8 → 4" in error
    assert "--overwrite" in error


def test_overwrite_deletes_only_the_run_files(tmp_path):
    checkpoints.claim_workdir(tmp_path, tiny(), overwrite=False)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    checkpoints.claim_workdir(tmp_path, tiny("--hidden", "4"), overwrite=True)
    assert not (tmp_path / "metrics.jsonl").exists() and (tmp_path / "notes.txt").exists()
    assert json.loads((tmp_path / "run.json").read_text())["model"]["hidden"] == 4


@pytest.mark.parametrize("accelerator", ["gpu", "tpu"])
def test_absent_accelerator_is_refused(accelerator, tmp_path, capsys):
    assert main(FLAGS + ["--workdir", str(tmp_path), "--accelerator", accelerator]) == 2
    error = capsys.readouterr().err
    assert f"--accelerator {accelerator}" in error and "CpuDevice" in error


def test_bad_data_path_is_refused(tmp_path, capsys):
    missing = tmp_path / "no_such_maps.npy"
    assert main(FLAGS + ["--workdir", str(tmp_path / "w"), "--data", str(missing)]) == 2
    error = capsys.readouterr().err
    assert str(missing) in error and "synthetic" in error
    assert not (tmp_path / "w" / "run.json").exists()  # nothing claimed by a failed start


def test_too_many_nonfinite_steps_stop_the_run(tmp_path):
    config = tiny("--lr", "1e30", "--max-nonfinite", "3", "--checkpoint-every", "1",
                  "--figure-every", "0")
    with pytest.raises(TrainingStopped, match=r"3 steps in a row .* last checkpoint \(step 3\)"):
        run(config, tmp_path, progress=False)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert steps == [1, 2, 3]
    first, _ = saved_state(config, tmp_path, 1)
    last, _ = saved_state(config, tmp_path, 3)  # steps 2 and 3 were skipped
    for a, b in zip(*(jax.tree_util.tree_leaves(s.params) for s in (first, last))):
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)
    assert int(last.nonfinite_total) == 2 and int(last.step) == 3
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "stopped" and records[-2]["skipped"] == 3


def test_best_checkpoint_is_kept_beside_the_latest(tmp_path):
    manager = checkpoints.open_manager(tmp_path, keep=2)
    for step, val_nll in enumerate([3.0, 1.0, 4.0, 5.0, 6.0], start=1):
        checkpoints.save(manager, {"w": np.full(2, step, np.float32)}, {"step": step}, val_nll)
        manager.wait_until_finished()
    assert manager.all_steps() == [2, 4, 5]
    manager.close()


def test_indices_of_an_epoch_cover_the_training_set_once():
    from jglow.train.data import batch_indices
    seen = np.concatenate([batch_indices(7, step, 50, 8) for step in range(6)])
    assert len(np.unique(seen)) == 48
    np.testing.assert_array_equal(batch_indices(7, 6, 50, 8), batch_indices(7, 6, 50, 8))
    assert not np.array_equal(batch_indices(7, 6, 50, 8)[:8], seen[:8])


FOUR_DEVICES = r"""
import json, sys, tempfile
sys.path.insert(0, "tests")  # test_train imports helpers, as under pytest
import jax
import numpy as np
from tests.test_train import one_step, tiny
from jglow.train import parallel
from jglow.train.config import UsageError
from jglow.train.main import run

report = one_step(parallel.make_mesh(jax.devices()))
np.savez(sys.argv[1], *report.pop("params"))
try:
    run(tiny("--batch-size", "6"), tempfile.mkdtemp(), progress=False)
except UsageError as error:
    report["indivisible"] = str(error)
print(json.dumps(report))
"""


def one_step(mesh) -> dict:
    """One training step of `tiny()` from its initial state on the first 16 training maps,
    on `mesh`: the new parameters (host arrays) and where everything lived."""
    config = tiny()
    data = tiny_data()
    state = initial_state(config, data, mesh)
    rows = np.arange(config.batch_size)
    x, z = parallel.global_batch(mesh, data.train.x[rows], data.train.z[rows])
    new_state, metrics = compiled_functions(config, mesh, TOTAL_STEPS)["step"](state, x, z)
    leaves = jax.tree_util.tree_leaves((new_state, metrics))
    return {
        "devices": mesh.size,
        "x_devices": len(x.sharding.device_set),
        "x_shard_rows": sorted({s.data.shape[0] for s in x.addressable_shards}),
        "replicated_on": sorted({len(a.sharding.device_set) for a in leaves}),
        "not_replicated": sum(not a.sharding.is_fully_replicated for a in leaves),
        "finite": bool(metrics["finite"]),
        "params": [np.asarray(a) for a in jax.tree_util.tree_leaves(new_state.params)],
    }


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """`one_step` on 4 forced host devices, in a subprocess (XLA_FLAGS must precede jax)."""
    params_file = tmp_path_factory.mktemp("four") / "params.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES, str(params_file)], cwd=REPO,
                          env=env, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(params_file) as stored:
        report["params"] = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    return report


def test_one_step_on_4_devices_equals_one_step_on_1(reference, four_devices):
    single = one_step(parallel.make_mesh(jax.devices()[:1]))
    config = tiny()
    start = initial_state(config, tiny_data(), parallel.make_mesh(jax.devices()[:1]))
    moved = max(np.max(np.abs(a - np.asarray(b))) for a, b in
                zip(single["params"], jax.tree_util.tree_leaves(start.params)))
    assert moved > 1e-4  # the step did change the parameters
    assert single["finite"] and four_devices["finite"]
    for a, b in zip(single["params"], four_devices["params"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # On 1 device everything lives on it; on 4 the batch of 16 is split in 4 shards of 4 rows
    # and parameters, optimiser state and metrics are replicated on all 4 devices.
    assert {k: single[k] for k in ("x_devices", "x_shard_rows", "replicated_on")} == {
        "x_devices": 1, "x_shard_rows": [16], "replicated_on": [1]}
    assert {k: four_devices[k] for k in ("devices", "x_devices", "x_shard_rows",
                                         "replicated_on", "not_replicated")} == {
        "devices": 4, "x_devices": 4, "x_shard_rows": [4], "replicated_on": [4],
        "not_replicated": 0}


def test_batch_not_divisible_by_the_devices_is_refused(four_devices):
    assert "--batch-size 6 does not divide by the 4 devices" in four_devices["indivisible"]


def _camels_folder(folder, n_sims=4, size=32):
    """A folder in the CAMELS Multifield layout with `n_sims` × 15 positive maps."""
    folder.mkdir(parents=True, exist_ok=True)
    maps = synthetic_maps(n_sims, 15, size=size, seed=3)
    np.save(folder / "Maps_HI_IllustrisTNG_LH_z=0.00.npy", maps.maps)
    table = np.column_stack([maps.params[::15], np.ones((n_sims, 4))])
    np.savetxt(folder / "params_LH_IllustrisTNG.txt", table)
    return folder


def test_real_layout_is_block_averaged_and_split_by_simulation(tmp_path):
    config = tiny("--data", str(_camels_folder(tmp_path / "camels")))
    data = prepare(config)
    assert data.train.x.shape == (45, 16, 16, 1) and data.val.x.shape == (15, 16, 16, 1)
    assert data.exact_val_nll is None  # no exact likelihood for real data
    assert not set(data.train.sim) & set(data.val.sim)
    assert -1.0 <= data.train.x.min() and data.train.x.max() <= 1.0


@pytest.mark.parametrize("case, flags, message", [
    ("no maps file", [], "found no such file"),
    ("two maps files", [], "holds several maps files"),
    ("side not a multiple", ["--map-size", "24"], "cannot be block-averaged to 24×24"),
    ("too few simulations", ["--map-size", "16"], "need a non-empty validation split"),
    ("zero epochs", ["--epochs", "0"], "epochs must be a positive integer"),
    ("levels too deep", ["--levels", "5"], "not divisible by 2**levels"),
])
def test_unusable_data_and_flags_are_refused(case, flags, message, tmp_path, capsys):
    folder = tmp_path / "camels"
    folder.mkdir()
    if case == "two maps files":
        _camels_folder(folder)
        np.save(folder / "Images_HI_IllustrisTNG_z=5.99.npy", np.ones((15, 32, 32), np.float32))
    elif case == "too few simulations":
        _camels_folder(folder, n_sims=2)
    elif case != "no maps file":
        _camels_folder(folder)
    assert main(FLAGS + ["--workdir", str(tmp_path / "w"), "--data", str(folder)] + flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w" / "run.json").exists()


def test_learning_rate_plateau_and_early_stopping_counters():
    config = tiny("--lr", "1e-3")  # plateau: ×0.8 after 10 bad epochs, floor 1e-5 (scale 0.01)
    state = init_state(config, {"w": jnp.zeros(2)}, jax.random.key(0))
    state, improved = end_epoch(config, state, jnp.float32(5.0))
    assert bool(improved) and float(state.best_val_nll) == 5.0 and int(state.bad_epochs) == 0
    scales = []
    for _ in range(30):
        state, improved = end_epoch(config, state, jnp.float32(6.0))
        scales.append(float(state.plateau.scale))
        assert not bool(improved)
    assert int(state.bad_epochs) == 30 and float(state.best_val_nll) == 5.0
    assert scales[8] == 1.0 and scales[9] == pytest.approx(0.8)
    assert scales[19] == pytest.approx(0.64)
    state, improved = end_epoch(config, state, jnp.float32(jnp.nan))
    assert not bool(improved) and int(state.bad_epochs) == 31  # NaN never improves
    state, improved = record_validation(state, jnp.float32(4.0))
    assert bool(improved) and int(state.bad_epochs) == 31  # outside the schedule: best only
    assert float(learning_rate(config, 0, 1.0, TOTAL_STEPS)) == pytest.approx(1e-3 / 5)  # warm-up
    assert float(learning_rate(config, 44, 0.5, TOTAL_STEPS)) == pytest.approx(5e-4)  # plateau


def test_cosine_schedule_falls_from_the_peak_to_the_floor_at_the_last_step():
    config = tiny("--lr", "1e-3", "--schedule", "cosine")  # warm-up 5 steps, floor 1e-5
    rate = [float(learning_rate(config, step, 0.5, TOTAL_STEPS)) for step in range(TOTAL_STEPS)]
    assert rate[0] == pytest.approx(1e-3 / 5) and rate[5] == pytest.approx(1e-3)  # scale ignored
    assert rate[-1] == pytest.approx(1e-5)
    cosine = 0.5 * (1.0 + np.cos(np.pi * 19 / 39))  # step 24: 19 of the decay's 39 steps
    assert rate[24] == pytest.approx(1e-5 + (1e-3 - 1e-5) * cosine, rel=1e-5)
    assert all(a >= b for a, b in zip(rate[5:], rate[6:]))


def test_steps_are_clipped_adam_on_the_trainable_leaves():
    """Three steps of the trainer equal clipping by the global norm and Adam written out by
    hand, leaf by leaf (the trainer ravels the leaves into one vector)."""
    import dataclasses
    config = dataclasses.replace(tiny("--no-augment"), clip_norm=0.05)  # small: clipping acts
    mesh = parallel.make_mesh(jax.devices()[:1])
    state = initial_state(config, tiny_data(), mesh)
    x, z = tiny_data().train.x[:16], tiny_data().train.z[:16]
    step = compiled_functions(config, mesh, TOTAL_STEPS)["step"]
    loss_and_grad = jax.jit(jax.value_and_grad(loss_fn))
    trainable = jax.tree_util.tree_leaves(jglow.trainable_mask(state.params))
    params = [np.asarray(p, np.float64) for p in jax.tree_util.tree_leaves(state.params)]
    moments = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    norms = []
    for t in range(1, 4):
        _, grads = loss_and_grad(jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(state.params), [np.float32(p) for p in params]), x, z)
        grads = [np.asarray(g, np.float64) for g in jax.tree_util.tree_leaves(grads)]
        norms.append(np.sqrt(sum(np.sum(g**2) for g, on in zip(grads, trainable) if on)))
        clip = min(1.0, config.clip_norm / norms[-1])
        rate = float(learning_rate(config, t - 1, 1.0, TOTAL_STEPS))
        for i, (g, on) in enumerate(zip(grads, trainable)):
            if on:
                moments[0][i] = 0.9 * moments[0][i] + 0.1 * clip * g
                moments[1][i] = 0.999 * moments[1][i] + 0.001 * (clip * g) ** 2
                m_hat, v_hat = moments[0][i] / (1 - 0.9**t), moments[1][i] / (1 - 0.999**t)
                params[i] = params[i] - rate * m_hat / (np.sqrt(v_hat) + 1e-8)
        state, metrics = step(state, x, z)
        assert float(metrics["grad_norm"]) == pytest.approx(norms[-1], rel=1e-4)
    assert min(norms) > 2 * config.clip_norm  # every step was clipped
    for ours, by_hand in zip(jax.tree_util.tree_leaves(state.params), params):
        np.testing.assert_allclose(ours, by_hand, rtol=0, atol=2e-6)


def test_the_moving_average_follows_its_recursion_and_leaves_the_constants_exact():
    import dataclasses
    config = dataclasses.replace(tiny("--no-augment"), ema_decay=0.9)
    mesh = parallel.make_mesh(jax.devices()[:1])
    state = initial_state(config, tiny_data(), mesh)
    x, z = tiny_data().train.x[:16], tiny_data().train.z[:16]
    step = compiled_functions(config, mesh, TOTAL_STEPS)["step"]
    average = [np.asarray(p, np.float64) for p in jax.tree_util.tree_leaves(state.params)]
    for t in range(4):
        decay = min(0.9, (1 + t) / (10 + t))  # 0.1, 0.18, 0.25, 0.31: the warm-up of the decay
        state, _ = step(state, x, z)
        average = [decay * a + (1 - decay) * np.asarray(p, np.float64)
                   for a, p in zip(average, jax.tree_util.tree_leaves(state.params))]
    trainable = jax.tree_util.tree_leaves(jglow.trainable_mask(state.params))
    pairs = zip(jax.tree_util.tree_leaves(state.ema_params), average,
                jax.tree_util.tree_leaves(state.params), trainable)
    moved = 0.0
    for ours, by_hand, current, on in pairs:
        if on:
            np.testing.assert_allclose(ours, by_hand, rtol=0, atol=1e-6)
            moved = max(moved, float(np.max(np.abs(np.asarray(ours) - np.asarray(current)))))
        else:
            np.testing.assert_array_equal(ours, current)  # the 1×1-conv constants, bit for bit
    assert moved > 1e-4  # the average lags the trained parameters


def test_condition_noise_moves_each_maps_conditions_by_its_own_draw():
    """The step's loss is that of the conditions plus `condition_noise` times the normal draw
    of `fold_in(fold_in(rng, step), CONDITION_NOISE_STREAM)` (after 5 steps: the conditioner
    networks start at zero, so the first loss does not depend on the conditions)."""
    import dataclasses
    config = dataclasses.replace(tiny("--no-augment"), condition_noise=0.3)
    mesh = parallel.make_mesh(jax.devices()[:1])
    state = initial_state(config, tiny_data(), mesh)
    x, z = tiny_data().train.x[:16], tiny_data().train.z[:16]
    step = compiled_functions(config, mesh, TOTAL_STEPS)["step"]
    for _ in range(5):
        state, _ = step(state, x, z)
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 5)
    noise = jax.random.normal(jax.random.fold_in(key, CONDITION_NOISE_STREAM), z.shape)
    expected = float(loss_fn(state.params, x, z + 0.3 * noise))
    without_noise = float(loss_fn(state.params, x, z))
    _, metrics = step(state, x, z)  # the state is donated
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["loss"]) != pytest.approx(without_noise, rel=1e-4)
    with pytest.raises(UsageError, match=r"--condition-noise must be in \[0, 1\)"):
        tiny("--condition-noise", "1.5")


def test_fresh_data_gives_new_simulations_each_epoch_as_a_function_of_seed_and_epoch():
    from jglow.train.data import epoch_training_set
    fixed, fresh = tiny(), tiny("--fresh-data")
    data = tiny_data()
    assert epoch_training_set(fixed, data, 3) is data.train
    first, again = epoch_training_set(fresh, data, 1), epoch_training_set(fresh, data, 1)
    second = epoch_training_set(fresh, data, 2)
    other_seed = epoch_training_set(tiny("--fresh-data", "--seed", "1"), data, 1)
    assert first.x.shape == data.train.x.shape and first.z.shape == data.train.z.shape
    np.testing.assert_array_equal(first.x, again.x)
    for other in (second, data.train, other_seed):
        assert not np.isin(first.params[:, 0], other.params[:, 0]).any()  # other simulations
    np.testing.assert_allclose(first.z, data.preprocessing.forward_params(first.params), rtol=1e-6)
    assert np.abs(first.z).max() <= 1.0  # inside the prior box


def test_fresh_data_is_refused_for_real_files(tmp_path):
    with pytest.raises(UsageError, match="fresh data needs a simulator"):
        tiny("--fresh-data", "--data", str(tmp_path))


def test_run_record_round_trips_to_the_same_config():
    config = tiny("--lr", "3e-4", "--levels", "1")
    restored = TrainConfig.from_identity(json.loads(json.dumps(config.identity())))
    assert restored == config.canonical()


def _copy(workdir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of the run in `workdir`, to damage."""
    return pathlib.Path(shutil.copytree(workdir, tmp_path / "copy"))


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_parse_records_drops_a_torn_last_line_and_refuses_one_before_it():
    good = b'{"step": 1}\n{"step": 2}\n'
    assert parse_records(good, "m") == ([{"step": 1}, {"step": 2}], None)
    assert parse_records(good + b'{"step": 3, "lo', "m") == ([{"step": 1}, {"step": 2}], 24)
    assert parse_records(good + b'{"step": 3}', "m")[1] == 24  # no newline: cut short
    assert parse_records(good + b'\x00\x00\n\n', "m")[1] == 24  # zeros left by a crash
    with pytest.raises(InputError, match=r"^m: line 2 is not a JSON record with a step \(b'x'\)"):
        parse_records(b'{"step": 1}\nx\n{"step": 2}\n', "m")


def test_torn_last_metrics_line_is_dropped_with_a_warning_and_the_run_resumes(
        reference, tmp_path, capsys):
    workdir = _copy(reference[0], tmp_path)
    path = workdir / "metrics.jsonl"
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1  # the last line: the validation of step 45
    assert json.loads(data[start:]) | {"kind": "val", "step": 45} == json.loads(data[start:])
    path.write_bytes(data[:start + 30])
    flags = FLAGS + ["--workdir", str(workdir), "--figure-every", "0", "--epochs", "4"]
    assert main(flags) == 0
    error = capsys.readouterr().err
    assert _lines(error, "warning:") == [
        f"warning: {path}: dropped its last line, from byte {start}: not a complete record (a "
        f"write cut short by a crash)"]
    assert "resuming from step 45" in error
    records = [(r["step"], r["kind"]) for r in map(json.loads, path.read_text().splitlines())]
    assert records == sorted(records, key=lambda r: r[0]) and len(set(records)) == len(records)
    assert [s for s, kind in records if kind == "train"] == [10, 20, 30, 40, 45, 50, 60]
    assert [s for s, kind in records if kind == "val"] == [15, 30, 60]  # 45's was torn


def test_damaged_metrics_line_before_the_last_is_refused(reference, tmp_path, capsys):
    workdir = _copy(reference[0], tmp_path)
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + ['{"kind": "train", "st\n'] + lines[3:]))
    assert main(FLAGS + ["--workdir", str(workdir)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert _lines(error, "error:") == [
        f"error: {path}: line 3 is not a JSON record with a step (b'{{\"kind\": \"train\", "
        f"\"st'); expected one JSON object per line, as the trainer writes; delete or repair "
        f"that line (the run then resumes), or choose another --workdir"]


def test_a_held_workdir_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    with hold(tmp_path) as path:
        record = json.loads(path.read_text())
        assert record == {"host": socket.gethostname(), "pid": os.getpid()}
        with pytest.raises(UsageError) as refused:
            with hold(tmp_path):
                pass
        assert str(refused.value) == (
            f"workdir {tmp_path} is in use by another trainer (host {socket.gethostname()}, "
            f"pid {os.getpid()}; lock file {path}); wait for it to end, stop it, or choose "
            f"another --workdir")
    with hold(tmp_path):  # released at the end of the block
        pass


def test_overwrite_of_a_workdir_in_use_is_refused_before_deleting_anything(tmp_path, capsys):
    checkpoints.claim_workdir(tmp_path, tiny(), overwrite=False)
    with hold(tmp_path):
        assert main(FLAGS + ["--workdir", str(tmp_path), "--hidden", "4", "--overwrite"]) == 2
    error, = _lines(capsys.readouterr().err, "error:")
    assert error.startswith(f"error: workdir {tmp_path} is in use by another trainer (host ")
    assert json.loads((tmp_path / "run.json").read_text())["model"]["hidden"] == 8


def test_one_trainer_per_workdir_and_a_killed_holder_needs_no_cleanup(tmp_path):
    workdir = tmp_path / "w"
    command = [sys.executable, "-m", "train.main", *FLAGS, "--workdir", str(workdir),
               "--figure-every", "0"]
    logs = [tmp_path / f"stderr_{k}.txt" for k in range(3)]
    processes = []
    for log in logs[:2]:  # two trainers started at once
        with open(log, "w") as stderr:
            processes.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                                              stderr=stderr))
    try:
        wait_until(lambda: any(p.poll() is not None for p in processes), [], 60,
                   "the exit of one of two trainers", logs[:2])
        loser = next(k for k, p in enumerate(processes) if p.poll() is not None)
        winner = processes[1 - loser]
        assert processes[loser].returncode == 2 and winner.poll() is None
        error = logs[loser].read_text()
        assert _lines(error, "error:") == [
            f"error: workdir {workdir} is in use by another trainer (host "
            f"{socket.gethostname()}, pid {winner.pid}; lock file {workdir / 'trainer.lock'}); "
            f"wait for it to end, stop it, or choose another --workdir"]
        assert "Traceback" not in error
        winner.send_signal(signal.SIGKILL)
        winner.wait()
        with open(logs[2], "w") as stderr:
            processes.append(subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                                              stderr=stderr))
        wait_until(lambda: "240 training / 30 validation maps" in logs[2].read_text(),
                   processes[2:], 120, "the start-up line of a third trainer", logs[2:])
        assert json.loads((workdir / "trainer.lock").read_text())["pid"] == processes[2].pid
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _damage(step_dir: pathlib.Path, how: str) -> None:
    """Truncate every file of the checkpoint `step_dir` to half its size ("truncate"), or flip
    8 bytes in the middle of its largest file, its size unchanged ("flip")."""
    files = [p for p in step_dir.rglob("*") if p.is_file()]
    if how == "truncate":
        for path in files:
            os.truncate(path, path.stat().st_size // 2)
        return
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    largest.write_bytes(bytes(data))


REFERENCE_FLAGS = ["--checkpoint-every", "7", "--figure-every", "3"]


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(
        how, reference, tmp_path, capsys):
    _, uninterrupted = reference
    workdir = _copy(reference[0], tmp_path)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert steps == [35, 42, 45]  # the latest 3 (45 is also the best)
    newest = workdir / "checkpoints" / "45"
    _damage(newest, how)
    assert main(FLAGS + REFERENCE_FLAGS + ["--workdir", str(workdir)]) == 0
    error = capsys.readouterr().err
    warnings = _lines(error, "warning:")
    assert len(warnings) == 1 and warnings[0].startswith(
        f"warning: checkpoint {newest} cannot be used: ")
    assert warnings[0].endswith("; trying the next older one")
    assert ("it cannot be read: " if how == "truncate" else "SHA-256") in warnings[0]
    assert "resuming from step 42 (epoch 2, batch 12)" in error
    resumed, meta = saved_state(tiny(), workdir)  # checked: the damaged step was replaced
    assert meta["step"] == TOTAL_STEPS
    _same_state(parallel.host_value(uninterrupted.state), resumed)


def test_no_usable_checkpoint_is_refused_with_one_error_line(reference, tmp_path, capsys):
    workdir = _copy(reference[0], tmp_path)
    for step in (35, 42, 45):
        _damage(workdir / "checkpoints" / str(step), "flip")
    assert main(FLAGS + ["--workdir", str(workdir)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert [line.split(" cannot be used")[0] for line in _lines(error, "warning:")] == [
        f"warning: checkpoint {workdir / 'checkpoints' / str(step)}" for step in (45, 42, 35)]
    directory = workdir / "checkpoints"
    assert _lines(error, "error:") == [
        f"error: none of the checkpoints in {directory} (steps 45, 42, 35) can be used "
        f"(warnings above); delete {directory} to train from the start, or choose another "
        f"--workdir"]


def test_a_checkpoint_with_nonfinite_parameters_is_skipped(tmp_path, capsys):
    config = tiny()
    state = initial_state(config, tiny_data(), parallel.make_mesh(jax.devices()))
    broken = state._replace(params=jax.tree_util.tree_map(lambda a: a * np.nan, state.params))
    manager = checkpoints.open_manager(tmp_path, keep=3)
    for step, saved in ((1, state), (2, broken)):
        checkpoints.save(manager, saved, {"step": step})
        manager.wait_until_finished()
    restored, meta = checkpoints.restore(manager, state)
    manager.close()
    assert meta == {"step": 1}
    _same_state(parallel.host_value(state), parallel.host_value(restored))
    warning, = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: checkpoint {tmp_path / 'checkpoints' / '2'} cannot be "
                              f"used: ") and "arrays hold NaN or infinity, e.g. " in warning
