"""Two trainer processes joined through `jax.distributed` on this machine (gloo collectives on
the CPU, one device each), on the tiny model of test_train (16×16 maps, 2 levels × 2 steps,
45 steps): they train as one process on two devices does, a SIGTERM that reaches one of them
stops both at the same step, and processes that disagree or lose a peer end with a message
instead of hanging. Every subprocess runs under a timeout, so a hang fails the test.

All runs share one persistent compilation cache: the first pair compiles, the later ones load.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import wait_until
from jglow.train.multihost import agree, disagreement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--map-size", "16", "--levels", "2", "--steps", "2", "--hidden", "8", "--n-sims", "20",
         "--batch-size", "16", "--epochs", "3", "--warmup-steps", "5", "--no-progress",
         "--figure-every", "0"]
"""As test_train's: 240 training maps, 15 steps per epoch, 45 in all."""
TOTAL_STEPS = 45
PEER_TIMEOUT = 10
START_TIMEOUT = 300
"""Seconds allowed to start a run and compile its step, with the machine busy."""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The subprocesses' environment: one device per process, a compilation cache shared by
    all (every program cached, however quick to compile)."""
    variables = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    variables["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("compiled"))
    variables["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return variables


@pytest.fixture
def started():
    """The subprocesses a test starts (append them); killed at its end if still running."""
    processes = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_pair(workdirs, logs, env, started, extra=((), ())) -> list:
    """Processes 0 and 1 of a run coordinated on a free local port, the first with
    `workdirs[0]` and `extra[0]`, the second with `workdirs[1]` and `extra[1]`; stdout and
    stderr to the files `logs`."""
    coordinator = f"127.0.0.1:{free_port()}"
    pair = []
    for index, (workdir, log, flags) in enumerate(zip(workdirs, logs, extra)):
        command = [sys.executable, "-m", "train.main", *FLAGS, *flags, "--workdir", str(workdir),
                   "--coordinator", coordinator, "--num-processes", "2",
                   "--process-id", str(index), "--peer-timeout", str(PEER_TIMEOUT)]
        with open(log, "w") as output:
            pair.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=output,
                                         stderr=subprocess.STDOUT))
    started.extend(pair)
    return pair


def wait_all(processes, timeout: float) -> list[int]:
    """The exit statuses of `processes`, all ended within `timeout` seconds of now."""
    deadline = time.monotonic() + timeout
    return [process.wait(timeout=max(0.0, deadline - time.monotonic()))
            for process in processes]


def logged_step(workdir, step: int) -> bool:
    path = workdir / "metrics.jsonl"
    return path.is_file() and f'"step": {step},' in path.read_text()


def final_checkpoint(workdir) -> tuple[int, dict]:
    """`(step, state)` of the latest checkpoint in `workdir`, the state as saved (nested dicts
    of arrays) and restored on this process's device."""
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    path = workdir / "checkpoints" / str(step) / "state"
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.metadata(path).item_metadata
        target = jax.tree_util.tree_map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), saved)
        return step, checkpointer.restore(path, target)


def test_two_processes_train_as_one_on_two_devices_through_a_sigterm_to_one(
        env, started, tmp_path):
    reference = subprocess.run(
        [sys.executable, "-m", "train.main", *FLAGS, "--workdir", str(tmp_path / "one")],
        cwd=REPO, env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        capture_output=True, text=True, timeout=START_TIMEOUT)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "on 2 cpu device(s)" in reference.stderr

    workdir, logs = tmp_path / "two", [tmp_path / "p0.txt", tmp_path / "p1.txt"]
    pair = start_pair([workdir, workdir], logs, env, started)
    wait_until(lambda: logged_step(workdir, 10), pair, START_TIMEOUT, "the record of step 10",
               logs)
    pair[1].send_signal(signal.SIGTERM)  # process 1 only
    assert wait_all(pair, 30) == [143, 143], [log.read_text()[-2000:] for log in logs]
    outputs = [log.read_text() for log in logs]
    stops = [output.split("interrupted: SIGTERM at step ")[1].split(";")[0] for output in outputs]
    assert stops[0] == stops[1] and 10 <= int(stops[0]) < TOTAL_STEPS
    assert "on 2 cpu device(s)" in outputs[0]
    assert final_checkpoint(workdir)[0] == int(stops[0])

    pair = start_pair([workdir, workdir], logs, env, started)
    assert wait_all(pair, START_TIMEOUT) == [0, 0], [log.read_text()[-2000:] for log in logs]
    assert f"resuming from step {stops[0]}" in logs[0].read_text()
    (one_step, one), (two_step, two) = map(final_checkpoint, (tmp_path / "one", workdir))
    assert one_step == two_step == TOTAL_STEPS
    leaves = jax.tree_util.tree_leaves_with_path(one["params"])
    assert len(leaves) == len(jax.tree_util.tree_leaves(two["params"])) > 50
    for (path, a), b in zip(leaves, jax.tree_util.tree_leaves(two["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5,
                                   err_msg=jax.tree_util.keystr(path))
    assert float(one["best_val_nll"]) == pytest.approx(float(two["best_val_nll"]), rel=1e-5)


@pytest.mark.parametrize("what, extra, message", [
    ("workdir", ((), ()), "the 2 processes disagree on the workdir: process 0 has '{a}', "
                          "process 1 '{b}'"),
    ("configuration", ((), ("--seed", "1")), "the 2 processes disagree on the configuration: "
                                             "process 0 has seed=0, process 1 seed=1"),
])
def test_processes_that_disagree_refuse_at_start_up(what, extra, message, env, started,
                                                    tmp_path):
    workdirs = [tmp_path / "a", tmp_path / ("b" if what == "workdir" else "a")]
    logs = [tmp_path / "p0.txt", tmp_path / "p1.txt"]
    begun = time.monotonic()
    pair = start_pair(workdirs, logs, env, started, extra)
    assert wait_all(pair, 120) == [2, 2], [log.read_text()[-2000:] for log in logs]
    seconds = time.monotonic() - begun
    expected = "error: " + message.format(a=workdirs[0], b=workdirs[1])
    for log in logs:
        assert expected in log.read_text()
    assert seconds < 90  # start-up only, nothing compiled (42 s on 2 cores at load 10)
    assert not (workdirs[0] / "run.json").exists()  # refused before claiming the workdir


def test_a_killed_peer_ends_the_other_process_within_the_peer_timeout(env, started, tmp_path):
    workdir, logs = tmp_path / "w", [tmp_path / "p0.txt", tmp_path / "p1.txt"]
    pair = start_pair([workdir, workdir], logs, env, started)
    wait_until(lambda: logged_step(workdir, 10), pair, START_TIMEOUT, "the record of step 10",
               logs)
    pair[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    status = pair[0].wait(timeout=PEER_TIMEOUT + 20)
    seconds = time.monotonic() - killed
    output = logs[0].read_text()
    assert status not in (0, None), output[-3000:]
    assert seconds < PEER_TIMEOUT + 10, output[-3000:]
    assert "another task died" in output, output[-3000:]  # JAX's message


def test_disagreement_names_the_process_and_what_differs():
    same = {"refused": None, "workdir": "/w", "configuration": {"seed": 0, "model": {"hidden": 8}}}
    assert disagreement([same, same]) is None
    other = {**same, "configuration": {"seed": 0, "model": {"hidden": 4}}}
    assert disagreement([same, same, other]) == (
        "the 3 processes disagree on the configuration: process 0 has model.hidden=8, process 2 "
        "model.hidden=4; start every process with the same flags and --workdir, on the same data")
    refused = {**same, "refused": "--data x: found no such file"}
    assert disagreement([same, other, refused]) == (
        "process 2 refused to start: --data x: found no such file")


def test_a_single_process_agrees_with_itself_and_raises_its_own_refusal():
    agree({"workdir": "/w", "data": "0" * 64}, None)
    with pytest.raises(FileNotFoundError, match="^no maps$"):
        agree({"data": None}, FileNotFoundError("no maps"))
