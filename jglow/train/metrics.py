"""What a run measures and records: validation NLL, the inverse's health, metrics as JSON lines.

`metrics.jsonl` holds one JSON object per line, each with `kind` ("train", "val" or
"event"), `step` and `epoch`. Non-finite numbers are written as null (JSON has no NaN) and
flagged by the records' own fields (`nonfinite_total`, `val_finite`). When a run resumes from
step `s`, records after `s` are dropped first, so the file reads as one uninterrupted run; so is
a last line cut short by a crash (with a warning), while a damaged line before it is an error.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import jglow
from jglow.batching import padded_rows
from jglow.errors import InputError
from jglow.files import replace_atomically
from jglow.model import condition, log_prob_given
from jglow.model_params import GlowParams
from jglow.train import parallel

METRICS_FILE = "metrics.jsonl"
ROUND_TRIP_TOLERANCE = 1e-3
"""Largest `|decode(encode(x)) − x|` (model space) of a sound float32 inverse. The paper model
errs by 5.8e-5 at its initialisation, by 2.9e-3 with its parameters moved by N(0, 0.001²) off
it, and by 1.36 by N(0, 0.01²), where its samples are not finite (`jglow.model`,
conditioning)."""


def json_safe(value):
    """`value` for JSON, recursively through dicts, lists and tuples: arrays and numpy scalars
    as Python lists and numbers, tuples as lists, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if hasattr(value, "__array__"):
        return json_safe(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _record(line: bytes) -> Optional[dict]:
    """The record on `line` (one line of the file, without its newline), or None when it is not
    a JSON object with an integer `step`."""
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    return record


def parse_records(data: bytes, path) -> tuple[list[dict], Optional[int]]:
    """The records in `data`, the bytes of the metrics file `path`, oldest first, and the byte
    offset at which a torn last line starts (None when the last line is complete).

    A line is complete when it ends with a newline and holds a JSON object with an integer
    `step`; empty lines are skipped. Only the last line may be torn (a write cut short by a
    crash): any other incomplete line raises `InputError` naming its line number (from 1).
    """
    records, offset = [], 0
    lines = data.split(b"\n")  # the last item: what follows the last newline (b"" if nothing)
    last = max((index for index, line in enumerate(lines) if line.strip()), default=-1)
    for index, line in enumerate(lines):
        record = _record(line) if index < len(lines) - 1 else None  # no newline: torn
        if line.strip() and record is None:
            if index == last:
                return records, offset
            raise InputError(f"{path}: line {index + 1} is not a JSON record with a step "
                             f"({line[:80]!r}); expected one JSON object per line, as the "
                             f"trainer writes; delete or repair that line (the run then "
                             f"resumes), or choose another --workdir")
        if record is not None:
            records.append(record)
        offset += len(line) + 1
    return records, None


class MetricsLog:
    """Appends records to `workdir/metrics.jsonl` (only where `enabled`: process 0)."""

    def __init__(self, workdir, enabled: bool = True):
        self.path = pathlib.Path(workdir) / METRICS_FILE
        self.enabled = enabled

    def _parsed(self) -> tuple[list[dict], Optional[int]]:
        if not self.path.is_file():
            return [], None
        return parse_records(self.path.read_bytes(), self.path)

    def read(self) -> list[dict]:
        """All complete records, oldest first ([] if none; a torn last line left out).

        Raises:
          InputError: a damaged line before the last (`parse_records`).
        """
        return self._parsed()[0]

    def truncate_after(self, step: int) -> Optional[str]:
        """Drop the records of steps after `step` (left by a run killed after its checkpoint)
        and a torn last line (a write cut short), so that the next record is appended after
        the last complete one. Returns the warning to show when a torn line was dropped.

        Raises:
          InputError: a damaged line before the last (`parse_records`).
        """
        if not self.enabled or not self.path.is_file():
            return None
        records, torn_at = self._parsed()
        kept = [r for r in records if r["step"] <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        replace_atomically(self.path, lambda handle: handle.write(text.encode()))
        if torn_at is None:
            return None
        return (f"warning: {self.path}: dropped its last line, from byte {torn_at}: not a "
                f"complete record (a write cut short by a crash)")

    def write(self, record: dict) -> None:
        """Append one record."""
        if not self.enabled:
            return
        line = json.dumps({key: json_safe(value) for key, value in record.items()})
        with open(self.path, "a") as handle:
            handle.write(line + "\n")


def nll_sum(params: GlowParams, x, z, weight):
    """`Σ_n weight_n · (−log p(x_n | z_n))` in nats, a scalar, for a batch `x (B, H, W, C)`,
    `z (B, D)`, `weight (B,)` (0 for padding rows)."""
    nll = -log_prob_given(params, x, condition(params, z))
    return jnp.sum(jnp.where(weight > 0, weight * nll, 0.0))


def mean_nll(nll_sum_fn, mesh: Mesh, params: GlowParams, x, z, batch_size: int,
             before_batch: Callable[[], None] = lambda: None) -> float:
    """Mean `−log p(x | z)` in nats per map over `x (N, H, W, C)`, `z (N, D)`, in global
    batches of `batch_size` (the last padded); `nll_sum_fn` is `nll_sum` jitted on the mesh.
    `before_batch()` is called before each batch (the trainer's stop check, which may raise)."""
    total, n = 0.0, x.shape[0]
    for start in range(0, n, batch_size):
        before_batch()
        rows = padded_rows(start, batch_size, n)
        weight = (np.arange(start, start + batch_size) < n).astype(np.float32)
        batch = parallel.global_batch(mesh, x[rows], z[rows], weight)
        total += float(parallel.host_value(nll_sum_fn(params, *batch)))
    return total / n


def inverse_check(params: GlowParams, x, z, key) -> dict:
    """The health of `params`' inverse at maps `x (N, H, W, C)` and conditions `z (N, D)`
    (model space): `maps` N, `round_trip_max_abs` the largest `|decode(encode(x)) − x|`, and
    `nonfinite_samples`, how many of N samples at `z` (temperature 1, `key`) are not finite."""
    rebuilt = jglow.decode(params, jglow.encode(params, x, z), z)
    samples = np.asarray(jglow.sample(params, key, z))
    finite = np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)
    return {"maps": len(x), "round_trip_max_abs": float(np.max(np.abs(np.asarray(rebuilt) - x))),
            "nonfinite_samples": int(np.sum(~finite))}


def inverse_problems(round_trip_max_abs, nonfinite_samples: int, n_samples: int) -> list[str]:
    """What is wrong with an inverse whose largest round-trip error (model space; None or NaN
    when not finite) is `round_trip_max_abs` and of whose `n_samples` samples
    `nonfinite_samples` are not finite: one phrase per problem, none when the round trip is
    within `ROUND_TRIP_TOLERANCE` and every sample is finite."""
    problems = []
    if round_trip_max_abs is None or not round_trip_max_abs <= ROUND_TRIP_TOLERANCE:
        problems.append(f"decode(encode(x)) differs from x by up to {round_trip_max_abs} in "
                        f"model space (expected <= {ROUND_TRIP_TOLERANCE:g}): the inverse is "
                        f"ill-conditioned")
    if nonfinite_samples:
        problems.append(f"{nonfinite_samples} of {n_samples} samples are not finite")
    return problems
