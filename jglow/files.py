"""Replacing a file so that a crash leaves its old or its new content, never a torn one."""

import os
import pathlib
import secrets


def temporary_name(path: pathlib.Path) -> pathlib.Path:
    """A new name beside `path` for its temporary copy: `path` + "." + 12 random hex digits +
    ".tmp", so that processes writing the same file never share a temporary."""
    return path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")


def replace_atomically(path, write) -> None:
    """Call `write(handle)` on a new temporary binary file beside `path` (`temporary_name`),
    flush it to disk, then rename it to `path`. If `write` raises, `path` is left as it was and
    the temporary file is removed."""
    path = pathlib.Path(path)
    temporary = temporary_name(path)
    handle = open(temporary, "xb")  # "x": never another's file
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
