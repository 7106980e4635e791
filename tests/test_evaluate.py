"""`python -m train.evaluate` and the statistics it reports, each on inputs with a known answer."""

import copy
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import adam_steps

import jglow
from jglow import stats
from jglow.posterior.recalibration import TEMPERATURES
from jglow.saving import TrainedModel
from jglow.train import checkpoints, evaluate, report
from jglow.train.config import build_parser, config_from_args
from jglow.train.data import prepare

FLAGS = ["--map-size", "16", "--levels", "1", "--steps", "2", "--hidden", "8", "--n-sims", "20",
         "--batch-size", "16"]
"""A tiny run (16×16 maps, one level of 2 steps, seconds to compile): 20 synthetic simulations,
2 of them held out (30 maps)."""
FAST = ["--n-maps", "6", "--samples-per-sim", "4", "--grid", "5", "--figures", "1",
        "--no-progress"]
FIGURES = ("samples.png", "power.png", "power_ratio.png", "pixel_pdf.png", "r2.png",
           "worst_power.png", "inference/coverage.png", "inference/map_0000.png")


# --- statistics with known answers -------------------------------------------------------------

def _spectra(rows):
    return jnp.asarray(rows, jnp.float32)


def test_identical_sets_give_r2_one_ratios_one_and_all_bins_within_two_se():
    pk = _spectra(np.random.default_rng(0).lognormal(size=(7, 5)))
    assert float(stats.r2_score(pk, pk)) == pytest.approx(1.0)
    mean_ratio, std_ratio = stats.spectrum_ratios(pk, pk)
    np.testing.assert_allclose(mean_ratio, 1.0, rtol=1e-6)
    np.testing.assert_allclose(std_ratio, 1.0, rtol=1e-6)
    assert float(stats.within_standard_errors(pk, pk)) == 1.0


def test_shifted_spectrum_gives_the_expected_r2_and_ratios():
    true = _spectra([[0.5, 1.5, 2.5, 3.5], [1.5, 2.5, 3.5, 4.5]])  # mean 1, 2, 3, 4
    # Σ_k (T̄_k − 2.5)² = 5; a shift of 0.5 in every bin leaves Σ_k 0.5² = 1: R² = 1 − 1/5
    assert float(stats.r2_score(true + 0.5, true)) == pytest.approx(0.8, abs=1e-6)
    mean_ratio, std_ratio = stats.spectrum_ratios(2.0 * true, true)
    np.testing.assert_allclose(mean_ratio, 2.0, rtol=1e-6)
    np.testing.assert_allclose(std_ratio, 2.0, rtol=1e-6)


def test_within_standard_errors_counts_the_bins_inside_two_standard_errors():
    true = _spectra([[0.0, 0.0], [2.0, 2.0]])  # mean 1, variance (ddof 1) 2, SE² of the mean 1
    # The same spread shifted by (2, 3): SE of the difference sqrt(1 + 1) = 1.414, so 2 SE = 2.83.
    assert float(stats.within_standard_errors(true + jnp.array([2.0, 3.0]), true)) == 0.5
    assert float(stats.within_standard_errors(true + 100.0, true)) == 0.0
    with pytest.raises(ValueError, match="at least 2 spectra"):
        stats.within_standard_errors(true[:1], true)


def test_within_standard_errors_of_one_distribution_is_about_0954():
    rng = np.random.default_rng(1)
    gen, true = (_spectra(rng.normal(3.0, 1.0, (n, 4000))) for n in (400, 300))
    assert float(stats.within_standard_errors(gen, true)) == pytest.approx(0.954, abs=0.015)


def test_score_summary_counts_nan_and_the_fraction_above_the_threshold():
    summary = stats.score_summary([0.5, 0.95, 1.0, np.nan], threshold=0.9)
    assert summary["median"] == pytest.approx(0.95)
    assert summary["mean"] == pytest.approx(2.45 / 3)
    assert summary["p10"] == pytest.approx(0.5 + 0.2 * 0.45)
    assert summary["fraction_above"] == 0.5 and summary["n"] == 4 and summary["n_nan"] == 1


def test_pixel_pdfs_and_ks_distance():
    values = np.random.default_rng(2).normal(size=(3, 8, 8))
    edges, density_true, density_gen = stats.pixel_pdfs(values, values, bins=10)
    np.testing.assert_array_equal(density_true, density_gen)
    assert np.sum(density_true * np.diff(edges)) == pytest.approx(1.0)
    assert stats.ks_distance(values, values) == 0.0
    assert stats.ks_distance([0.0, 1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0]) == pytest.approx(0.5)
    assert stats.ks_distance([0.0, 1.0], [5.0, np.nan, 6.0]) == 1.0  # NaN ignored
    with pytest.raises(ValueError, match="finite values in both sets"):
        stats.ks_distance([np.nan], [1.0])


def test_spread_maps_goes_round_robin_over_simulations():
    sim = np.array([0, 0, 0, 7, 7, 2])
    np.testing.assert_array_equal(evaluate.spread_maps(sim, 4), [0, 5, 3, 1])


def test_per_simulation_scores_on_identical_and_shifted_sets():
    rng = np.random.default_rng(3)
    pk = rng.lognormal(size=(6, 5)).astype(np.float32)
    sim = np.array([4, 4, 4, 9, 9, 9])
    shifted = pk + np.where(sim == 9, 50.0, 0.0)[:, None].astype(np.float32)
    r2, within = evaluate.per_simulation_scores(pk, sim, shifted, sim, np.array([4, 9]))
    assert r2[0] == pytest.approx(1.0) and within[0] == 1.0
    true_mean = pk[3:].mean(axis=0)
    expected = 1.0 - 5 * 50.0**2 / np.sum((true_mean - true_mean.mean()) ** 2)
    assert r2[1] == pytest.approx(expected, rel=1e-4) and within[1] == 0.0
    r2, _ = evaluate.per_simulation_scores(pk, sim, pk[:4], sim[:4], np.array([4, 9]))
    assert math.isnan(r2[1])  # one generated spectrum: no score, not a silent 1


# --- the command -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir (run.json and model) of the tiny run after a few Adam steps."""
    config = config_from_args(build_parser().parse_args(FLAGS))
    data = prepare(config)
    x, z = data.train.x[:32], data.train.z[:32]
    params = jglow.init(jax.random.key(0), config.model, x, z)
    params = adam_steps(lambda p: -jnp.mean(jglow.log_prob(p, x, z)), params,
                        jglow.trainable_mask(params), steps=3, learning_rate=3e-3)
    path = tmp_path_factory.mktemp("run")
    checkpoints.claim_workdir(path, config, overwrite=False, write=True)
    jglow.save(path, TrainedModel(config.model, params, data.preprocessing))
    return path


@pytest.fixture(scope="module")
def evaluated(workdir):
    """`(exit status, report.json, report.md, output folder)` of one fast evaluation."""
    out = workdir / "report"
    status = evaluate.main(["--model", str(workdir), "--out", str(out), *FAST])
    report = json.loads((out / "report.json").read_text())
    return status, report, (out / "report.md").read_text(), out


def _numbers(value):
    """Every number in a JSON value (None for non-finite numbers kept as None)."""
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return [value] if value is None or isinstance(value, (int, float)) else []


def test_the_report_has_finite_numbers_and_its_figures(evaluated):
    status, report, markdown, out = evaluated
    assert status == 0
    sections = ("marginal", "conditional", "exact_generator", "likelihood", "inference", "health")
    for name in sections:
        assert None not in _numbers(report[name]), f"non-finite number in {name}"
    for figure in FIGURES:
        assert (out / figure).is_file() and 0 < (out / figure).stat().st_size < 200_000, figure
        assert f"]({figure})" in markdown
    assert report["held_out"] == {"split": "test", "n_sims": 2, "n_maps": 30}
    assert report["health"]["n_samples"] == 30 + 2 * 4
    assert report["health"]["n_nonfinite"] == 0
    assert report["health"]["reconstruction"]["max_abs_model_space"] < 1e-4
    assert report["inference"]["n_maps"] == 6
    assert set(report["inference"]) >= {"model", "exact", "baseline"}
    assert (out / "baseline.json").is_file()  # fitted on the training split, for train.infer
    assert len(report["marginal"]["power"]["k"]) == math.isqrt(2 * 8**2)


def test_the_report_numbers_agree_with_their_definitions(evaluated):
    _, report, markdown, _ = evaluated
    likelihood = report["likelihood"]
    assert likelihood["gap_bits_per_dim"] == pytest.approx(
        likelihood["bits_per_dim"] - likelihood["exact_bits_per_dim"], abs=1e-6)
    power = report["marginal"]["power"]
    np.testing.assert_allclose(power["mean_ratio"],
                               np.divide(power["mean_gen"], power["mean_true"]), rtol=1e-5)
    per_sim = report["conditional"]["per_sim"]
    assert report["conditional"]["r2"]["median"] == pytest.approx(np.median(per_sim["r2"]))
    assert report["conditional"]["worst"][0]["r2"] == pytest.approx(min(per_sim["r2"]))
    exact = report["exact_generator"]["conditional"]["r2"]
    assert exact["median"] > 0.5  # the generator's own samples match its held-out maps
    for name in ("model", "exact", "baseline"):
        coverage = report["inference"][name]["coverage"]
        assert 0.0 <= coverage["0.68"]["empirical"] <= coverage["0.95"]["empirical"] <= 1.0
    assert f"{likelihood['gap_bits_per_dim']:.3g}" in markdown
    inference = report["inference"]
    assert inference["grid_shape"] == [4, 4] and inference["zoom"]["coarse_shape"] == [2, 2]
    for name in ("model", "exact"):
        entry = inference[name]
        curve = entry["expected_coverage"]
        levels, empirical = np.array(curve["levels"]), np.array(curve["empirical"])
        assert entry["max_deviation"] == pytest.approx(np.max(np.abs(empirical - levels)))
        assert entry["inside_band"] == bool(np.all((curve["band_low"] <= empirical)
                                                   & (empirical <= np.array(curve["band_high"]))))
        assert empirical[68] == entry["coverage"]["0.68"]["empirical"]
        assert all(sum(c) == 6 for c in entry["rank_histograms"]["counts"].values())
        assert f"{entry['max_deviation']:.3g}" in markdown


def test_a_temperature_is_fitted_on_validation_maps_and_saved_for_infer(workdir, tmp_path):
    model, _, data = evaluate.load_inputs(evaluate.Options(str(workdir)))
    options = evaluate.Options(str(workdir), n_maps=12, grid=5, progress=False)
    record = evaluate.fitted_temperature(model, data.validation, options, tmp_path)
    assert record["n_maps"] == 12 and record["fitted_on"] == "validation"
    assert record["temperature"] in TEMPERATURES
    assert record["distance_after"] <= record["distance_before"]
    assert json.loads((tmp_path / report.RECALIBRATION_FILE).read_text()) == record
    (tmp_path / "evaluation").mkdir()
    shutil.copy(tmp_path / report.RECALIBRATION_FILE, tmp_path / "evaluation")
    assert report.saved_temperature(tmp_path) == record["temperature"]
    assert report.saved_temperature(tmp_path / "elsewhere") is None
    few = options._replace(n_maps=evaluate.MIN_RECALIBRATION_MAPS - 1)
    assert evaluate.fitted_temperature(model, data.validation, few, tmp_path / "none") is None


def test_the_measured_calibration_is_in_the_headline_and_what_infer_prints(evaluated, workdir,
                                                                           tmp_path):
    _, data, markdown, out = evaluated
    model = data["inference"]["model"]
    c68, c95 = model["coverage"]["0.68"], model["coverage"]["0.95"]
    line = (f"calibration on held-out data (6 maps, this evaluation): 68% HPD coverage "
            f"{c68['empirical']:.2f} [{c68['interval'][0]:.2f}, {c68['interval'][1]:.2f}], 95% "
            f"{c95['empirical']:.2f} [{c95['interval'][0]:.2f}, {c95['interval'][1]:.2f}], max "
            f"deviation of the expected-coverage curve {model['max_deviation']:.3f}")
    assert line in report.headline(data).splitlines() and line in markdown
    assert "exact likelihood on held-out data (6 maps, this evaluation)" in markdown
    assert "summary-statistic baseline on held-out data (6 maps, this evaluation)" in markdown
    errors = data["inference"]["model"]["errors"]["Omega_m"]
    baseline = data["inference"]["baseline"]["errors"]["Omega_m"]
    assert (f"Model / summary-statistic baseline, RMS error / width: Omega_m "
            f"{errors['rmse'] / baseline['rmse']:.3g} / "
            f"{errors['mean_std'] / baseline['mean_std']:.3g}") in markdown
    expected_warnings = not (c68["is_nominal"] and c95["is_nominal"] and model["inside_band"])
    assert bool(report.warnings_of(data)) == expected_warnings
    record = json.loads((workdir / "model.json").read_text())
    assert data["params_sha256"] == record["params_sha256"]
    # train.infer reads WORKDIR/evaluation/report.json: the same line, its path as the source
    (tmp_path / "evaluation").mkdir()
    shutil.copy(out / "report.json", tmp_path / "evaluation" / "report.json")
    shutil.copy(workdir / "model.json", tmp_path / "model.json")
    lines, warnings = report.held_out_calibration(tmp_path)
    source = str(tmp_path / "evaluation" / "report.json")
    assert lines[0] == line.replace("this evaluation", source) and len(lines) == 3
    assert lines[2].startswith(f"summary-statistic baseline on held-out data (6 maps, {source})")
    assert len(warnings) == len(report.warnings_of(data))
    assert report.held_out_calibration(tmp_path / "elsewhere") == (
        [f"no held-out calibration yet: run python -m train.evaluate --model "
         f"{tmp_path / 'elsewhere'}"], [])


def test_the_round_trip_is_in_the_headline_and_an_unsound_inverse_warns(evaluated):
    _, data, markdown, _ = evaluated
    error = data["health"]["reconstruction"]["max_abs_model_space"]
    line = (f"non-finite samples 0 of 38; round trip max |decode(encode(x)) - x| {error:.3g} "
            f"(model space)")
    assert line in report.headline(data).splitlines() and line in markdown
    assert not any("inverse" in warning for warning in report.warnings_of(data))
    unsound = copy.deepcopy(data)
    unsound["health"]["n_nonfinite"] = 3
    unsound["health"]["reconstruction"]["max_abs_model_space"] = 0.5
    assert report.warnings_of(unsound)[-1] == (
        "warning: the model's inverse is unsound on held-out data: decode(encode(x)) differs "
        "from x by up to 0.5 in model space (expected <= 0.001): the inverse is "
        "ill-conditioned; 3 of 38 samples are not finite")


def test_the_default_batch_on_the_cpu_is_recorded_but_not_in_the_command(evaluated):
    _, data, _, _ = evaluated
    assert data["options"]["batch"] == evaluate.CPU_BATCH == 256
    assert "--batch" not in data["command"]


def test_zoom_is_the_default_and_its_switch_is_reproduced():
    assert evaluate.parse_args(["--model", "w"]).zoom
    options = evaluate.parse_args(["--model", "w", "--no-zoom", "--grid", "2"])
    assert not options.zoom
    assert evaluate.command_line(options) == "python -m train.evaluate --model w --grid 2 --no-zoom"


def test_missing_workdir_and_unknown_data_are_refused_with_their_names(workdir, tmp_path, capsys):
    missing = str(tmp_path / "absent")
    assert evaluate.main(["--model", missing, *FAST]) == 2
    assert f"--model {missing!r}: no such directory" in capsys.readouterr().err
    assert evaluate.main(["--model", str(workdir), "--data", str(tmp_path / "nowhere.npy"),
                          *FAST]) == 2
    error = capsys.readouterr().err
    assert "nowhere.npy" in error and "expected a simulator ('synthetic', 'hi-like')" in error
    assert evaluate.main(["--model", str(workdir), "--samples-per-sim", "1"]) == 2
    assert "--samples-per-sim 1: expected an integer >= 2" in capsys.readouterr().err
    assert evaluate.main(["--model", str(workdir), "--grid", "2"]) == 2
    assert "--grid 2: expected an integer >= 3" in capsys.readouterr().err
    model_only = tmp_path / "model_only"
    jglow.save(model_only, jglow.load(workdir))
    assert evaluate.main(["--model", str(model_only), *FAST]) == 2
    assert "run.json not found" in capsys.readouterr().err
