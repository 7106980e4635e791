"""Bad input where it enters: the model functions refuse non-finite, complex or non-numeric
values, conditions outside the prior box (unless `extrapolate=True`) and bad temperatures with an
`InputError` naming the value; an empty batch gives empty results; every command refuses bad
files and folders with one `error:` line and exit status 2; maps outside the training range are
warned of."""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config, toy_batch

import jglow
from jglow.data import fit_preprocessing, synthetic_maps
from jglow.ensemble import sample_with_members, stack
from jglow.errors import InputError
from jglow.saving import TrainedModel
from jglow.train import checkpoints, evaluate, infer
from jglow.train import main as train_main
from jglow.train.config import build_parser, config_from_args
from jglow.train.inputs import range_warnings

TINY = ["--map-size", "16", "--levels", "2", "--steps", "2", "--hidden", "8", "--batch-size",
        "16", "--no-progress"]
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def model():
    """`(params, ensemble of two, x (4, 16, 16, 1), z (4, 2))`: a tiny model at its
    initialisation."""
    config = tiny_config()
    x, z = toy_batch(config, 4)
    params = jglow.init(KEY, config, x, z)
    return params, stack([params, params]), np.asarray(x), np.asarray(z)


def _at(array, index, value):
    array = np.array(array)
    array[index] = value
    return array


NAN_MAP = r"x: map 1 has the non-finite value nan at index \(3, 4, 0\); expected finite values"
OUTSIDE = (r"z\[0, 1\] = 1\.5 lies outside the prior box \[-1, 1\] \(model space\) the model "
           r"was trained on; expected conditions in it, or extrapolate=True")
TEMPERATURE = r"temperature must be a finite real number >= 0 \(0: each prior's mean\), got "


@pytest.mark.parametrize("call, message", [
    (lambda p, e, x, z: jglow.log_prob(p, _at(x, (1, 3, 4, 0), np.nan), z), NAN_MAP),
    (lambda p, e, x, z: jglow.log_prob(e, _at(x, (1, 3, 4, 0), np.nan), z), NAN_MAP),
    (lambda p, e, x, z: jglow.encode(p, _at(x, (0, 0, 2, 0), -np.inf), z),
     r"x: map 0 has the non-finite value -inf at index \(0, 2, 0\)"),
    (lambda p, e, x, z: jglow.init(KEY, p.config, _at(x, (1, 3, 4, 0), np.nan), z), NAN_MAP),
    (lambda p, e, x, z: jglow.log_prob(p, x, _at(z, (2, 1), np.inf)),
     r"z: condition 2 has the non-finite value inf at index \(1,\)"),
    (lambda p, e, x, z: jglow.decode(p, _at(np.zeros((4, 256)), (3, 7), np.nan), z),
     r"latents: row 3 has the non-finite value nan at index \(7,\)"),
    (lambda p, e, x, z: jglow.log_prob(p, x, _at(z, (0, 1), 1.5)), OUTSIDE),
    (lambda p, e, x, z: jglow.log_prob(e, x, _at(z, (0, 1), 1.5)), OUTSIDE),
    (lambda p, e, x, z: jglow.encode(p, x, _at(z, (0, 1), 1.5)), OUTSIDE),
    (lambda p, e, x, z: jglow.decode(p, np.zeros((4, 256)), _at(z, (0, 1), 1.5)), OUTSIDE),
    (lambda p, e, x, z: jglow.sample(p, KEY, _at(z, (0, 1), 1.5)), OUTSIDE),
    (lambda p, e, x, z: sample_with_members(e, KEY, _at(z, (0, 1), 1.5)), OUTSIDE),
    (lambda p, e, x, z: jglow.sample(p, KEY, z, np.nan), TEMPERATURE + "nan"),
    (lambda p, e, x, z: jglow.sample(e, KEY, z, float("inf")), TEMPERATURE + "inf"),
    (lambda p, e, x, z: jglow.sample(p, KEY, z, -0.5), TEMPERATURE + "-0.5"),
    (lambda p, e, x, z: jglow.sample(p, KEY, z, 1j), TEMPERATURE + r"1j"),
    (lambda p, e, x, z: jglow.sample(p, KEY, z, "hot"), TEMPERATURE + "'hot'"),
    (lambda p, e, x, z: jglow.log_prob(p, x.astype(np.complex64), z),
     r"x is complex \(complex64\); expected real numbers"),
    (lambda p, e, x, z: jglow.log_prob(p, x, z.astype(str)),
     r"z has dtype <U\d+; expected real numbers"),
])
def test_bad_values_are_refused_naming_the_value(model, call, message):
    with pytest.raises(InputError, match=message):
        call(*model)


def test_extrapolation_when_asked_for_and_traced_conditions_are_not_checked(model):
    params, ensemble, x, z = model
    outside = _at(z, (0, 1), 1.5)
    assert np.isfinite(jglow.log_prob(params, x, outside, extrapolate=True)).all()
    assert np.isfinite(jglow.log_prob(ensemble, x, outside, extrapolate=True)).all()
    assert jglow.sample(params, KEY, outside, 0.0, extrapolate=True).shape == x.shape
    traced = jax.jit(lambda conditions: jglow.log_prob(params, x, conditions))(outside)
    np.testing.assert_allclose(traced, jglow.log_prob(params, x, outside, True), rtol=1e-6)


@pytest.mark.parametrize("call, shape", [
    (lambda p, e, x, z: jglow.log_prob(p, x[:0], z[:0]), (0,)),
    (lambda p, e, x, z: jglow.log_prob(e, x[:0], z[:0]), (0,)),
    (lambda p, e, x, z: jglow.encode(p, x[:0], z[:0]), (0, 256)),
    (lambda p, e, x, z: jglow.decode(p, np.zeros((0, 256)), z[:0]), (0, 16, 16, 1)),
    (lambda p, e, x, z: jglow.sample(p, KEY, z[:0]), (0, 16, 16, 1)),
    (lambda p, e, x, z: jglow.sample(e, KEY, z[:0]), (0, 16, 16, 1)),
    (lambda p, e, x, z: sample_with_members(e, KEY, z[:0])[1], (0,)),
])
def test_an_empty_batch_gives_empty_results(model, call, shape):
    assert jnp.shape(call(*model)) == shape


# --- the commands ------------------------------------------------------------------------------

def one_error_line(capsys) -> str:
    """The single line the command wrote to stderr (after `error: `); fails on anything else."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0][len("error: "):]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, model):
    """A saved tiny model (16×16 maps, preprocessing fitted on synthetic maps) with the
    `run.json` of the tiny training flags."""
    maps = synthetic_maps(4, 2, size=16, seed=1).maps
    path = tmp_path_factory.mktemp("model")
    jglow.save(path, TrainedModel(model[0].config, model[0], fit_preprocessing(maps)))
    config = config_from_args(build_parser().parse_args(TINY))
    checkpoints.claim_workdir(path, config, overwrite=False, write=True)
    return path


def _edit(record: dict, edit: str) -> str:
    """The JSON text of `record` changed by `edit`: "broken" (not JSON), "-KEY" (removed),
    "+KEY" (an unknown key added) or "KEY.SUB=VALUE" (VALUE as JSON)."""
    if edit == "broken":
        return json.dumps(record)[:-5]
    if edit[0] in "-+":
        record = {k: v for k, v in record.items() if k != edit[1:]}
        return json.dumps(dict(record, **({edit[1:]: 1} if edit[0] == "+" else {})))
    path, value = edit.split("=")
    *outer, last = path.split(".")
    target = record
    for key in outer:
        target = target[key]
    target[last] = json.loads(value)
    return json.dumps(record)


def _bad_maps(folder, kind):
    """A `.npy` file (an `.npz`, a folder) of maps of the given bad `kind`."""
    path = folder / ("maps.npz" if kind == "npz" else "maps.npy")
    arrays = {"strings": np.array([["a", "b"], ["c", "d"]]),
              "objects": np.array([1.0, "a", None], dtype=object),
              "empty": np.ones((0, 16, 16), np.float32), "rank": np.ones(16, np.float32),
              "nan": _at(np.full((2, 16, 16), 1e9, np.float32), (1, 2, 3), np.nan)}
    if kind == "folder":
        path.mkdir()
    elif kind == "npz":
        np.savez(path, maps=np.ones((1, 16, 16)))
    else:
        np.save(path, arrays[kind], allow_pickle=True)
    return path


MAPS = np.exp(np.random.default_rng(0).normal(0.0, 0.3, (2, 16, 16))).astype(np.float32)


@pytest.mark.parametrize("kind, message", [
    ("strings", "--map {path}: holds values of dtype <U1; expected real numbers"),
    ("objects", "--map {path}: holds values of dtype object; expected real numbers"),
    ("npz", "--map {path}: an .npz archive; expected a .npy file of one array (numpy.save)"),
    ("folder", "--map {path}: a folder; expected a .npy file of one array (numpy.save)"),
    ("empty", "{path}: holds no maps (shape (0, 16, 16)); expected at least one map"),
    ("rank", "{path}: expected maps of shape (H, W) or (N, H, W), got (16,)"),
    ("nan", "--map {path}: map 1 has pixel value nan at (row 2, column 3); expected strictly "
            "positive, finite values"),
])
def test_infer_refuses_bad_map_files(workdir, kind, message, tmp_path, capsys):
    path = _bad_maps(tmp_path, kind)
    assert infer.main(["--model", str(workdir), "--map", str(path)]) == 2
    assert one_error_line(capsys) == message.format(path=path)


@pytest.mark.parametrize("truths, message", [
    ([np.nan, 0.8], "{path}: row 0 has Omega_m = nan; expected a finite value in the prior box "
                    "Omega_m in [0.1, 0.5]"),
    ([[0.3, 0.8], [0.3, 1.2]], "{path}: row 1 has sigma_8 = 1.2; expected a finite value in "
                               "the prior box sigma_8 in [0.6, 1]"),
    ([0.3, 0.8, 1.0], "{path}: expected parameters of shape (2,) or (2, 2), got (1, 3)"),
])
def test_infer_refuses_bad_truths(workdir, truths, message, tmp_path, capsys):
    maps, path = tmp_path / "maps.npy", tmp_path / "params.npy"
    np.save(maps, MAPS)
    np.save(path, np.asarray(truths))
    assert infer.main(["--model", str(workdir), "--map", str(maps), "--params", str(path)]) == 2
    assert one_error_line(capsys) == message.format(path=path)


@pytest.mark.parametrize("file, edit, message", [
    ("model.json", "broken", r"model.json: not valid JSON \(.*\); expected the JSON record"),
    ("model.json", "-params_sha256", r"model.json: missing key 'params_sha256'; expected the keys"),
    ("model.json", "+colour", r"model.json: unknown key 'colour'; expected the keys"),
    ("model.json", "config.levels=true", r"model.json: config: levels is true; expected an "
                                         r"integer$"),
    ("model.json", "config.levels=5", r"model.json: image sides 16x16 are not divisible by "
                                      r"2\*\*levels = 32"),
    ("model.json", "preprocessing.center=\"high\"", r"preprocessing: center is \"high\"; "
                                                    r"expected a number"),
    ("run.json", "broken", r"run.json: not valid JSON"),
    ("run.json", "-model", r"run.json: missing key 'model'"),
    ("run.json", "+colour", r"run.json: unknown key 'colour'"),
    ("run.json", "n_sims=\"many\"", r"run.json: n_sims is \"many\"; expected an integer$"),
    ("run.json", "model.hidden=8.5", r"run.json: model: hidden is 8.5; expected an integer$"),
    ("run.json", "n_sims=0", r"run.json: --n-sims must be a positive integer, got 0$"),
])
def test_commands_refuse_broken_model_and_run_records(workdir, file, edit, message, tmp_path,
                                                      capsys):
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    (copy / file).write_text(_edit(json.loads((workdir / file).read_text()), edit))
    assert evaluate.main(["--model", str(copy), "--no-progress"]) == 2
    assert re.search(message, one_error_line(capsys))


@pytest.mark.parametrize("edit, message", [
    ("broken", r"ensemble.json: not valid JSON"),
    ("-members", r"ensemble.json \(members: .*\): missing key 'members'"),
    ("+colour", r"ensemble.json \(members: .*\): unknown key 'colour'"),
    ("members=3", r"ensemble.json \(members: .*\): members is 3; expected a non-empty list of "
                  r"strings$"),
    ("members=[]", r"members is \[\]; expected a non-empty list of strings$"),
])
def test_commands_refuse_a_broken_ensemble_record(workdir, edit, message, tmp_path, capsys):
    folder = tmp_path / "ensemble"
    jglow.save_ensemble(folder, [workdir])
    path = folder / "ensemble.json"
    path.write_text(_edit(json.loads(path.read_text()), edit))
    assert infer.main(["--model", str(folder), "--synthetic", "2"]) == 2
    assert re.search(message, one_error_line(capsys))


def _read_only(folder):
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@pytest.mark.parametrize("workdir_of, message", [
    (lambda tmp: tmp / "file.txt", "--workdir {w} is a file; expected a folder (new, or holding "
                                   "a run to resume)"),
    (lambda tmp: tmp / "file.txt" / "run", "--workdir {w}: cannot create the folder (Not a "
                                           "directory); expected a folder that can be written"),
    pytest.param(lambda tmp: _read_only(tmp / "locked"),
                 "--workdir {w}: the folder is not writable; expected a folder that can be "
                 "written", marks=pytest.mark.skipif(os.geteuid() == 0,
                                                     reason="root writes any folder")),
])
def test_train_refuses_a_workdir_it_cannot_use(workdir_of, message, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    workdir = workdir_of(tmp_path)
    assert train_main.main(TINY + ["--workdir", str(workdir)]) == 2
    assert one_error_line(capsys) == message.format(w=workdir)


def test_maps_mostly_outside_the_training_range_are_warned_of(workdir, tmp_path, capsys):
    preprocessing = jglow.load(workdir).preprocessing
    low, high = preprocessing.trained_range()
    inside = np.full((1, 16, 16), 10.0 ** (0.5 * (low + high)), np.float32)
    far = 10.0 ** (high + 1.0) * np.ones((7, 16, 16), np.float32)
    far[0, :6] = inside[0, :6]  # 6 rows of 16 inside: 62% outside
    lines = range_warnings(preprocessing, np.concatenate([inside, far]), "src")
    assert len(lines) == 6 and lines[-1] == ("warning: src: 2 more maps have most of their "
                                             "pixels outside that range")
    assert lines[0].startswith("warning: src: map 1 has 62% of its pixels outside the range the "
                               "model was trained on (log10 in [")
    path = tmp_path / "maps.npy"
    np.save(path, far[:1])
    status = infer.main(["--model", str(workdir), "--map", str(path), "--grid", "2", "--no-zoom",
                         "--figures", "0", "--out", str(tmp_path / "out")])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert status == 0 and len(warnings) == 1 and f"--map {path}: map 0 has 62%" in warnings[0]
