"""The HI-like simulator: its linear theory against an independent library and quadrature, its
fields against their spectra, 2LPT's growth scaling, the feedback parameters' effects, the
files it writes and its determinism."""

import numpy as np
import pytest
import scipy.integrate
from colossus.cosmology import cosmology as colossus_cosmology

from jglow.data import cosmology, hi_like, load_camels, load_mapset
from jglow.train.make_data import main as make_main
from jglow.train.make_data import write
from jglow.stats import power_spectrum
from jglow.train.config import build_parser, config_from_args, data_line
from jglow.train.main import run

BOX = hi_like.BOX_SIZE


def colossus(omega_m, sigma_8=0.8):
    """Colossus's flat ΛCDM with CAMELS's fixed parameters (an independent implementation)."""
    return colossus_cosmology.setCosmology(
        f"camels_{omega_m}", params=dict(flat=True, H0=100 * cosmology.HUBBLE, Om0=omega_m,
                                         Ob0=cosmology.OMEGA_B, sigma8=sigma_8,
                                         ns=cosmology.N_S, Tcmb0=cosmology.T_CMB,
                                         relspecies=False), persistence="")


@pytest.mark.parametrize("omega_m", [0.1, 0.3, 0.5])
def test_linear_spectrum_and_growth_equal_colossus(omega_m):
    k = np.logspace(-3, 2, 40)
    reference = colossus(omega_m)
    expected = reference.matterPowerSpectrum(k, model="eisenstein98_zb")
    np.testing.assert_allclose(cosmology.linear_power(k, omega_m, 0.8), expected, rtol=1e-3)
    for z in (0.0, 1.0, 3.0):
        np.testing.assert_allclose(cosmology.growth_factor(1 / (1 + z), omega_m),
                                   reference.growthFactor(z), rtol=1e-4)


@pytest.mark.parametrize("omega_m, sigma_8", [(0.1, 0.6), (0.3, 0.8), (0.5, 1.0)])
def test_sigma_8_recomputed_from_the_spectrum(omega_m, sigma_8):
    """σ(8 Mpc/h) by adaptive quadrature in k equals the σ8 the spectrum was normalised to."""
    def integrand(log_k):
        k = np.exp(log_k)
        window = cosmology.top_hat_window(k * 8.0)
        return k ** 3 * cosmology.linear_power(k, omega_m, sigma_8) * window ** 2 / (2 * np.pi ** 2)

    variance, _ = scipy.integrate.quad(integrand, np.log(1e-5), np.log(1e3), limit=500)
    assert abs(np.sqrt(variance) / sigma_8 - 1) < 1e-3


def test_the_linear_field_has_the_input_spectrum():
    m, omega_m, sigma_8 = 48, 0.3, 0.8
    power = lambda k: cosmology.linear_power(k, omega_m, sigma_8)
    # Noise whose every DFT mode has modulus sqrt(m³): the binned power is then the mode
    # average of P(k) itself, up to rounding.
    rng = np.random.default_rng(0)
    phases = np.fft.fftn(rng.standard_normal((m, m, m)))
    unit_noise = np.real(np.fft.ifftn(phases / np.abs(phases))) * m ** 1.5
    delta = np.fft.irfftn(hi_like.linear_density(unit_noise, BOX, omega_m, sigma_8), s=(m,) * 3,
                          axes=(0, 1, 2))
    k, measured, modes = hi_like.binned_power(delta, BOX)
    kx, ky, kz = np.meshgrid(*(2 * np.pi / BOX * np.fft.fftfreq(m, 1 / m),) * 3, indexing="ij")
    k_modes = np.sqrt(kx ** 2 + ky ** 2 + kz ** 2)
    bins = np.floor(k_modes / (2 * np.pi / BOX) + 1e-9).astype(int)
    expected = [power(k_modes[bins == i]).mean() for i in range(1, m // 2)]
    np.testing.assert_allclose(measured, expected, rtol=1e-4)
    # Gaussian noise: each mode's |δ_k|² scatters by 100%, so over 6 fields each bin is within 4
    # of its standard errors (P / sqrt(independent modes)), and all bins together within 2%.
    fields = [np.fft.irfftn(hi_like.linear_density(rng.standard_normal((m,) * 3), BOX, omega_m,
                                                   sigma_8), s=(m,) * 3, axes=(0, 1, 2))
              for _ in range(6)]
    average = np.mean([hi_like.binned_power(f, BOX)[1] for f in fields], axis=0)
    independent = 6 * modes / 2
    ratio = average / np.asarray(expected)
    assert np.all(np.abs(ratio - 1) < 4 / np.sqrt(independent))
    assert abs(np.average(ratio, weights=independent) - 1) < 0.02


def test_lpt_first_order_scales_with_growth_and_second_with_its_square():
    m, omega_m = 24, 0.3
    delta_k = hi_like.linear_density(np.random.default_rng(1).standard_normal((m,) * 3), BOX,
                                     omega_m, 0.8)
    first_1, second_1 = hi_like.lpt_displacements(delta_k, BOX, 1.0, omega_m, a=0.5)
    first_h, second_h = hi_like.lpt_displacements(delta_k, BOX, 0.5, omega_m, a=0.5)
    np.testing.assert_allclose(first_h, 0.5 * first_1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second_h, 0.25 * second_1, rtol=1e-5, atol=1e-6)
    # D₂ = −3/7 D² Ωm(a)^(−1/143) (Bouchet et al. 1995)
    assert cosmology.second_order_growth(1.0, 1.0, omega_m) == pytest.approx(
        -3 / 7 * omega_m ** (-1 / 143))
    # ∇·ψ₁ = −δ: the first-order displacement's divergence, in Fourier space, is −D δ.
    kx, ky, kz = hi_like._wavevectors(m, BOX)
    divergence = sum(1j * kc * np.fft.rfftn(f.astype(np.float64))
                     for kc, f in zip((kx, ky, kz), first_h))
    np.testing.assert_allclose(divergence, -0.5 * delta_k, atol=1e-4 * np.abs(delta_k).max())


@pytest.fixture(scope="module")
def feedback_statistics():
    """Statistics of `log10` maps of one initial condition (3 realisations, 16×16) with each
    feedback parameter at the low and the high end of its range, the others at 1."""
    def statistics(params):
        maps = np.concatenate([hi_like.simulate(params, 16, np.random.default_rng([1, s]))
                               for s in range(3)])
        y = np.log10(maps)
        _, pk, _ = power_spectrum(y, BOX)
        pk = np.asarray(pk)
        return {"mean": y.mean(), "median": np.median(y), "p99.9": np.percentile(y, 99.9),
                "small-scale power": pk[:, pk.shape[1] // 2:].mean() / pk.mean()}

    out = {}
    for j, (low, high) in enumerate(hi_like.FEEDBACK_BOX, start=2):
        for end, value in (("low", low), ("high", high)):
            params = np.array([0.3, 0.8, 1.0, 1.0, 1.0, 1.0])
            params[j] = value
            out[hi_like.PARAMETER_NAMES[j], end] = statistics(params)
    return out


@pytest.mark.parametrize("name, statistic, change", [
    ("A_SN1", "small-scale power", -0.3),  # more smoothing: 30% less small-scale power at least
    ("A_AGN1", "p99.9", -0.15),            # the brightest pixels lose 0.15 dex at least
    ("A_SN2", "median", -1.0),             # a higher shielding threshold: a dex fainter median
    ("A_AGN2", "mean", -0.25),             # amplitude A^(−1/2) over a factor 4: −0.30 dex
])
def test_each_feedback_parameter_moves_its_statistic(feedback_statistics, name, statistic,
                                                      change):
    low = feedback_statistics[name, "low"][statistic]
    high = feedback_statistics[name, "high"][statistic]
    moved = (high - low) / low if statistic == "small-scale power" else high - low
    assert moved < change, (name, statistic, low, high)


def test_a_agn2_scales_the_maps_and_nothing_else():
    params = np.array([0.3, 0.8, 1.0, 1.0, 1.0, 0.5])
    low = hi_like.simulate(params, 8, np.random.default_rng(3))
    params[5] = 2.0
    high = hi_like.simulate(params, 8, np.random.default_rng(3))
    np.testing.assert_allclose(high / low, 0.5, rtol=1e-5)


def test_maps_look_like_hi():
    """Most HI in bright pixels, at least 4 decades between the 1st and 99th percentiles."""
    maps = load_mapset("hi-like", 16, 6).maps
    y = np.log10(maps)
    assert np.percentile(y, 99) - np.percentile(y, 1) > 4.0
    brightest_tenth = np.sort(maps.ravel())[-maps.size // 10:]
    assert brightest_tenth.sum() > 0.5 * maps.sum()


def test_parameters_follow_the_camels_design():
    table = hi_like.hi_like_parameters(200, seed=4)
    assert table.shape == (200, 6)
    for j, (low, high) in enumerate([(0.1, 0.5), (0.6, 1.0), *hi_like.FEEDBACK_BOX]):
        values = table[:, j] if j < 2 else np.log(table[:, j])
        low, high = (low, high) if j < 2 else (np.log(low), np.log(high))
        strata = np.floor((values - low) / (high - low) * 200).astype(int)
        assert sorted(strata) == list(range(200)), hi_like.PARAMETER_NAMES[j]  # one per stratum


def test_simulations_are_deterministic_and_independent_of_their_number():
    table = hi_like.hi_like_parameters(3, seed=5)
    first = hi_like.simulate_all(table, 8, seed=5)
    np.testing.assert_array_equal(first, hi_like.simulate_all(table, 8, seed=5))
    assert not np.allclose(first, hi_like.simulate_all(table, 8, seed=6))
    one = hi_like.simulate(table[1], 8, np.random.default_rng([5, 1, 1]))
    np.testing.assert_array_equal(first[15:30], one)
    assert first.dtype == np.float32 and first.shape == (45, 8, 8)
    assert np.all(np.isfinite(first)) and np.all(first > 0)


@pytest.mark.parametrize("kind, suite", [("hi-like", "HILike"), ("lognormal", "Lognormal")])
def test_written_files_round_trip_through_load_camels(tmp_path, kind, suite):
    maps_path, params_path = write(tmp_path, kind, n_sims=3, size=8, seed=2)
    assert maps_path.name == f"Maps_HI_{suite}_LH_z=0.00.npy"
    assert params_path.name == f"params_LH_{suite}.txt"
    loaded = load_camels(maps_path, columns=range(6))
    table = np.loadtxt(params_path)
    np.testing.assert_array_equal(loaded.maps, np.load(maps_path))
    np.testing.assert_allclose(loaded.params, table[np.arange(45) // 15], rtol=1e-6)
    assert loaded.maps.shape == (45, 8, 8)
    if kind == "hi-like":
        np.testing.assert_allclose(table, hi_like.hi_like_parameters(3, seed=2), atol=1e-6)
        np.testing.assert_allclose(loaded.maps, hi_like.simulate_all(table, 8, seed=2),
                                   rtol=1e-4)


def test_make_refuses_to_overwrite_and_bad_sizes(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    assert make_main(["--sims", "1", "--size", "8", *out]) == 0
    assert make_main(["--sims", "1", "--size", "8", *out]) == 2
    assert "exist; pass --overwrite" in capsys.readouterr().err
    assert make_main(["--sims", "1", "--size", "12", "--out", str(tmp_path / "b")]) == 2
    assert "--size must be a power of two >= 4, got 12" in capsys.readouterr().err
    assert make_main(["--sims", "1", "--size", "8", "--overwrite", *out]) == 0


def test_every_preset_trains_on_a_fixed_set_of_files(tmp_path, capsys):
    write(tmp_path / "data", "hi-like", n_sims=10, size=16, seed=0)
    flags = ["--preset", "standard", "--data", str(tmp_path / "data"), "--map-size", "16",
             "--levels", "2", "--steps", "2", "--hidden", "8", "--batch-size", "16",
             "--max-steps", "3", "--warmup-steps", "2", "--figure-every", "0", "--no-progress"]
    config = config_from_args(build_parser().parse_args(flags))
    assert not config.fresh_data and config.schedule == "cosine" and config.ema_decay > 0
    assert config.condition_noise == 0.2  # the standard preset's lever for a fixed set
    assert config_from_args(build_parser().parse_args(
        flags + ["--condition-noise", "0"])).condition_noise == 0.0
    assert config_from_args(build_parser().parse_args(
        ["--preset", "standard"])).condition_noise == 0.0  # fresh lognormal simulations
    assert data_line(config) == f"data: the fixed set of simulations in {tmp_path / 'data'}"
    result = run(config, tmp_path / "run", progress=False)
    assert int(result.state.step) == 3 and result.model is not None
    assert data_line(config) in capsys.readouterr().err


def test_fresh_hi_like_simulations_are_available():
    flags = ["--data", "hi-like", "--fresh-data", "--map-size", "16"]
    config = config_from_args(build_parser().parse_args(flags))
    assert config.fresh_data
    assert data_line(config) == ("data: hi-like, 400 simulations, new training simulations "
                                 "every epoch")
