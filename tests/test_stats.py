"""Power spectra in Pylians `Pk_plane` conventions, and the spectrum comparison helpers."""

import math

import jax
import numpy as np
import pytest

from jglow import stats
from jglow.data import sample_synthetic, synthetic_spectrum
from jglow.data.synthetic import LOG10_MEAN

BOX = 25.0


def _pylians_modes(n):
    """Pylians' independent modes by explicit loops: a list of `(kx, ky)` integer frequencies,
    DC included, exactly as `Pk_plane` visits them."""
    middle = n // 2
    modes = []
    for kxx in range(n):
        kx = kxx - n if kxx > middle else kxx
        for ky in range(middle + 1):
            if (ky == 0 or (ky == middle and n % 2 == 0)) and kx < 0:
                continue
            modes.append((kx, ky))
    return modes


def _direct_power_spectrum(field, box):
    """Loop-based Pk_plane of one `(n, n)` field in float64: each mode's DFT by an explicit
    sum over pixels, binned by floor(|k|), DC bin dropped."""
    n = field.shape[0]
    rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    n_bins = int(math.isqrt(2 * (n // 2) ** 2)) + 1
    k_sum, p_sum, count = np.zeros(n_bins), np.zeros(n_bins), np.zeros(n_bins)
    for kx, ky in _pylians_modes(n):
        mode = np.sum(field * np.exp(-2j * np.pi * (kx * rows + ky * cols) / n))
        radius = math.sqrt(kx * kx + ky * ky)
        k_sum[int(radius)] += radius
        p_sum[int(radius)] += abs(mode) ** 2
        count[int(radius)] += 1
    kf = 2 * np.pi / box
    return (k_sum / count * kf)[1:], (p_sum / count * (box / n**2) ** 2)[1:], count[1:]


@pytest.mark.parametrize("n", [6, 7, 8, 10])
def test_power_spectrum_equals_direct_loop_computation(n):
    maps = np.random.default_rng(n).lognormal(size=(3, n, n)).astype(np.float32)
    k, pk, nmodes = stats.power_spectrum(maps, BOX)
    for i in range(3):
        k_ref, pk_ref, nmodes_ref = _direct_power_spectrum(maps[i].astype(np.float64), BOX)
        np.testing.assert_array_equal(nmodes, nmodes_ref)
        np.testing.assert_allclose(k, k_ref, rtol=1e-6)
        np.testing.assert_allclose(pk[i], pk_ref, rtol=2e-5)


def test_binning_matches_loops_for_every_small_size():
    for n in range(2, 100):
        _, bin_index, radius, n_bins = stats._independent_modes(n)
        modes = _pylians_modes(n)[1:]
        expected_bins = [int(math.sqrt(kx * kx + ky * ky)) - 1 for kx, ky in modes]
        assert n_bins == math.isqrt(2 * (n // 2) ** 2)
        assert sorted(bin_index.tolist()) == sorted(expected_bins)
        assert np.all(np.bincount(bin_index, minlength=n_bins) > 0)


@pytest.mark.parametrize("n", [7, 8, 16])
def test_parseval(n):
    """L² var(δ) = 2 Σ nmodes·P − (L/n²)² Σ |δ_k|² over the self-conjugate non-DC modes."""
    maps = 3.0 + np.random.default_rng(1).normal(size=(4, n, n))
    k, pk, nmodes = stats.power_spectrum(maps.astype(np.float32), BOX)
    half_plane = 2.0 * np.sum(np.asarray(nmodes) * np.asarray(pk, np.float64), axis=1)
    rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    self_conjugate = 0.0
    if n % 2 == 0:  # modes (n/2, 0), (0, n/2), (n/2, n/2): real-space checkerboard sums
        signs = [(-1.0) ** rows, (-1.0) ** cols, (-1.0) ** (rows + cols)]
        self_conjugate = sum(np.sum(maps * s, axis=(1, 2)) ** 2 for s in signs)
    lhs = half_plane - (BOX / n**2) ** 2 * self_conjugate
    np.testing.assert_allclose(lhs, BOX**2 * maps.var(axis=(1, 2)), rtol=1e-5)


def test_recovers_synthetic_input_spectrum_within_cosmic_variance():
    n, n_maps, theta = 32, 300, np.array([0.3, 0.8], np.float32)
    maps = sample_synthetic(theta[None], maps_per_sim=n_maps, size=n, seed=3)
    k, pk, nmodes = stats.power_spectrum(np.log10(maps) - LOG10_MEAN, BOX)
    # Expected: the input P averaged over each bin's modes; per-mode variance of |δ_k|² is
    # E² (complex modes) or 2E² (self-conjugate real modes).
    modes = np.array(_pylians_modes(n)[1:])
    radius = np.hypot(modes[:, 0], modes[:, 1])
    p = np.asarray(synthetic_spectrum(radius * (2 * np.pi / BOX), theta), np.float64)
    self_conjugate = np.all((2 * modes) % n == 0, axis=1)
    bins = np.floor(radius).astype(int) - 1
    expected = np.bincount(bins, weights=p)
    variance = np.bincount(bins, weights=np.where(self_conjugate, 2.0, 1.0) * p**2)
    n_bins = len(k)
    expected /= np.asarray(nmodes)
    sigma = np.sqrt(variance / n_maps) / np.asarray(nmodes)
    z = (np.asarray(pk).mean(axis=0) - expected) / sigma
    assert np.all(np.abs(z) < 4.5), z
    assert np.sum(z**2) < n_bins + 4 * np.sqrt(2 * n_bins)


def test_jit_and_scale_invariance():
    maps = np.random.default_rng(0).lognormal(size=(2, 16, 16)).astype(np.float32)
    eager = stats.power_spectrum(maps, BOX)
    jitted = jax.jit(stats.power_spectrum)(maps, BOX)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Raw HI column densities reach 1e12 and more: |δ_k|² must not overflow float32.
    _, pk_big, _ = stats.power_spectrum(maps * np.float32(1e15), BOX)
    np.testing.assert_allclose(pk_big, np.asarray(eager[1]) * 1e30, rtol=1e-5)


def test_box_size_sets_units():
    maps = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
    k1, pk1, _ = stats.power_spectrum(maps, 25.0)
    k2, pk2, _ = stats.power_spectrum(maps, 50.0)
    np.testing.assert_allclose(k2, np.asarray(k1) / 2, rtol=1e-6)
    np.testing.assert_allclose(pk2, np.asarray(pk1) * 4, rtol=1e-6)


def test_power_spectrum_refuses_non_square_maps():
    with pytest.raises(ValueError, match=r"\(N, n, n\).*got \(2, 8, 6\)"):
        stats.power_spectrum(np.ones((2, 8, 6), np.float32))


def test_mean_std_power_and_r2_score():
    pk = np.random.default_rng(0).uniform(1, 2, size=(5, 4)).astype(np.float32)
    mean, std = stats.mean_std_power(pk)
    np.testing.assert_allclose(mean, pk.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, pk.std(axis=0), rtol=1e-5)
    assert float(stats.r2_score(pk, pk)) == pytest.approx(1.0)
    true = np.array([[1.0, 2.0, 3.0, 6.0]])            # mean over k 3, Σ(T − 3)² = 14
    gen = np.array([[2.0, 2.0, 2.0, 6.0], [0.0, 2.0, 4.0, 6.0]])  # mean spectrum 1, 2, 3, 6
    assert float(stats.r2_score(gen, true)) == pytest.approx(1.0)
    assert float(stats.r2_score(gen[:1], true)) == pytest.approx(1.0 - 2.0 / 14.0)
    with pytest.raises(ValueError, match=r"pk_gen must have shape \(N, K\)"):
        stats.r2_score(pk[0], pk)
