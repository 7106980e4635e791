#!/usr/bin/env bash
# The device check on a machine with an accelerator (benchmarks/device_check.py), stopped at
# 8 minutes: this checkout's jglow on the path, Python's output unbuffered, the JSON also
# written to $OUT/device_check.json (or /tmp) after every section. Arguments are passed on.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=$(command -v python3 || command -v python)
exec timeout 480 "$python" "$root/benchmarks/device_check.py" \
    --out "${OUT:-/tmp}/device_check.json" "$@"
