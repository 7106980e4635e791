"""The convention of every command (`jglow.train.cli`): bad input gives exit status 2 and one
`error:` line naming the value, without a traceback; a stopped run 1; other exceptions are bugs
and propagate; usage lines name the program as it was started."""

import importlib
import importlib.machinery
import os
import pathlib
import subprocess
import sys
import tomllib
import types

import jax
import numpy as np
import pytest
from helpers import tiny_config

import jglow
from jglow.data import fit_preprocessing, synthetic_maps
from jglow.saving import TrainedModel
from jglow.train import cli, ensemble, evaluate, infer, make_data
from jglow.train import main as train_main
from jglow.train.main import TrainingStopped

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
REQUIRED = {"jglow-train": [], "jglow-ensemble": ["--members", "1"],
            "jglow-evaluate": ["--model", "m"], "jglow-infer": ["--model", "m", "--synthetic", "1"],
            "jglow-make-data": ["--out", "d"]}
"""Each console script's required flags."""
TINY = ["--map-size", "16", "--levels", "2", "--steps", "2", "--hidden", "8", "--batch-size",
        "16", "--no-progress"]


def one_error_line(capsys) -> str:
    """The single line the command wrote to stderr (after `error: `); fails on anything else."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0][len("error: "):]


def camels_file(folder, n_sims=4, n_maps=None) -> pathlib.Path:
    """A CAMELS Multifield maps file of `n_maps` (default `15 × n_sims`) positive 32×32 maps, its
    parameter table of `n_sims` simulations beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    maps = synthetic_maps(n_sims, 15, size=32, seed=3)
    path = folder / "Maps_HI_IllustrisTNG_LH_z=0.00.npy"
    np.save(path, maps.maps[:n_maps])
    np.savetxt(folder / "params_LH_IllustrisTNG.txt",
               np.column_stack([maps.params[::15], np.ones((n_sims, 4))]))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved tiny model (16×16 maps, its initialisation) for `train.infer`."""
    config = tiny_config()
    train = synthetic_maps(2, 2, size=16, seed=0)
    preprocessing = fit_preprocessing(train.maps)
    params = jglow.init(jax.random.key(0), config, preprocessing.forward_maps(train.maps),
                        preprocessing.forward_params(train.params))
    path = tmp_path_factory.mktemp("model")
    jglow.save(path, TrainedModel(config, params, preprocessing))
    return path


# --- train.main --------------------------------------------------------------------------------

def test_a_nan_pixel_in_camels_maps_is_bad_input(tmp_path, capsys):
    path = camels_file(tmp_path / "camels")
    maps = np.load(path)
    maps[20, 3, 5] = np.nan
    np.save(path, maps)
    status = train_main.main(TINY + ["--data", str(path), "--workdir", str(tmp_path / "w")])
    assert status == 2
    assert one_error_line(capsys) == (f"{path}: map 20 has pixel value nan at (row 3, column 5); "
                                      f"expected strictly positive, finite values")
    assert not (tmp_path / "w" / "run.json").exists()


def test_a_map_count_that_does_not_match_the_parameter_file_is_bad_input(tmp_path, capsys):
    path = camels_file(tmp_path / "camels", n_sims=4, n_maps=59)
    assert train_main.main(TINY + ["--data", str(path), "--workdir", str(tmp_path / "w")]) == 2
    assert one_error_line(capsys) == (
        f"{path} holds 59 maps but {path.parent / 'params_LH_IllustrisTNG.txt'} has 4 "
        f"simulations; expected maps_per_sim × simulations = 15 × 4 = 60 maps")


def test_a_malformed_parameter_table_is_bad_input(tmp_path, capsys):
    path = camels_file(tmp_path / "camels")
    (path.parent / "params_LH_IllustrisTNG.txt").write_text("0.3 0.8 1 1 1 1\n0.3 abc 1 1 1 1\n")
    assert train_main.main(TINY + ["--data", str(path), "--workdir", str(tmp_path / "w")]) == 2
    message = one_error_line(capsys)
    assert message.startswith(f"{path.parent / 'params_LH_IllustrisTNG.txt'}: expected a "
                              f"whitespace table of numbers") and "'abc'" in message


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "learning_rate (--lr) must be > 0, got -1.0"),
    (["--lr", "1e-6"], "need 0 < min_learning_rate <= learning_rate (--lr), got 1e-05 and 1e-06"),
    (["--patience", "0"], "early_stop_patience (--patience) must be a positive integer, got 0"),
    (["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    (["--ema-decay", "1"], "--ema-decay must be in [0, 1), got 1.0"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast' (see {prog} --help)"),
    (["--levels"], "argument --levels: expected one argument (see {prog} --help)"),
])
def test_bad_training_flags_name_the_flag_and_the_value(flags, message, tmp_path, capsys):
    assert train_main.main(TINY + flags + ["--workdir", str(tmp_path / "w")]) == 2
    assert one_error_line(capsys) == message.format(prog=cli.program_name())
    assert not (tmp_path / "w").exists()


def test_a_stopped_run_is_status_1_and_a_bug_keeps_its_traceback(capsys):
    def stops(argv):
        raise TrainingStopped("3 steps in a row had a non-finite loss")

    def has_a_bug(argv):
        raise ValueError("a bug")

    assert cli.command(stops)([]) == 1
    assert capsys.readouterr().err == "stopped: 3 steps in a row had a non-finite loss\n"
    with pytest.raises(ValueError, match="a bug"):
        cli.command(has_a_bug)([])


# --- train.infer -------------------------------------------------------------------------------

def test_infer_refuses_a_missing_model_directory(tmp_path, capsys):
    missing = tmp_path / "no_model"
    assert infer.main(["--model", str(missing), "--synthetic", "2"]) == 2
    assert one_error_line(capsys) == (
        f"{missing / 'model.json'} not found: {missing} is not a jglow model directory (expected "
        f"model.json and params.npz, as written by jglow.save or the trainer)")


@pytest.mark.parametrize("shape, message", [
    ((3, 8, 8), "maps must have shape (N, 16, 16) for this model, got (3, 8, 8)"),
    ((2, 2, 16, 16), "{path}: expected maps of shape (H, W) or (N, H, W), got (2, 2, 16, 16)"),
])
def test_infer_refuses_map_files_of_the_wrong_shape(model_dir, shape, message, tmp_path, capsys):
    path = tmp_path / "maps.npy"
    np.save(path, np.ones(shape, np.float32))
    assert infer.main(["--model", str(model_dir), "--map", str(path)]) == 2
    assert one_error_line(capsys) == message.format(path=path)


@pytest.mark.parametrize("flags, message", [
    (["--synthetic", "0"], "--synthetic 0: expected an integer >= 1"),
    (["--synthetic", "2", "--grid", "2"], "--grid 2: expected an integer >= 3"),
    (["--synthetic", "2", "--grid", "1", "--no-zoom"], "--grid 1: expected an integer >= 2"),
    (["--synthetic", "2", "--grid", "5", "5", "5"],
     "--grid 5 5 5: expected one count, or one per parameter (2) (see {prog} --help)"),
    (["--synthetic", "2", "--map-batch", "0"], "--map-batch 0: expected an integer >= 1"),
    (["--synthetic", "2", "--params", "p.npy"],
     "--params goes with --map; synthetic maps come with their parameters (see {prog} --help)"),
])
def test_infer_refuses_bad_flags_before_loading_the_model(flags, message, tmp_path, capsys):
    assert infer.main(["--model", str(tmp_path / "not_read")] + flags) == 2
    assert one_error_line(capsys) == message.format(prog=cli.program_name())


# --- every command -----------------------------------------------------------------------------

def test_the_console_scripts_are_those_of_the_five_commands():
    assert SCRIPTS == {"jglow-train": "jglow.train.main:main",
                       "jglow-ensemble": "jglow.train.ensemble:main",
                       "jglow-evaluate": "jglow.train.evaluate:main",
                       "jglow-infer": "jglow.train.infer:main",
                       "jglow-make-data": "jglow.train.make_data:main"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_target_returns_2_on_an_unknown_flag(script, capsys):
    module, name = SCRIPTS[script].split(":")
    main = getattr(importlib.import_module(module), name)
    assert main(REQUIRED[script] + ["--no-such-flag"]) == 2
    assert one_error_line(capsys) == (f"unrecognized arguments: --no-such-flag (see "
                                      f"{cli.program_name()} --help)")


PARSERS = {"jglow-train": lambda argv: train_main.build_parser().parse_args(argv),
           "jglow-ensemble": lambda argv: ensemble.build_ensemble_parser().parse_args(argv),
           "jglow-evaluate": evaluate.parse_args, "jglow-infer": infer.parse_args,
           "jglow-make-data": lambda argv: make_data.build_parser().parse_args(argv)}
"""Each command's parsing of its flags (parsers built at the call, when the name is taken)."""


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_usage_names_the_installed_script_or_the_checkout_module(script, monkeypatch, capsys):
    # as the installed script: `__main__` is the file pip wrote, run as a script
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{script}"])
    with pytest.raises(SystemExit) as exit:
        PARSERS[script](["--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {script} ")
    # from the checkout, `python -m train.X`: `__main__` has the module's spec
    checkout = types.ModuleType("__main__")
    module = "train." + SCRIPTS[script].split(":")[0].rsplit(".", 1)[1]
    checkout.__spec__ = importlib.machinery.ModuleSpec(module, None)
    monkeypatch.setitem(sys.modules, "__main__", checkout)
    with pytest.raises(SystemExit):
        PARSERS[script](["--help"])
    assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")


def _run(argv, cwd):
    """A fresh Python process with this checkout's `jglow` first on the path."""
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=120)


def test_an_installed_style_script_and_the_checkout_module_in_fresh_processes(tmp_path):
    """The script pip writes for `jglow-train` (its entry point called as `sys.exit(main())`),
    and `python -m train.main` from the checkout: usage names each; bad input exits 2 with one
    `error:` line and no traceback."""
    module, name = SCRIPTS["jglow-train"].split(":")
    script = tmp_path / "bin" / "jglow-train"
    script.parent.mkdir()
    script.write_text(f"import sys\nfrom {module} import {name}\nsys.exit({name}())\n")
    bad = _run([str(script), "--lr", "-1", "--workdir", str(tmp_path / "w")], tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == "error: learning_rate (--lr) must be > 0, got -1.0\n"
    checkout = _run(["-m", "train.main", "--help"], REPO)
    assert checkout.returncode == 0 and checkout.stdout.startswith("usage: python -m train.main ")
