"""One trainer per workdir: a lock file held with an OS-level lock for the trainer's lifetime.

The trainer (process 0 of a multi-host run; the other processes share its workdir) holds
`fcntl.flock` on `workdir/trainer.lock`, which records its host and process id. The operating
system releases the lock when the holder ends, however it ends (SIGKILL included), so a crashed
trainer needs no cleanup: the file stays, and the next trainer takes the lock and rewrites it.
A second trainer is refused at once, naming the holder. (On network file systems without
`flock`, e.g. some NFS mounts, the lock may not be seen from other hosts.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
from typing import Iterator

from jglow.train.config import UsageError

LOCK_FILE = "trainer.lock"


def holder_text(content: bytes) -> str:
    """`"host H, pid P"` for the lock file's `content` (`{"host": H, "pid": P}`), or what is
    known when it is not such a record (a holder that has not yet written it)."""
    try:
        record = json.loads(content)
        return f"host {record['host']}, pid {record['pid']}"
    except (ValueError, TypeError, KeyError):
        return f"holder not recorded yet (lock file content {content[:80]!r})"


@contextlib.contextmanager
def hold(workdir) -> Iterator[pathlib.Path]:
    """Hold the lock of `workdir` (created if needed) for the `with` block; yields the lock
    file's path.

    Raises:
      UsageError: another process holds it; the message names its host and pid.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"workdir {workdir} is in use by another trainer ({holder_text(path.read_bytes())}"
                f"; lock file {path}); wait for it to end, stop it, or choose another "
                f"--workdir") from None
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, record, 0)
        yield path
    finally:
        os.close(descriptor)  # releases the lock
