"""`benchmarks/device_check.py --smoke` on this machine: one JSON object, every section measured."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("tests", "environment", "model", "grid", "training", "inverse")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`(printed JSON, JSON written to --out)` of one smoke run."""
    out = tmp_path_factory.mktemp("device_check") / "device_check.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "device_check.py"),
                           "--smoke", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), json.loads(out.read_text())


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_smoke_run_prints_and_writes_one_object_with_every_section(smoke):
    printed, written = smoke
    assert printed == written
    assert printed["smoke"] is True and _positive(printed["total_s"])
    for name in SECTIONS:
        assert "error" not in printed[name] and "skipped" not in printed[name], printed[name]
        assert 0.0 <= printed[name]["section_s"] <= printed["total_s"]


def test_smoke_run_measures_the_model_the_grid_and_training(smoke):
    result, _ = smoke
    assert result["tests"]["returncode"] == 0 and result["tests"]["passed"] == 1
    assert result["environment"]["backend"] == "cpu"
    assert result["environment"]["matmul_precision"] is None
    assert result["model"]["batch"] == 16 and result["model"]["nonfinite_samples"] == 0
    for key in ("log_prob_maps_per_s", "sample_maps_per_s", "compile_log_prob_s"):
        assert _positive(result["model"][key]), key
    runs = result["grid"]["runs"]
    assert [run["conditions"] for run in runs] == [64, 256]
    for run in runs:
        assert _positive(run["likelihoods_per_s"]) and 1 <= run["chunk_size"] <= run["conditions"]
        assert run["program_scratch_mb"] >= 0
    training = result["training"]
    assert training["steps"] == 3 and training["nonfinite_steps"] == 0
    assert _positive(training["maps_per_s"]) and math.isfinite(training["last_loss"])
    assert training["inverse"]["maps"] == 4 and training["inverse"]["nonfinite_samples"] == 0
    assert training["inverse"]["round_trip_max_abs"] < 1e-5
    for scale in ("0.01", "0.001"):
        inverse = result["inverse"][scale]
        assert inverse["n_samples"] == 4 and inverse["n_nonfinite_samples"] == 0
        assert inverse["round_trip_max_abs"] < 1e-5
    assert all(result[name]["peak_device_mb"] is None for name in SECTIONS[1:])  # the CPU's


def test_pytest_counts_read_the_summary_line():
    saved = list(sys.path)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from device_check import pytest_counts
    finally:
        sys.path[:] = saved
    assert pytest_counts("....F\n3 failed, 52 passed, 1 skipped in 61.20s\n") == {
        "failed": 3, "passed": 52, "skipped": 1}
    assert pytest_counts("") == {}
