"""Loaders of the two real CAMELS layouts, written small by the tests themselves."""

import csv

import numpy as np
import pytest

from jglow import data
from jglow.data import validation

N_SIMS, PER_SIM, SIDE = 4, 3, 8


def _maps(n=N_SIMS * PER_SIM, side=SIDE, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).lognormal(8.0, 1.0, size=(n, side, side)).astype(dtype)


def _table(n=N_SIMS, seed=0):
    """(n, 6) physical parameters: Ωm, σ8, A_SN1, A_AGN1, A_SN2, A_AGN2."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0.1, 0.5, n), rng.uniform(0.6, 1.0, n),
                            rng.uniform(0.25, 4.0, (n, 2)), rng.uniform(0.5, 2.0, (n, 2))])


def _write_multifield(directory, maps, table, suite="IllustrisTNG"):
    maps_path = directory / f"Maps_HI_{suite}_LH_z=0.00.npy"
    np.save(maps_path, maps)
    np.savetxt(directory / f"params_LH_{suite}.txt", table)
    return maps_path


def _write_higlow(directory, maps, table):
    maps_path = directory / "Images_HI_IllustrisTNG_z=5.99.npy"
    np.save(maps_path, maps)
    with open(directory / "CAMELs_params.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "Omega_m", "sigma_8", "A_SN1", "A_AGN1", "A_SN2", "A_AGN2",
                         "seed"])
        for i, row in enumerate(table):
            writer.writerow([f"LH_{i}", *(f"{v:.17g}" for v in row), 1000 + i])
    return maps_path


def _is_memory_map(array):
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base
    return False


@pytest.fixture(params=["multifield", "higlow"])
def layout(request, tmp_path):
    """(maps path, maps, table) of a small data set in each real layout."""
    maps, table = _maps(), _table()
    write = _write_multifield if request.param == "multifield" else _write_higlow
    return write(tmp_path, maps, table), maps, table


def test_reads_both_layouts(layout):
    maps_path, maps, table = layout
    ms = data.load_camels(maps_path, maps_per_sim=PER_SIM)
    np.testing.assert_array_equal(ms.maps, maps)
    np.testing.assert_array_equal(ms.sim, np.arange(len(maps)) // PER_SIM)
    np.testing.assert_allclose(ms.params, table[ms.sim][:, :2].astype(np.float32))
    assert ms.maps.dtype == np.float32 and _is_memory_map(ms.maps)


def test_columns_select_physical_parameters(layout):
    maps_path, _, table = layout
    ms = data.load_camels(maps_path, maps_per_sim=PER_SIM, columns=(5, 2))
    np.testing.assert_allclose(ms.params, table[ms.sim][:, [5, 2]].astype(np.float32))
    with pytest.raises(ValueError, match=r"columns \[6\] out of range.*6 physical parameters"):
        data.load_camels(maps_path, maps_per_sim=PER_SIM, columns=(0, 6))


def test_downsampling_block_averages(layout):
    maps_path, maps, _ = layout
    ms = data.load_camels(maps_path, maps_per_sim=PER_SIM, downsample=4)
    expected = maps.astype(np.float64).reshape(len(maps), 2, 4, 2, 4).mean(axis=(2, 4))
    assert ms.maps.shape == (len(maps), 2, 2) and ms.maps.dtype == np.float32
    np.testing.assert_allclose(ms.maps, expected, rtol=1e-6)
    for bad in (3, 0, 2.0):
        with pytest.raises(ValueError, match=rf"downsample={bad!r} must be a positive integer "
                                             rf"factor dividing the map side; maps are 8×8"):
            data.load_camels(maps_path, maps_per_sim=PER_SIM, downsample=bad)


def test_float64_maps_become_float32(tmp_path):
    maps = _maps(dtype=np.float64)
    ms = data.load_camels(_write_multifield(tmp_path, maps, _table()), maps_per_sim=PER_SIM)
    assert ms.maps.dtype == np.float32
    np.testing.assert_allclose(ms.maps, maps, rtol=1e-7)


def test_explicit_params_path(tmp_path):
    maps_path = tmp_path / "anything.npy"
    np.save(maps_path, _maps())
    np.savetxt(tmp_path / "my_params.txt", _table())
    ms = data.load_camels(maps_path, tmp_path / "my_params.txt", maps_per_sim=PER_SIM)
    assert len(ms) == N_SIMS * PER_SIM


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="maps file not found: .*nothing.npy"):
        data.load_camels(tmp_path / "nothing.npy")
    maps_path = tmp_path / "Maps_HI_SIMBA_LH_z=0.00.npy"
    np.save(maps_path, _maps())
    with pytest.raises(FileNotFoundError,
                       match=r"no parameter file found beside .*params_LH_SIMBA\.txt"
                             r".*CAMELs_params\.csv"):
        data.load_camels(maps_path)
    with pytest.raises(FileNotFoundError, match="parameter file not found: .*absent.txt"):
        data.load_camels(maps_path, tmp_path / "absent.txt")


def test_map_count_must_match_parameter_rows(layout):
    maps_path, _, _ = layout
    with pytest.raises(ValueError, match=r"holds 12 maps but .* has 4 simulations; expected "
                                         r"maps_per_sim × simulations = 15 × 4 = 60 maps"):
        data.load_camels(maps_path)


def test_malformed_csv_row_names_its_line(tmp_path):
    maps_path = _write_higlow(tmp_path, _maps(), _table())
    with open(tmp_path / "CAMELs_params.csv", "a") as handle:
        handle.write("LH_4,0.3,oops,1,1,1,1,5\n")
    with pytest.raises(ValueError,
                       match=r"CAMELs_params.csv, line 6: expected a name, six numbers"):
        data.load_camels(maps_path, maps_per_sim=PER_SIM)


def test_maps_must_be_a_stack(tmp_path):
    maps_path = _write_multifield(tmp_path, _maps()[..., None], _table())
    with pytest.raises(ValueError,
                       match=r"expected maps of shape \(N, H, W\), got \(12, 8, 8, 1\)"):
        data.load_camels(maps_path, maps_per_sim=PER_SIM)


@pytest.mark.parametrize("value", [0.0, -2.0, np.nan, np.inf])
@pytest.mark.parametrize("downsample", [1, 2])
def test_bad_pixels_name_the_first_bad_map(tmp_path, monkeypatch, value, downsample):
    monkeypatch.setattr(validation, "CHUNK_BYTES", 3 * SIDE * SIDE * 4)  # 3 maps per chunk
    maps = _maps()
    maps[7, 5, 6] = value
    maps[10, 0, 0] = 0.0
    maps_path = _write_multifield(tmp_path, maps, _table())
    with pytest.raises(ValueError, match=rf"map 7 has pixel value {value} at \(row 5, column 6\)"):
        data.load_camels(maps_path, maps_per_sim=PER_SIM, downsample=downsample)


def test_chunked_reading_gives_the_same_maps(tmp_path, monkeypatch):
    maps_path = _write_multifield(tmp_path, _maps(), _table())
    whole = data.load_camels(maps_path, maps_per_sim=PER_SIM, downsample=2)
    monkeypatch.setattr(validation, "CHUNK_BYTES", 5 * SIDE * SIDE * 4)
    chunked = data.load_camels(maps_path, maps_per_sim=PER_SIM, downsample=2)
    np.testing.assert_array_equal(whole.maps, chunked.maps)
