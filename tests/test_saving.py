"""jglow.save / jglow.load: a bit-exact round trip of config, params and preprocessing."""

import dataclasses

import jax
import numpy as np
import pytest

import jglow
from jglow.data import fit_preprocessing, synthetic_maps
from jglow.files import replace_atomically, temporary_name
from helpers import tiny_config, toy_batch


@pytest.fixture(scope="module")
def model():
    config = tiny_config(actnorm=True)
    x, z = toy_batch(config, 4)
    rng = np.random.default_rng(0)
    params = jglow.init(jax.random.key(0), config, x, z)
    params = jax.tree_util.tree_map(  # every leaf distinct, so a swapped leaf would show
        lambda a: a + rng.normal(size=a.shape).astype(np.float32), params)
    preprocessing = fit_preprocessing(synthetic_maps(2, 3, size=16).maps, "sigmoid")
    return jglow.TrainedModel(config, params, preprocessing)


def test_round_trip_is_bit_exact(model, tmp_path):
    jglow.save(tmp_path / "m", model)
    loaded = jglow.load(tmp_path / "m")
    assert loaded.config == model.config == loaded.params.config
    assert loaded.preprocessing == model.preprocessing
    saved_leaves = jax.tree_util.tree_leaves_with_path(model.params)
    loaded_leaves = jax.tree_util.tree_leaves_with_path(loaded.params)
    assert [p for p, _ in saved_leaves] == [p for p, _ in loaded_leaves]
    for (path, a), (_, b) in zip(saved_leaves, loaded_leaves):
        assert np.asarray(a).dtype == np.asarray(b).dtype, path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def test_saving_again_replaces_the_model(model, tmp_path):
    jglow.save(tmp_path, model)
    moved = jax.tree_util.tree_map(lambda a: a + 1.0, model.params)
    jglow.save(tmp_path, model._replace(params=moved))
    loaded = jglow.load(tmp_path)
    np.testing.assert_array_equal(loaded.params.priors[0]["mean"]["Dense_0"]["dense_bias"],
                                  moved.priors[0]["mean"]["Dense_0"]["dense_bias"])
    assert not list(tmp_path.glob("*.tmp"))


def test_torn_pair_is_detected(model, tmp_path):
    jglow.save(tmp_path, model)
    other = jax.tree_util.tree_map(lambda a: a * 2.0, model.params)
    np.savez(tmp_path / "params.npz", **{jax.tree_util.keystr(p): np.asarray(v) for p, v in
                                         jax.tree_util.tree_leaves_with_path(other)})
    with pytest.raises(ValueError, match="checksum"):
        jglow.load(tmp_path)


def test_refusals(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        jglow.load(tmp_path)
    with pytest.raises(TypeError, match="TrainedModel"):
        jglow.save(tmp_path, (model.config, model.params, model.preprocessing))
    with pytest.raises(TypeError, match=r"jglow\.save_ensemble\(path, member_dirs\)"):
        jglow.save(tmp_path, model._replace(params=jglow.ensemble.stack([model.params])))
    other_config = dataclasses.replace(model.config, hidden=4)
    with pytest.raises(ValueError, match="differs"):
        jglow.save(tmp_path, model._replace(config=other_config))


def test_replace_atomically_writes_the_new_content_or_leaves_the_old(tmp_path):
    path = tmp_path / "record.json"
    replace_atomically(path, lambda handle: handle.write(b"old"))
    replace_atomically(path, lambda handle: handle.write(b"new content"))
    assert path.read_bytes() == b"new content"

    def failing(handle):
        handle.write(b"half of the next")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, failing)
    assert path.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_temporaries_of_one_file_have_unique_names_beside_it(tmp_path):
    path = tmp_path / "params.npz"
    names = {temporary_name(path) for _ in range(100)}
    assert len(names) == 100
    assert all(n.parent == tmp_path and n.name.startswith("params.npz.") and
               n.name.endswith(".tmp") and len(n.name) == len("params.npz.") + 12 + 4
               for n in names)
