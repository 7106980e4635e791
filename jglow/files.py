"""Replacing a file so that a crash leaves its old or its new content, never a torn one."""

import os
import pathlib


def replace_atomically(path, write) -> None:
    """Call `write(handle)` on a temporary binary file beside `path` (`path` + ".tmp"), flush
    it to disk, then rename it to `path`. If `write` raises, `path` is left as it was and the
    temporary file is removed."""
    path = pathlib.Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
