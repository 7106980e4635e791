"""Splitting by simulation, and augmentation by the symmetries of periodic maps."""

import jax
import numpy as np
import pytest

from jglow import data, stats


@pytest.fixture(scope="module")
def mapset():
    return data.synthetic_maps(30, 4, size=8, seed=0)


def test_split_never_shares_a_simulation(mapset):
    parts = data.split_by_simulation(mapset, (0.8, 0.1, 0.1), seed=0)
    sims = [set(part.sim.tolist()) for part in parts]
    assert [len(s) for s in sims] == [24, 3, 3]
    assert not (sims[0] & sims[1] or sims[0] & sims[2] or sims[1] & sims[2])
    assert set.union(*sims) == set(mapset.sim.tolist())
    for part in parts:
        assert len(part) == 4 * len(set(part.sim.tolist()))        # whole simulations
        assert np.all(np.diff(np.flatnonzero(np.isin(mapset.sim, part.sim))) > 0)
        rows = np.flatnonzero(np.isin(mapset.sim, part.sim))
        np.testing.assert_array_equal(part.maps, mapset.maps[rows])
        np.testing.assert_array_equal(part.params, mapset.params[rows])


def test_split_is_deterministic_in_seed(mapset):
    first = data.split_by_simulation(mapset, seed=3)
    again = data.split_by_simulation(mapset, seed=3)
    other = data.split_by_simulation(mapset, seed=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.sim, b.sim)
    assert set(first[0].sim.tolist()) != set(other[0].sim.tolist())


def test_split_refuses_bad_fractions(mapset):
    for fractions in [(0.5, 0.4), (0.9, 0.2, -0.1)]:
        with pytest.raises(ValueError, match="fractions must be non-negative and sum to 1"):
            data.split_by_simulation(mapset, fractions)


SQUARE, RECTANGLE = (8, 8, 8, 1), (8, 8, 12, 2)   # few shapes: each one compiles once


def _batch(shape, seed=0):
    return np.random.default_rng(seed).lognormal(size=shape).astype(np.float32)


@pytest.mark.parametrize("shape", [SQUARE, RECTANGLE])
def test_augment_preserves_shape_and_pixel_multiset(shape):
    x = _batch(shape)
    y = np.asarray(jax.jit(data.augment)(jax.random.key(0), x))
    assert y.shape == x.shape and y.dtype == x.dtype
    for i in range(shape[0]):
        for c in range(shape[3]):
            np.testing.assert_array_equal(np.sort(y[i, ..., c], axis=None),
                                          np.sort(x[i, ..., c], axis=None))
    assert not np.array_equal(y, x)


def test_augment_moves_channels_together():
    x = _batch(RECTANGLE)
    x[..., 1] = 2 * x[..., 0]
    y = np.asarray(data.augment(jax.random.key(1), x))
    np.testing.assert_array_equal(y[..., 1], 2 * y[..., 0])


def test_augment_is_a_symmetry_of_the_power_spectrum():
    x = _batch(SQUARE)
    y = data.augment(jax.random.key(2), x)
    _, pk_x, _ = stats.power_spectrum(x[..., 0])
    _, pk_y, _ = stats.power_spectrum(y[..., 0])
    np.testing.assert_allclose(pk_y, pk_x, rtol=1e-4)


def test_augment_is_deterministic_in_key_and_varies_per_map():
    x = np.repeat(_batch((1,) + SQUARE[1:]), SQUARE[0], axis=0)
    a, b = data.augment(jax.random.key(5), x), data.augment(jax.random.key(5), x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.augment(jax.random.key(6), x))
    assert len({np.asarray(m).tobytes() for m in a}) > 4        # maps transformed independently


def test_augment_reaches_every_symmetry_of_the_square():
    """Up to a cyclic shift, exactly the 8 symmetries of the square occur (rotations included)."""
    square = np.zeros(SQUARE[1:3], np.float32)
    square[0, :3] = [1, 2, 3]                    # an L-shape: no symmetry of its own
    square[1, 0] = 4
    x = np.broadcast_to(square[None, ..., None], SQUARE)
    draws = [np.asarray(data.augment(key, x))[..., 0]
             for key in jax.random.split(jax.random.key(0), 30)]
    side = square.shape[0]

    def canonical(m):   # the representative of m's class under cyclic shifts
        return min(np.roll(m, (r, c), axis=(0, 1)).tobytes()
                   for r in range(side) for c in range(side))

    group = [np.rot90(square, k) for k in range(4)] + [np.rot90(square.T, k) for k in range(4)]
    assert len({canonical(g) for g in group}) == 8
    assert {canonical(m) for batch in draws for m in batch} == {canonical(g) for g in group}


def test_augment_refuses_bad_rank():
    with pytest.raises(ValueError, match=r"x must have shape \(N, H, W, C\), got \(8, 8\)"):
        data.augment(jax.random.key(0), np.ones((8, 8), np.float32))
