"""Ensembles (`jglow.ensemble`): the mixture likelihood, mixture sampling, grids, saving, and
`python -m train.ensemble` on a tiny run."""

import json
import re
import math

import jax
import numpy as np
import pytest
from scipy import stats

import jglow
from jglow import posterior
from jglow.data import fit_preprocessing, synthetic_maps
from jglow.ensemble import member, sample_with_members, stack
from jglow.saving import TrainedModel
from helpers import tiny_config, toy_batch
from jglow.train import ensemble as train_ensemble
from jglow.train import evaluate

FLAGS = ["--map-size", "16", "--levels", "1", "--steps", "2", "--hidden", "8", "--n-sims", "20",
         "--batch-size", "16", "--epochs", "1", "--figure-every", "0", "--no-progress"]
"""tests/test_evaluate.py's tiny run, for one epoch (15 steps) and no figures."""


@pytest.fixture(scope="module")
def members():
    """`([params × 4], x (16, 16, 16, 1), z (16, 2))`: four copies of an initialised tiny model
    whose trainable leaves are moved by independent noise, so that no network is zero and the
    four densities differ (cheaper to compile than `helpers.trained_model`)."""
    config = tiny_config()
    x, z = toy_batch(config, 16)
    params = jglow.init(jax.random.key(0), config, x, z)
    mask = jglow.trainable_mask(params)

    def moved(seed):
        rng = np.random.default_rng(seed)
        return jax.tree_util.tree_map(
            lambda leaf, trainable: leaf + 0.05 * rng.normal(size=leaf.shape).astype(np.float32)
            if trainable else leaf, params, mask)

    return [moved(seed) for seed in range(4)], x, z


@pytest.fixture(scope="module")
def preprocessing():
    return fit_preprocessing(synthetic_maps(2, 3, size=16).maps, "sigmoid")


def _member_log_probs(params_list, x, z):
    return np.stack([np.asarray(jglow.log_prob(p, x, z), np.float64) for p in params_list])


def _log_mean_exp(values):
    """The mixture of `(K, ...)` log densities, computed in float64."""
    values = np.asarray(values, np.float64)
    peak = values.max(axis=0)
    return peak + np.log(np.mean(np.exp(values - peak), axis=0))


# --- the likelihood --------------------------------------------------------------------------

def test_one_member_ensemble_is_the_member(members):
    (params, *_), x, z = members
    ensemble = stack([params])
    assert ensemble.size == 1 and ensemble.config == params.config
    np.testing.assert_allclose(jglow.log_prob(ensemble, x, z), jglow.log_prob(params, x, z),
                               rtol=1e-6)


def test_identical_members_give_the_members_density(members):
    (params, *_), x, z = members
    np.testing.assert_allclose(jglow.log_prob(stack([params] * 4), x, z),
                               jglow.log_prob(params, x, z), rtol=1e-6)


def test_two_members_give_the_mean_of_their_densities(members):
    params, x, z = members
    first, second = _member_log_probs(params[:2], x, z)
    assert np.max(np.abs(first - second)) > 1.0  # the members differ, so the mixture shows
    by_hand = np.logaddexp(first, second) - math.log(2.0)
    np.testing.assert_allclose(jglow.log_prob(stack(params[:2]), x, z), by_hand, rtol=1e-6)


def test_members_round_trip_and_refusals(members):
    params, x, z = members
    ensemble = stack(params)
    assert ensemble.size == 4
    np.testing.assert_array_equal(member(ensemble, 2).priors[0]["mean"]["Dense_0"]["dense_bias"],
                                  params[2].priors[0]["mean"]["Dense_0"]["dense_bias"])
    with pytest.raises(ValueError, match="at least one member"):
        stack([])
    other = jglow.init(jax.random.key(0), tiny_config(hidden=4), x, z)
    with pytest.raises(ValueError, match=r"member 1 has config .*hidden=4.*member 0 has "
                                         r".*hidden=8.*hidden: 8 vs 4"):
        stack([params[0], other])
    with pytest.raises(IndexError, match="member 4 of an ensemble of 4"):
        member(ensemble, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 16, 16, 1\)"):
        jglow.log_prob(ensemble, x[:, :8], z)
    for name, fn in (("encode", lambda: jglow.encode(ensemble, x, z)),
                     ("decode", lambda: jglow.decode(ensemble, np.zeros((16, 256)), z))):
        with pytest.raises(TypeError, match=rf"jglow\.{name}: .*no single latent space.*"
                                            r"jglow\.ensemble\.member\(params, k\)"):
            fn()
    with pytest.raises(TypeError, match="takes one model's GlowParams"):
        jglow.model.log_prob(ensemble, x, z)


# --- sampling --------------------------------------------------------------------------------

def test_sampling_draws_members_uniformly_and_each_row_from_its_member(members):
    params, _, z = members
    ensemble, rows, temperature = stack(params), 400, 0.7
    z = np.tile(np.asarray(z), (rows // len(z), 1))
    key = jax.random.key(5)
    x, chosen = sample_with_members(ensemble, key, z, temperature)
    assert x.shape == (rows, 16, 16, 1) and chosen.shape == (rows,)
    low, high = stats.binom.interval(0.999, rows, 1 / ensemble.size)
    counts = np.bincount(np.asarray(chosen), minlength=ensemble.size)
    assert len(counts) == ensemble.size and np.all((low <= counts) & (counts <= high)), counts
    latent_key = jax.random.split(key)[1]
    own = np.stack([np.asarray(jglow.sample(p, latent_key, z, temperature)) for p in params])
    assert np.min(np.abs(own[0] - own[1]).max(axis=(1, 2, 3))) > 1e-2  # members differ per row
    np.testing.assert_allclose(x, own[np.asarray(chosen), np.arange(rows)], atol=1e-5)
    np.testing.assert_array_equal(jglow.sample(ensemble, key, z, temperature), x)


# --- grids and the posterior's likelihood ------------------------------------------------------

def test_grid_log_prob_is_the_mixture_of_the_members_tables(members):
    params, x, _ = members
    zs = np.random.default_rng(0).uniform(-1, 1, (7, 2)).astype(np.float32)
    tables = [posterior.grid_log_prob(p, x[:3], zs, chunk_size=3) for p in params]
    np.testing.assert_allclose(posterior.grid_log_prob(stack(params), x[:3], zs, chunk_size=3),
                               _log_mean_exp(tables), rtol=1e-6)


def test_model_likelihood_of_an_ensemble(members, preprocessing):
    params, _, _ = members
    maps = np.asarray(synthetic_maps(2, 1, size=16, seed=3).maps)
    thetas = np.array([[0.2, 0.7], [0.3, 0.8], [0.4, 0.9]])
    mixed = posterior.ModelLikelihood(stack(params[:2]), preprocessing)
    single = [posterior.ModelLikelihood(p, preprocessing) for p in params[:2]]
    np.testing.assert_allclose(mixed(maps, thetas),
                               _log_mean_exp([like(maps, thetas) for like in single]), rtol=1e-6)


# --- saving ----------------------------------------------------------------------------------

def _save_members(directory, params_list, preprocessing):
    paths = []
    for k, params in enumerate(params_list):
        paths.append(directory / f"m{k}")
        jglow.save(paths[-1], TrainedModel(params.config, params, preprocessing))
    return paths


def test_save_ensemble_and_load_round_trip(members, preprocessing, tmp_path):
    params, x, z = members
    paths = _save_members(tmp_path / "models", params[:3], preprocessing)
    jglow.save_ensemble(tmp_path / "ensemble", paths)
    record = json.loads((tmp_path / "ensemble" / "ensemble.json").read_text())
    assert record == {"format": "jglow-ensemble", "version": 1,
                      "members": ["../models/m0", "../models/m1", "../models/m2"]}
    loaded = jglow.load(tmp_path / "ensemble")
    assert isinstance(loaded.params, jglow.EnsembleParams) and loaded.params.size == 3
    assert loaded.config == params[0].config and loaded.preprocessing == preprocessing
    np.testing.assert_array_equal(jglow.log_prob(loaded.params, x, z),
                                  jglow.log_prob(stack(params[:3]), x, z))
    assert isinstance(jglow.load(paths[0]).params, jglow.GlowParams)
    assert not list((tmp_path / "ensemble").glob("*.tmp"))


def test_members_with_another_config_or_preprocessing_are_refused(members, preprocessing,
                                                                  tmp_path):
    params, x, z = members
    good = _save_members(tmp_path / "good", params[:1], preprocessing)
    other_config = jglow.init(jax.random.key(0), tiny_config(hidden=4), x, z)
    config_member = _save_members(tmp_path / "config", [other_config], preprocessing)
    minmax = fit_preprocessing(synthetic_maps(2, 3, size=16).maps, "minmax")
    preprocessing_member = _save_members(tmp_path / "pre", params[1:2], minmax)
    for bad, message in ((config_member[0], r"another config .*hidden: 8 vs 4"),
                         (preprocessing_member[0], r"another preprocessing .*'sigmoid' vs "
                                                   r"'minmax'")):
        with pytest.raises(ValueError, match=rf"member {re.escape(str(bad))} has {message}"):
            jglow.save_ensemble(tmp_path / "refused", good + [bad])
        (tmp_path / "written").mkdir(exist_ok=True)
        (tmp_path / "written" / "ensemble.json").write_text(json.dumps(
            {"format": "jglow-ensemble", "version": 1, "members": [str(good[0]), str(bad)]}))
        with pytest.raises(ValueError, match=rf"member {re.escape(str(bad))} has {message}"):
            jglow.load(tmp_path / "written")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ValueError, match="at least one member directory"):
        jglow.save_ensemble(tmp_path / "refused", [])


# --- python -m train.ensemble ----------------------------------------------------------------

def test_train_ensemble_command(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert train_ensemble.main(FLAGS + ["--members", "2", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert f"ensemble of 2 members (seeds 0..1) in {workdir}" in out
    for k in (0, 1):
        run = json.loads((workdir / f"member_{k}" / "run.json").read_text())
        assert run["seed"] == k and (workdir / f"member_{k}" / "model.json").is_file()
    assert json.loads((workdir / "ensemble.json").read_text())["members"] == ["member_0",
                                                                             "member_1"]
    assert (workdir / "run.json").read_text() == (workdir / "member_0" / "run.json").read_text()
    model, _, held, _ = evaluate.load_inputs(evaluate.Options(str(workdir)))
    assert isinstance(model.params, jglow.EnsembleParams) and model.params.size == 2
    assert np.all(np.isfinite(jglow.log_prob(model.params, held.x[:4], held.z[:4])))


@pytest.mark.parametrize("flags, message", [
    (["--members", "0"], "--members 0: expected an ensemble of at least 1 member"),
    (["--members", "2", "--coordinator", "localhost:1234"], "--coordinator: "),
])
def test_train_ensemble_refusals(tmp_path, capsys, flags, message):
    assert train_ensemble.main(FLAGS + flags + ["--workdir", str(tmp_path / "w")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {message}"), error
    assert not (tmp_path / "w").exists()
