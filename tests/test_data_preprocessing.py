"""Preprocessing: invertibility, log-Jacobian, parameter box map, saving, refusals."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jglow import data, posterior

METHODS = ("minmax", "sigmoid")


@pytest.fixture(scope="module")
def maps():
    return data.synthetic_maps(8, 4, size=16, seed=0).maps


@pytest.mark.parametrize("method", METHODS)
def test_fit_and_range(maps, method):
    prep = data.fit_preprocessing(maps, method)
    x = np.asarray(prep.forward_maps(maps))
    assert x.shape == maps.shape + (1,) and x.dtype == np.float32
    y = np.log10(maps.astype(np.float64))
    if method == "minmax":
        assert prep.center == pytest.approx((y.min() + y.max()) / 2)
        assert prep.scale == pytest.approx((y.max() - y.min()) / 2)
        assert x.min() == pytest.approx(-1.0, abs=1e-6) and x.max() == pytest.approx(1.0, abs=1e-6)
    else:
        assert prep.center == pytest.approx(y.mean()) and prep.scale == pytest.approx(y.std())
        assert np.all(np.abs(x) < 1) and abs(x.mean()) < 0.05


def test_minmax_round_trip(maps):
    prep = data.fit_preprocessing(maps, "minmax")
    np.testing.assert_allclose(prep.inverse_maps(prep.forward_maps(maps)), maps, rtol=1e-6)


def test_sigmoid_round_trip(maps):
    """x → maps → x is exact to 1e-6. Maps → x → maps is exact to 1e-6 in the bulk; beyond, a
    float32 ulp of x costs ln10·scale·2/(1 − x²) in relative map precision (module docstring)."""
    prep = data.fit_preprocessing(maps, "sigmoid")
    x = np.asarray(prep.forward_maps(maps))
    back = np.asarray(prep.inverse_maps(x))
    np.testing.assert_allclose(prep.forward_maps(back), x, rtol=1e-6, atol=1e-6)
    bulk = np.abs(x[..., 0]) <= 0.6
    assert bulk.mean() > 0.8
    np.testing.assert_allclose(back[bulk], maps[bulk], rtol=1e-6)
    ulp_cost = np.log(10) * prep.scale * 2 / (1 - x[..., 0].astype(np.float64) ** 2)
    assert np.all(np.abs(back / maps - 1) <= 1e-6 + 4 * np.finfo(np.float32).eps * ulp_cost)


@pytest.mark.parametrize("method", METHODS)
def test_log_det_matches_autodiff(maps, method):
    prep = data.fit_preprocessing(maps, method)
    tiny = jnp.asarray(maps[:2, :4, :4])
    log_det = prep.forward_log_det(tiny)
    for i in range(2):
        jac = jax.jacfwd(lambda m: prep.forward_maps(m[None])[0, ..., 0])(tiny[i])
        full = np.asarray(jac, np.float64).reshape(16, 16)
        sign, slogdet = np.linalg.slogdet(full)
        assert sign != 0
        np.testing.assert_allclose(log_det[i], slogdet, rtol=1e-5)
        diagonal = np.log(np.abs(np.diagonal(full)))
        np.testing.assert_allclose(log_det[i], diagonal.sum(), rtol=1e-5)
    np.testing.assert_allclose(jax.jit(prep.forward_log_det)(tiny), log_det, rtol=1e-6)


def test_params_map_prior_box_onto_unit_cube():
    prep = data.Preprocessing("minmax", 8.0, 2.0)
    corners = np.array([[0.1, 0.6], [0.5, 1.0], [0.3, 0.8]], np.float32)
    np.testing.assert_allclose(prep.forward_params(corners), [[-1, -1], [1, 1], [0, 0]], atol=1e-6)
    theta = np.random.default_rng(0).uniform([0.1, 0.6], [0.5, 1.0], (50, 2)).astype(np.float32)
    np.testing.assert_allclose(prep.inverse_params(prep.forward_params(theta)), theta, rtol=1e-6)
    with pytest.raises(ValueError, match=r"params must have shape \(\.\.\., 2\).*got \(50, 3\)"):
        prep.forward_params(np.ones((50, 3)))


def test_box_coordinates_are_one_map_shared_by_the_preprocessing_and_the_posterior():
    low, high = np.array([0.1, 0.6], np.float32), np.array([0.5, 1.0], np.float32)
    corners = np.array([[0.1, 0.6], [0.5, 1.0], [0.3, 0.8]], np.float32)
    np.testing.assert_allclose(data.prior.to_unit_box(corners, low, high),
                               [[-1, -1], [1, 1], [0, 0]], atol=1e-6)
    u = np.random.default_rng(1).uniform(-1.0, 1.0, (20, 2)).astype(np.float32)
    theta = data.prior.from_unit_box(u, low, high)
    assert np.all((theta >= low) & (theta <= high))
    np.testing.assert_allclose(data.prior.to_unit_box(theta, low, high), u, atol=1e-6)
    target = posterior.gradient.log_posterior(lambda maps, thetas: jnp.zeros((1, len(thetas))),
                                              np.ones((4, 4)), box=data.PRIOR_BOX)
    prep = data.Preprocessing("minmax", 8.0, 2.0)
    np.testing.assert_array_equal(target.unit(jnp.asarray(theta)), prep.forward_params(theta))
    np.testing.assert_array_equal(target.theta(jnp.asarray(u)), prep.inverse_params(u))


@pytest.mark.parametrize("method", METHODS)
def test_save_and_load_through_json(maps, method):
    prep = data.fit_preprocessing(maps, method)
    restored = data.Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert restored == prep
    np.testing.assert_array_equal(restored.forward_maps(maps), prep.forward_maps(maps))
    with pytest.raises(ValueError, match=r"lacks \['scale'\]"):
        data.Preprocessing.from_dict({"method": method, "center": 1.0, "box": [[0, 1]]})


def test_jit_matches_eager(maps):
    prep = data.fit_preprocessing(maps, "sigmoid")
    np.testing.assert_allclose(jax.jit(prep.forward_maps)(maps), prep.forward_maps(maps), rtol=1e-6)
    x = prep.forward_maps(maps)
    np.testing.assert_allclose(jax.jit(prep.inverse_maps)(x), prep.inverse_maps(x), rtol=1e-6)


def test_refusals(maps):
    bad = maps[:5].copy()
    bad[3, 2, 1] = 0.0
    with pytest.raises(ValueError, match=r"map 3 has pixel value 0\.0 at \(row 2, column 1\)"):
        data.fit_preprocessing(bad)
    prep = data.fit_preprocessing(maps)
    for value in (-1.0, np.nan, np.inf):
        bad[3, 2, 1] = value
        with pytest.raises(ValueError, match="map 3 has pixel value"):
            prep.forward_maps(bad)
        with pytest.raises(ValueError, match="map 3 has pixel value"):
            prep.forward_log_det(bad)
    assert not np.all(np.isfinite(jax.jit(prep.forward_maps)(bad)))   # unchecked when traced
    with pytest.raises(ValueError,
                       match=r"method must be one of \('minmax', 'sigmoid'\), got 'tanh'"):
        data.fit_preprocessing(maps, "tanh")
    with pytest.raises(ValueError, match=r"maps must have shape \(N, H, W\), got \(16, 16\)"):
        prep.forward_maps(maps[0])
    with pytest.raises(ValueError, match=r"x must have shape \(N, H, W, 1\), got \(4, 16, 16\)"):
        prep.inverse_maps(maps[:4])
    with pytest.raises(ValueError, match="scale finite and > 0"):
        data.Preprocessing("minmax", 1.0, 0.0)
