"""`python -m train.infer`: posterior figures, JSON summaries and coverage for a saved model."""

import json
import os

import jax
import numpy as np
import pytest
from helpers import tiny_config
from test_posterior import perturbed

import jglow
from jglow.data import PRIOR_BOX, fit_preprocessing, synthetic_maps
from jglow.saving import TrainedModel, save
from train import infer

GRID = "10"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A saved tiny model (perturbed off its initialisation) with preprocessing fitted on
    synthetic 16×16 maps."""
    config = tiny_config()
    train = synthetic_maps(4, 3, size=16, seed=0)
    preprocessing = fit_preprocessing(train.maps)
    x = preprocessing.forward_maps(train.maps[:2])
    z = preprocessing.forward_params(train.params[:2])
    params = perturbed(jglow.init(jax.random.PRNGKey(0), config, x, z))
    path = tmp_path_factory.mktemp("model")
    save(path, TrainedModel(config, params, preprocessing))
    return str(path)


def _read(path):
    with open(path) as f:
        return json.load(f)


def test_synthetic_maps_give_figures_summaries_and_coverage_for_model_and_exact(workdir, tmp_path):
    out = str(tmp_path / "inference")
    summary = infer.main(["--model", workdir, "--synthetic", "4", "--grid", GRID, "--figures", "2",
                          "--refine", "--out", out])
    files = set(os.listdir(out))
    assert {f"map_{i:04d}.json" for i in range(4)} <= files
    assert {"map_0000.png", "map_0001.png", "coverage.json", "coverage.png", "posteriors.npz",
            "summary.json"} <= files and "map_0002.png" not in files
    assert summary == _read(os.path.join(out, "summary.json"))
    assert summary["n_maps"] == 4 and summary["grid_shape"] == [10, 10]
    assert set(summary["coverage"]) == {"model", "exact"}
    for calibration in summary["coverage"].values():
        assert calibration["n_maps"] == 4 and set(calibration["coverage"]) == {"0.68", "0.95"}
    record = _read(os.path.join(out, "map_0001.json"))
    for name in ("model", "exact"):
        assert 0.0 <= record[name]["truth"]["credibility"] <= 1.0
        assert all(low <= m <= high for m, (low, high) in zip(record[name]["mean"], PRIOR_BOX))
    theta = record["gradient_map"]["theta"]
    assert all(low <= t <= high for t, (low, high) in zip(theta, PRIOR_BOX))
    tables = np.load(os.path.join(out, "posteriors.npz"))
    assert tables["model_log_likelihood"].shape == tables["exact_log_likelihood"].shape == (4, 10, 10)
    assert np.all(np.isfinite(tables["model_log_likelihood"]))


def test_a_map_file_without_truth_gives_summaries_and_no_coverage(workdir, tmp_path):
    path = str(tmp_path / "maps.npy")
    np.save(path, synthetic_maps(4, 1, size=16, seed=9).maps)
    summary = infer.main(["--model", workdir, "--map", path, "--grid", GRID, "--figures", "1",
                          "--out", str(tmp_path / "out")])
    assert summary["n_maps"] == 4 and "coverage" not in summary
    record = _read(str(tmp_path / "out" / "map_0003.json"))
    assert "truth" not in record["model"] and "exact" not in record
    hpd = record["model"]["hpd"]
    assert 0.0 < hpd["0.68"]["volume"] < hpd["0.95"]["volume"] <= 0.4 * 0.4 + 1e-9
    assert (tmp_path / "out" / "map_0000.png").is_file()


def test_map_files_are_read_with_their_parameters_and_checked(workdir, tmp_path):
    maps = synthetic_maps(3, 1, size=16, seed=9).maps
    np.save(tmp_path / "maps.npy", maps)
    np.save(tmp_path / "params.npy", np.array([0.3, 0.8]))
    loaded, truths = infer.load_maps(str(tmp_path / "maps.npy"), str(tmp_path / "params.npy"))
    np.testing.assert_array_equal(loaded, maps)
    assert truths.shape == (3, 2) and np.all(truths == [0.3, 0.8])
    np.save(tmp_path / "one.npy", maps[0])
    one, no_truth = infer.load_maps(str(tmp_path / "one.npy"))
    assert one.shape == (1, 16, 16) and no_truth is None
    np.save(tmp_path / "bad_params.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"expected parameters of shape \(2,\) or \(3, 2\), got \(2, 2\)"):
        infer.load_maps(str(tmp_path / "maps.npy"), str(tmp_path / "bad_params.npy"))
    np.save(tmp_path / "small.npy", maps[:, :8, :8])
    with pytest.raises(ValueError, match=r"maps must have shape \(N, 16, 16\) for this model, got \(3, 8, 8\)"):
        infer.main(["--model", workdir, "--map", str(tmp_path / "small.npy")])
