"""The processes of a multi-host run: joining them, and checking that they run the same thing.

`connect` calls `jax.distributed.initialize` with gloo for the CPU collectives, without JAX's
preemption service (its SIGTERM handler swallowed the signal; the trainer handles SIGTERM
itself, `stopping`), and with one `peer_timeout`: a process that has sent no heartbeat for that
long is taken as dead, and the coordination service then ends every other process (JAX prints
"Terminating process because the JAX distributed service detected fatal errors"; exit status
134); a process that dies with the coordinator (process 0) ends the others at once. A process
that stops on an error waits at most `peer_timeout` at exit for the others.

Processes given different flags, workdirs or data would deadlock in their first mismatched
collective (an orbax barrier named after a different directory, a loop of another length), so
`agree` compares what each process is about to run, before any collective of the run, and every
process refuses with the same kind of message when they differ, or when one of them refused.
"""

from __future__ import annotations

import json
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from jglow.train.checkpoints import flat_fields
from jglow.train.config import UsageError


def connect(coordinator: str, num_processes: Optional[int], process_id: Optional[int],
            peer_timeout: int) -> None:
    """Join the run of `num_processes` processes coordinated at `coordinator` ("host:port",
    served by process 0) as process `process_id`; `peer_timeout` in seconds (module
    docstring). Raises `UsageError` for missing or inconsistent numbers."""
    if num_processes is None or process_id is None:
        raise UsageError(f"--coordinator {coordinator} needs --num-processes and --process-id; "
                         f"got {num_processes} and {process_id}")
    if not 0 <= process_id < num_processes:
        raise UsageError(f"--process-id {process_id}: expected 0 <= id < --num-processes "
                         f"{num_processes}")
    if peer_timeout < 1:
        raise UsageError(f"--peer-timeout must be a positive number of seconds, got "
                         f"{peer_timeout}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               heartbeat_timeout_seconds=peer_timeout,
                               shutdown_timeout_seconds=peer_timeout)


def gather_texts(text: str) -> list[str]:
    """`text` of every process, in the order of the process indices (two small collectives in a
    multi-process run; `[text]` in a single process)."""
    if jax.process_count() == 1:
        return [text]
    encoded = np.frombuffer(text.encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.int32(encoded.size))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:encoded.size] = encoded
    rows = multihost_utils.process_allgather(padded)
    return [bytes(row[:length]).decode() for row, length in zip(rows, lengths)]


def largest_over_processes(value: int) -> int:
    """The largest of the processes' `value`s (an int32); `value` itself in a single process."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def disagreement(descriptions: list[dict]) -> Optional[str]:
    """Why processes with these `descriptions` (one dict per process, by index, each mapping
    what is compared to a JSON value, or holding the message of its refusal under "refused")
    cannot run together, or None when they can."""
    for index, description in enumerate(descriptions):
        if description.get("refused") is not None:
            return f"process {index} refused to start: {description['refused']}"
    first = descriptions[0]
    for index, description in enumerate(descriptions[1:], start=1):
        for name in first:
            if description[name] != first[name]:
                return (f"the {len(descriptions)} processes disagree on the {name}: process 0 "
                        f"has {_shown(first[name], description[name])}, process {index} "
                        f"{_shown(description[name], first[name])}; start every process with "
                        f"the same flags and --workdir, on the same data")
    return None


def _shown(value, other) -> str:
    """`value` in a disagreement: a dict as its fields that differ from `other`'s."""
    if isinstance(value, dict):
        ours, theirs = flat_fields(value), flat_fields(other)
        return ", ".join(f"{key}={ours.get(key, '(absent)')!r}" for key in sorted(ours)
                         if ours.get(key) != theirs.get(key)) or "(no such fields)"
    return repr(value)


def agree(description: dict, refusal: Optional[Exception]) -> None:
    """Check that every process describes the same run; called by all processes at the same
    point of their start-up, before any collective of the run.

    `description` maps what is compared (e.g. "workdir") to a JSON value; `refusal` is this
    process's own refusal at this point (a `UsageError` or `FileNotFoundError`), or None.

    Raises:
      `refusal` itself, where there is one; else `UsageError` with `disagreement`'s message.
    """
    record = {"refused": None if refusal is None else str(refusal), **description}
    descriptions = [json.loads(text) for text in gather_texts(json.dumps(record))]
    if refusal is not None:
        raise refusal
    problem = disagreement(descriptions)
    if problem is not None:
        raise UsageError(problem)
