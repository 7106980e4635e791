"""`python -m train.infer`: posterior figures, JSON summaries and coverage for a saved model."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from helpers import tiny_config
from test_posterior import perturbed

import jglow
from jglow.data import PRIOR_BOX, fit_preprocessing, synthetic_maps
from jglow.saving import TrainedModel, save
from jglow.train import infer, report

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


def test_synthetic_maps_give_figures_summaries_and_coverage_for_model_and_exact(workdir, tmp_path,
                                                                                capsys):
    out = str(tmp_path / "inference")
    summary = infer.run(["--model", workdir, "--synthetic", "4", "--grid", GRID, "--figures", "2",
                         "--refine", "--out", out])
    files = set(os.listdir(out))
    assert {f"map_{i:04d}.json" for i in range(4)} <= files
    assert {"map_0000.png", "map_0001.png", "coverage.json", "coverage.png", "posteriors.npz",
            "summary.json"} <= files and "map_0002.png" not in files
    assert summary == _read(os.path.join(out, "summary.json"))
    # zoomed by default: a budget of 10×10 is a 3×3 coarse pass and a 9×9 grid per map
    assert summary["n_maps"] == 4 and summary["grid_shape"] == [9, 9]
    assert summary["zoom"]["budget"] == [10, 10] and summary["zoom"]["coarse_shape"] == [3, 3]
    assert set(summary["zoom"]["n_touching_box"]) == {"model", "exact"}
    assert all(len(cells) == 2 and min(cells) > 0 for cells in
               summary["min_cells_per_std"].values())
    assert set(summary["coverage"]) == {"model", "exact"}
    for calibration in summary["coverage"].values():
        assert calibration["n_maps"] == 4 and set(calibration["coverage"]) == {"0.68", "0.95"}
        curve = calibration["expected_coverage"]
        assert len(curve["levels"]) == len(curve["empirical"]) == len(curve["band_low"]) == 101
        assert 0.0 <= calibration["max_deviation"] <= 1.0
        assert sum(calibration["rank_histograms"]["counts"]["sigma_8"]) == 4
    record = _read(os.path.join(out, "map_0001.json"))
    for name in ("model", "exact"):
        truth = record[name]["truth"]
        assert 0.0 <= truth["credibility"] <= 1.0 and 0.0 <= truth["cell_credibility"] <= 1.0
        assert truth["log_likelihood"] is not None
        assert all(low <= m <= high for m, (low, high) in zip(record[name]["mean"], PRIOR_BOX))
        assert record[name]["zoom"]["coarse_shape"] == [3, 3]
    theta = record["gradient_map"]["theta"]
    assert all(low <= t <= high for t, (low, high) in zip(theta, PRIOR_BOX))
    tables = np.load(os.path.join(out, "posteriors.npz"))
    assert tables["model_log_likelihood"].shape == tables["exact_log_likelihood"].shape == (4, 9, 9)
    assert tables["model_axis_Omega_m"].shape == tables["exact_axis_sigma_8"].shape == (4, 9)
    assert np.all(np.isfinite(tables["model_log_likelihood"]))
    assert np.all(np.isfinite(tables["model_truth_log_likelihood"]))
    assert tables["truths"].shape == (4, 2)
    printed = capsys.readouterr().out
    assert f"no held-out calibration yet: run python -m train.evaluate --model {workdir}" in printed


def _report(path, empirical_68, inside_band, params_sha256=None):
    """A minimal `evaluation/report.json` of 50 held-out maps."""
    coverage = {"0.68": {"empirical": empirical_68, "interval": [0.5, 0.84],
                         "is_nominal": 0.5 <= empirical_68 <= 0.84},
                "0.95": {"empirical": 0.94, "interval": [0.86, 1.0], "is_nominal": True}}
    section = {"coverage": coverage, "max_deviation": 0.043, "inside_band": inside_band}
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps({
        "params_sha256": params_sha256,
        "inference": {"n_maps": 50, "model": section, "exact": dict(section, max_deviation=0.02)}}))


def test_the_held_out_calibration_of_the_workdir_is_printed_with_warnings(workdir, tmp_path,
                                                                          capsys):
    model = tmp_path / "model"
    shutil.copytree(workdir, model)
    path = str(tmp_path / "maps.npy")
    np.save(path, synthetic_maps(2, 1, size=16, seed=9).maps)
    sha = json.loads((model / "model.json").read_text())["params_sha256"]
    _report(model / "evaluation", 0.66, True, sha)
    arguments = ["--model", str(model), "--map", path, "--grid", "5", "--figures", "0",
                 "--out", str(tmp_path / "out")]
    assert infer.main(arguments) == 0
    captured = capsys.readouterr()
    report_path = model / "evaluation" / "report.json"
    assert (f"calibration on held-out data (50 maps, {report_path}): 68% HPD coverage 0.66 [0.50, "
            f"0.84], 95% 0.94 [0.86, 1.00], max deviation of the expected-coverage curve 0.043"
            in captured.out)
    assert "exact likelihood on held-out data (50 maps" in captured.out
    assert "warning" not in captured.err and "note:" not in captured.out
    _report(model / "evaluation", 0.40, False, "another")
    lines, warnings = report.held_out_calibration(model)
    assert warnings == [
        "warning: the model's posteriors are not calibrated on held-out data "
        f"({report_path}): 68% HPD coverage 0.40 outside [0.50, 0.84]; the expected-coverage "
        "curve leaves its 99% band (max deviation 0.043)"]
    assert "was measured on other parameters than the saved model's" in lines[-1]


def test_a_map_file_without_truth_gives_summaries_and_no_coverage(workdir, tmp_path):
    path = str(tmp_path / "maps.npy")
    np.save(path, synthetic_maps(4, 1, size=16, seed=9).maps)
    summary = infer.run(["--model", workdir, "--map", path, "--grid", GRID, "--figures", "1",
                         "--no-zoom", "--out", str(tmp_path / "out")])
    assert summary["n_maps"] == 4 and "coverage" not in summary
    assert summary["grid_shape"] == [10, 10] and summary["zoom"] is None
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
    with pytest.raises(ValueError,
                       match=r"expected parameters of shape \(2,\) or \(3, 2\), got \(2, 2\)"):
        infer.load_maps(str(tmp_path / "maps.npy"), str(tmp_path / "bad_params.npy"))
    np.save(tmp_path / "small.npy", maps[:, :8, :8])
    with pytest.raises(ValueError,
                       match=r"maps must have shape \(N, 16, 16\) for this model, got \(3, 8, 8\)"):
        infer.run(["--model", workdir, "--map", str(tmp_path / "small.npy")])
