"""Stopping a run on SIGTERM (a cluster's preemption) or Ctrl-C (SIGINT) without losing work.

`StopSignals` installs handlers that only note the signal. The training loop calls `check()` at
its check points, before each step and before each validation batch: `check` takes the largest
signal number noted by any process (`multihost.largest_over_processes`), so every process of a
multi-host run stops at the same point even when the signal reached one of them, and raises
`StopRequested`; the trainer then checkpoints and exits with `exit_status`.

A watcher thread, woken by every signal through `signal.set_wakeup_fd` even while the main
thread runs no Python (compiling, or waiting in a collective), ends the process at once with
`exit_status` at a signal that comes before the run has work to lose (`begin_work`: after its
first step, or before it validates a resumed checkpoint; loading the data, initialising and
compiling the first step can take minutes, and the workdir then holds everything there is), and
at a second signal (the checkpoints written before stay intact).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from jglow.train import multihost

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    """The exit status of a run ended by signal `signum`: the shells' 128 + its number (143
    for SIGTERM, 130 for SIGINT)."""
    return 128 + signum


class StopRequested(Exception):
    """A stop signal, seen by every process at the same check point.

    Attributes:
      signum: the signal's number (the largest over the processes).
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        """"SIGTERM" or "SIGINT"."""
        return signal.Signals(self.signum).name


class NoSignals:
    """What the training loop asks when no handlers are installed (`run` called from Python):
    never a stop."""

    def check(self) -> None:
        """Nothing to do."""

    def begin_work(self) -> None:
        """Nothing to do."""


class StopSignals(NoSignals):
    """SIGTERM and SIGINT noted for the training loop, or ending the process (module
    docstring); a context manager, entered in the main thread, that puts the previous handlers
    back on exit."""

    def __init__(self):
        self.received = 0
        """The first signal's number, 0 before any."""
        self._working = False
        self._lock = threading.Lock()

    def __enter__(self) -> "StopSignals":
        self._previous = {signum: signal.signal(signum, self._note) for signum in SIGNALS}
        reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._previous_wakeup = signal.set_wakeup_fd(self._writer.fileno())
        threading.Thread(target=self._watch, args=(reader,), daemon=True,
                         name="stop-signals").start()
        return self

    def __exit__(self, *exception) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._writer.close()  # the watcher reads the end of its stream and returns

    def _note(self, signum: int, frame) -> None:
        if not self.received:
            self.received = signum

    def begin_work(self) -> None:
        """From now on the run has work to checkpoint: a first signal waits for `check`."""
        with self._lock:
            self._working = True

    def check(self) -> None:
        """Raise `StopRequested` if any process has received a stop signal, or end the process
        at once before `begin_work` (a collective in a multi-process run: every process must
        call it at the same points)."""
        signum = multihost.largest_over_processes(self.received)
        if signum:
            with self._lock:
                if not self._working:
                    _end_at_once(signum, first=True)
            raise StopRequested(signum)

    def _watch(self, reader: socket.socket) -> None:
        """End the process at a signal before `begin_work`, and at a second signal."""
        seen = 0
        with reader:
            while byte := reader.recv(1):
                if byte[0] not in SIGNALS:
                    continue
                seen += 1
                with self._lock:
                    if seen > 1 or not self._working:
                        _end_at_once(byte[0], first=seen == 1)


def _end_at_once(signum: int, first: bool) -> None:
    """Exit with `exit_status(signum)` without checkpointing, saying why on stderr."""
    why = ("before the run did any work: nothing to checkpoint, the workdir is as it was"
           if first else "a second time: ending at once, without a checkpoint (those written "
           "before are intact)")
    print(f"interrupted by {signal.Signals(signum).name} {why}", file=sys.stderr, flush=True)
    os._exit(exit_status(signum))
