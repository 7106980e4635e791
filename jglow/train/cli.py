"""What every jglow command does alike (`jglow-train`, `jglow-infer`, `jglow-evaluate`,
`jglow-ensemble`, and `python -m train.X` from a checkout).

* Usage lines name the program as it was started: `python -m train.main` when run with `-m`,
  `jglow-train` as the installed script.
* Bad input (a flag, a data or model file, a workdir; `INPUT_ERRORS`) ends the command with one
  line `error: ...` on stderr, naming the bad value and what was expected, and exit status 2,
  without a traceback. A run that stopped (`Stopped`) ends with `stopped: ...` and status 1.
  Any other exception is a bug: it propagates with its traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable, Optional, Sequence

from jglow.errors import InputError


class UsageError(ValueError):
    """A refused request (bad flag, absent device, mismatched workdir): shown without traceback."""


class Stopped(RuntimeError):
    """A run that ended before its end (exit status 1); the message says why and what is left."""


INPUT_ERRORS = (UsageError, InputError, FileNotFoundError)
"""The errors of bad input, reported as `error: ...` with exit status 2."""


def program_name() -> str:
    """How this process was started: `python -m MODULE` when run with `-m`, else the script's
    file name (`jglow-train` for the installed script)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:
        return f"python -m {spec.name}"
    return os.path.basename(sys.argv[0])


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` named by `program_name()` whose parse errors raise
    `UsageError` (so they are reported like every other bad input) instead of exiting."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("prog", program_name())
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def check_at_least(values: dict, minimum: dict) -> None:
    """Raise `UsageError` naming the first `--NAME` of `minimum` whose value in `values` (by
    `NAME` with underscores) is not an integer >= `minimum[NAME]`; a value of None (the flag
    not given) is not checked."""
    for name, low in minimum.items():
        value = values[name]
        if value is not None and (not isinstance(value, int) or value < low):
            raise UsageError(f"--{name.replace('_', '-')} {value!r}: expected an integer "
                             f">= {low}")


def command(run: Callable[[Optional[Sequence[str]]], int]) -> Callable[..., int]:
    """`run(argv) -> exit status` as a command's `main(argv=None) -> int` (module docstring):
    bad input gives 2 with one `error:` line, a stopped run 1 with a `stopped:` line."""

    @functools.wraps(run)
    def main(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return run(argv)
        except INPUT_ERRORS as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except Stopped as error:
            print(f"stopped: {error}", file=sys.stderr)
            return 1

    return main
