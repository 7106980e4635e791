"""README.md's commands are tested, so that an edit of the README cannot add one that fails.

The shell blocks of the README are read: code fenced as ```bash, ```sh, ```shell, ```console
(whose commands follow `$ `) or with no language; other blocks (```python, ```text, ...) are not.
A line holds commands joined by `&&` (a trailing backslash continues it, `#` starts a comment,
leading `NAME=value` words set the environment). Each command must be one of:

* `python -m train.X ...` (a checkout's entry point) or `jglow-X ...` (a console script of
  pyproject.toml): the command's own parser accepts its flags exactly as written and they give a
  valid configuration; the files it reads (`--data`, `--map`, `--params`) exist in the
  repository or are written by an earlier command (`train.make_data --out`), and `--model`
  names the workdir of an earlier command or a folder of the repository. These commands then all
  run, in README order, in a temporary folder, with tiny settings appended to their flags
  (`test_the_readme_workflow_runs_on_tiny_settings`).
* `python PATH.py ...`: a script of the repository whose argparse parser accepts the flags
  (their paths are not checked: the benchmarks' `--reference` is a checkout outside it).
* `pip install ...`: an install of the checkout, `.` or `.[EXTRAS]` with extras of pyproject.toml.
* `python -m pytest ...`, `ruff ...`: exactly the test (lint) command of `.ci/run`.

Any other command fails the test, naming its README line. The shell blocks of the user guide
(docs/guide.md) are checked the same way, after the README's. The README's Python snippet and the
guide's run as written.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import pathlib
import re
import shlex
import sys
import tomllib
from typing import NamedTuple
from unittest import mock

import jax
import pytest

import jglow
from jglow.data import fit_preprocessing, synthetic_maps
from jglow.data.recipe import SIMULATORS
from jglow.saving import TrainedModel
from jglow.train import evaluate, infer, make_data
from jglow.train.config import build_parser, config_from_args
from jglow.train.ensemble import build_ensemble_parser

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
PYTHON = ("python", "python3")
OPERATOR = re.compile(r"^[;&|<>()]+$")


class Command(NamedTuple):
    """One command of the README: its line, environment assignments and words."""

    line: int
    env: dict
    words: list

    def __str__(self) -> str:
        return f"README.md line {self.line}: `{shlex.join(self.words)}`"


def shell_lines(text: str) -> list:
    """`(line number, text)` of each shell line of the shell blocks of the Markdown `text`
    (module docstring), continued lines joined and numbered by their first line."""
    lines, fence, language, pending = [], None, None, None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if fence is None:
            opening = re.match(r"(`{3,}|~{3,})\s*([^\s`]*)", stripped)
            if opening:
                fence, language = opening[1], opening[2].lower()
            continue
        if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
            fence = None
            continue
        if language not in SHELL_BLOCKS:
            continue
        if pending is not None:
            start, line = pending[0], f"{pending[1]} {stripped}"
        elif language == "console" and not stripped.startswith("$ "):
            continue  # the output of a console block
        else:
            start, line = number, stripped.removeprefix("$ ")
        pending = (start, line[:-1]) if line.endswith("\\") else None
        if pending is None and line:
            lines.append((start, line))
    return lines


def commands_of(text: str) -> list:
    """The `Command`s of the shell blocks of the Markdown `text`; a shell operator other than
    `&&` (`|`, `;`, `>`, ...) is kept as a word, for `problem` to refuse."""
    commands = []
    for number, line in shell_lines(text):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words, part = list(lexer), []
        for word in words + ["&&"]:
            if word != "&&":
                part.append(word)
                continue
            env = {}
            while part and re.fullmatch(r"[A-Za-z_]\w*=.*", part[0]):
                name, value = part.pop(0).split("=", 1)
                env[name] = value
            if part:
                commands.append(Command(number, env, part))
            part = []
    return commands


# --- what each kind of command must be --------------------------------------------------------

def ci_command(start: str) -> list:
    """The words of the command of `.ci/run` that starts with `start` (`python -m pytest`, `ruff`),
    up to the end of its line or the next `&&`."""
    for line in (REPO / ".ci" / "run").read_text().splitlines():
        if not line.startswith("#") and start in line:
            return shlex.split(line[line.index(start):].split("&&")[0])
    raise AssertionError(f".ci/run runs no `{start}`")


def pip_problem(words: list) -> str | None:
    """Why `pip ...` is not an install of the checkout with extras of pyproject.toml, if not."""
    extras = set(PYPROJECT["project"].get("optional-dependencies", {}))
    targets = [w for w in words[2:] if w not in ("-e", "--editable")]
    install = re.fullmatch(r"\.(\[([\w,-]+)\])?", targets[0]) if len(targets) == 1 else None
    if words[1:2] != ["install"] or install is None:
        return "expected `pip install [-e] .` or `.[EXTRAS]`"
    unknown = set(install[2].split(",")) - extras if install[2] else set()
    if unknown:
        return f"extras {sorted(unknown)} are not in pyproject.toml's {sorted(extras)}"
    return None


def command_main(words: list):
    """`(main, name of its module)` of a `python -m MODULE` or `jglow-X` command, `main` being the
    target of one of pyproject.toml's console scripts; None for another command."""
    targets = {}
    for target in PYPROJECT["project"]["scripts"].values():
        module, name = target.split(":")
        targets[module] = getattr(importlib.import_module(module), name)
    if words[0] in PYPROJECT["project"]["scripts"]:
        module = PYPROJECT["project"]["scripts"][words[0]].split(":")[0]
        return targets[module], module
    if words[0] in PYTHON and words[1:2] == ["-m"] and len(words) > 2:
        path = REPO / (words[2].replace(".", "/") + ".py")
        if path.is_file():
            spec = importlib.util.spec_from_file_location(f"readme_{words[2]}", path)
            entry = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(entry)
            main = getattr(entry, "main", None)
            if main in targets.values():
                return main, main.__module__
    return None


def parsed_flags(module: str, argv: list) -> dict:
    """The flags `argv` as the command of `module` reads them, by name, its configuration
    checked (train.main and train.ensemble: the run's `TrainConfig`; train.evaluate: its
    options); raises `UsageError` naming a refused flag."""
    if module in ("jglow.train.main", "jglow.train.ensemble"):
        parser = build_parser() if module == "jglow.train.main" else build_ensemble_parser()
        args = parser.parse_args(argv)
        config_from_args(args)
        return vars(args)
    if module == "jglow.train.evaluate":
        options = evaluate.parse_args(argv)
        evaluate.check_options(options)
        return options._asdict()
    if module == "jglow.train.make_data":
        return vars(make_data.build_parser().parse_args(argv))
    return vars(infer.parse_args(argv))


def flags_of(words: list) -> list:
    """The flags of a `jglow-X ...` or `python -m MODULE ...` command."""
    return words[3:] if words[0] in PYTHON else words[1:]


def in_repository(path: str) -> pathlib.Path:
    """`path` (of a README command run from the repository's root) as an absolute path."""
    return pathlib.Path(path) if os.path.isabs(path) else REPO / path


def command_problem(words: list, module: str, workdirs: set) -> str | None:
    """Why the command of `module` with the flags of `words` would fail before running, if so;
    `workdirs`: those the README's earlier commands write (workdirs and data folders), to which
    it adds its own."""
    try:
        flags = parsed_flags(module, flags_of(words))
    except ValueError as error:
        return f"refused: {error}"
    for name in ("data", "map", "params"):
        value = flags.get(name)
        if value not in (None, *SIMULATORS) and not in_repository(value).exists() and (
                os.path.normpath(value) not in workdirs):
            return (f"--{name} {value}: no such file or folder in the repository, nor written "
                    f"by an earlier command of the README")
    if module == "jglow.train.make_data":
        workdirs.add(os.path.normpath(flags["out"]))
    model = flags.get("model")
    if model is not None and os.path.normpath(model) not in workdirs and not (
            in_repository(model).is_dir()):
        return (f"--model {model}: neither the workdir of an earlier command of the README "
                f"({sorted(workdirs)}) nor a folder of the repository")
    if "workdir" in flags:
        workdirs.add(os.path.normpath(flags["workdir"]))
    return None


class FlagsParsed(Exception):
    """Raised by the argparse parser of a script once it has accepted its flags."""


def script_problem(words: list) -> str | None:
    """Why `python PATH.py flags...` does not name a script of the repository whose `main()`
    parser (argparse) accepts its flags, if so; the script stops once they are parsed."""
    path = REPO / words[1]
    if not path.is_file():
        return f"{words[1]}: no such script in the repository"
    parse_args = argparse.ArgumentParser.parse_args

    def stop_when_parsed(parser, args=None, namespace=None):
        raise FlagsParsed(parse_args(parser, args, namespace))

    errors = io.StringIO()
    spec = importlib.util.spec_from_file_location(f"readme_{path.stem}", path)
    script = importlib.util.module_from_spec(spec)
    with mock.patch.object(sys, "path", [str(path.parent)] + sys.path), \
            mock.patch.object(sys, "argv", [str(path)] + words[2:]), \
            mock.patch.object(argparse.ArgumentParser, "parse_args", stop_when_parsed), \
            contextlib.redirect_stderr(errors):
        spec.loader.exec_module(script)
        try:
            script.main()
        except FlagsParsed:
            return None
        except SystemExit:
            return f"refused by its parser: {errors.getvalue().strip().splitlines()[-1]}"
    return f"{words[1]}: main() ran without parsing its flags with argparse"


def problem(command: Command, workdirs: set) -> str | None:
    """Why the README `command` is wrong or cannot be classified (module docstring), if so."""
    words = command.words
    operators = [w for w in words if OPERATOR.match(w)]
    if operators:
        return f"shell operator {operators[0]!r}: only commands joined by && are checked"
    if words[0] == "pip":
        return pip_problem(words)
    if words[0] == "ruff" or words[0] in PYTHON and words[1:3] == ["-m", "pytest"]:
        expected = ci_command("ruff" if words[0] == "ruff" else "python -m pytest")
        return None if words == expected else f"expected .ci/run's `{shlex.join(expected)}`"
    entry = command_main(words)
    if entry is not None:
        return command_problem(words, entry[1], workdirs)
    if words[0] in PYTHON and len(words) > 1 and words[1].endswith(".py"):
        return script_problem(words)
    return ("not a command this test can check (python -m train.X, jglow-X, python PATH.py, "
            "pip install, python -m pytest, ruff); extend tests/test_readme.py to check it")


def problems(text: str) -> list:
    """`"README.md line N: `command`: why"` for each wrong or unclassified command of `text`."""
    workdirs, found = set(), []
    for command in commands_of(text):
        why = problem(command, workdirs)
        if why is not None:
            found.append(f"{command}: {why}")
    return found


# --- the tests -----------------------------------------------------------------------------------

def test_commands_are_read_from_the_shell_blocks_only():
    text = "\n".join([
        "Prose with `python -m train.main --no-such-flag` inline.",  # 1
        "```python", "python -m train.main --python-block", "```",  # 2-4
        "```bash",  # 5
        "pip install -e '.[dev]' && python -m pytest -q  # the tests",  # 6
        "$ A=1 B=2 python -m train.infer \\",  # 7
        "    --model runs/quick --synthetic 4",  # 8
        "```",  # 9
        "  ```console",  # 10
        "  $ jglow-train --preset quick",  # 11
        "  finished: step 375",  # 12
        "  ```",  # 13
        "```text", "jglow-train --in-a-text-block", "```",  # 14-16
        "```", "python benchmarks/bench_model.py --rounds 5   # log_prob", "```"])  # 17-19
    assert commands_of(text) == [
        Command(6, {}, ["pip", "install", "-e", ".[dev]"]),
        Command(6, {}, ["python", "-m", "pytest", "-q"]),
        Command(7, {"A": "1", "B": "2"}, ["python", "-m", "train.infer", "--model", "runs/quick",
                                          "--synthetic", "4"]),
        Command(11, {}, ["jglow-train", "--preset", "quick"]),
        Command(18, {}, ["python", "benchmarks/bench_model.py", "--rounds", "5"])]


def test_wrong_and_unclassified_commands_are_reported_with_their_lines():
    text = "\n".join([
        "```bash",  # 1
        "make docs",  # 2
        "python -m train.main --workdir runs/a --preset quick",  # 3
        "jglow-train --workdir runs/b --lr -1",  # 4
        "jglow-ensemble --members 2 --workdir runs/e --no-such-flag",  # 5
        "python -m train.evaluate --model runs/a && jglow-infer --model runs/c --synthetic 2",  # 6
        "python -m train.infer --model runs/a --map maps.npy",  # 7
        "pip install numpy && pip install -e '.[docs]'",  # 8
        "python -m pytest -q | tail -1",  # 9
        "python -m pytest -q && ruff check jglow",  # 10
        "python benchmarks/bench_model.py --no-such-flag",  # 11
        "python benchmarks/no_such_bench.py",  # 12
        "```"])
    prog = build_parser().prog
    assert problems(text) == [
        "README.md line 2: `make docs`: not a command this test can check (python -m train.X, "
        "jglow-X, python PATH.py, pip install, python -m pytest, ruff); extend "
        "tests/test_readme.py to check it",
        "README.md line 4: `jglow-train --workdir runs/b --lr -1`: refused: learning_rate (--lr) "
        "must be > 0, got -1.0",
        "README.md line 5: `jglow-ensemble --members 2 --workdir runs/e --no-such-flag`: refused: "
        f"unrecognized arguments: --no-such-flag (see {prog} --help)",
        "README.md line 6: `jglow-infer --model runs/c --synthetic 2`: --model runs/c: neither "
        "the workdir of an earlier command of the README (['runs/a']) nor a folder of the "
        "repository",
        "README.md line 7: `python -m train.infer --model runs/a --map maps.npy`: --map maps.npy: "
        "no such file or folder in the repository, nor written by an earlier command of the "
        "README",
        "README.md line 8: `pip install numpy`: expected `pip install [-e] .` or `.[EXTRAS]`",
        "README.md line 8: `pip install -e '.[docs]'`: extras ['docs'] are not in "
        "pyproject.toml's ['dev']",
        "README.md line 9: `python -m pytest -q '|' tail -1`: shell operator '|': only commands "
        "joined by && are checked",
        f"README.md line 10: `python -m pytest -q`: expected .ci/run's "
        f"`{shlex.join(ci_command('python -m pytest'))}`",
        f"README.md line 10: `ruff check jglow`: expected .ci/run's "
        f"`{shlex.join(ci_command('ruff'))}`",
        "README.md line 11: `python benchmarks/bench_model.py --no-such-flag`: refused by its "
        "parser: bench_model.py: error: unrecognized arguments: --no-such-flag",
        "README.md line 12: `python benchmarks/no_such_bench.py`: benchmarks/no_such_bench.py: no "
        "such script in the repository"]


def test_every_readme_command_is_classified_and_its_flags_parse():
    commands = commands_of((REPO / "README.md").read_text())
    assert any(command_main(c.words) for c in commands), "the README shows no jglow command"
    assert problems((REPO / "README.md").read_text()) == []


def test_every_command_of_the_guide_is_classified_and_its_flags_parse():
    """The guide's commands may use the workdirs of the README's."""
    readme = (REPO / "README.md").read_text()
    guide = (REPO / "docs" / "guide.md").read_text()
    found = problems(readme + "\n" + guide)
    offset = len(readme.splitlines()) + 1
    assert found == [], [re.sub(r"README.md line (\d+)", lambda m: f"docs/guide.md line "
                                f"{int(m[1]) - offset}", problem) for problem in found]


TINY_TRAINING = ["--map-size", "16", "--levels", "1", "--steps", "2", "--hidden", "8",
                 "--n-sims", "10", "--batch-size", "16", "--epochs", "1", "--figure-every", "0",
                 "--accelerator", "cpu", "--no-progress"]
"""One level of 2 steps on 10 synthetic simulations (120 training maps: 7 steps of 16), one
epoch, no figures. The compilation of the training step is most of the run: 2 levels took 47 s
of CPU against 34 s for one."""
TINY = {"jglow.train.main": TINY_TRAINING,
        "jglow.train.ensemble": TINY_TRAINING + ["--members", "2"],
        "jglow.train.evaluate": ["--n-maps", "2", "--samples-per-sim", "2", "--grid", "3",
                                 "--figures", "0", "--batch", "16", "--no-progress"],
        "jglow.train.infer": ["--grid", "3", "--figures", "0"],
        "jglow.train.make_data": ["--sims", "10", "--size", "16"]}
"""The settings appended to each command's flags in the end-to-end run."""
OUTPUT_FLAGS = ("--workdir", "--out", "--model")
INPUT_FLAGS = ("--data", "--map", "--params")


def in_temporary_folder(argv: list, root: pathlib.Path) -> list:
    """`argv` with absolute output paths moved under `root` (relative ones are written in the
    working folder, `root`) and the repository's input files given by absolute paths (inputs
    that an earlier command wrote under `root` are left relative to it)."""
    moved = list(argv)
    for i, word in enumerate(argv[:-1]):
        value = argv[i + 1]
        if word in OUTPUT_FLAGS and os.path.isabs(value):
            moved[i + 1] = str(root / pathlib.Path(value).relative_to("/"))
        elif word in INPUT_FLAGS and value not in SIMULATORS and not (root / value).exists():
            moved[i + 1] = str(in_repository(value))
    return moved


def expected_output(module: str, flags: dict) -> pathlib.Path:
    """The file a finished command of `module` leaves, given its parsed flags."""
    if module == "jglow.train.main":
        return pathlib.Path(flags["workdir"]) / "model.json"
    if module == "jglow.train.ensemble":
        return pathlib.Path(flags["workdir"]) / "ensemble.json"
    if module == "jglow.train.evaluate":
        return pathlib.Path(flags["out"] or pathlib.Path(flags["model"]) / "evaluation",
                            "report.json")
    if module == "jglow.train.make_data":
        return make_data.output_paths(flags["out"], flags["kind"])[0]
    return pathlib.Path(flags["out"] or pathlib.Path(flags["model"]) / "inference", "summary.json")


def test_the_readme_workflow_runs_on_tiny_settings(tmp_path, monkeypatch):
    """Every train.main / ensemble / evaluate / infer command of the README (each distinct one
    once), in README order, in `tmp_path`, with `TINY` settings appended: exit status 0 and its
    output written."""
    workflow, seen = [], set()
    for command in commands_of((REPO / "README.md").read_text()):
        entry = command_main(command.words)
        if entry is not None and shlex.join(command.words) not in seen:
            seen.add(shlex.join(command.words))
            workflow.append((command, *entry))
    assert workflow, "the README shows no jglow command"
    monkeypatch.chdir(tmp_path)
    for command, main, module in workflow:
        for name, value in command.env.items():
            monkeypatch.setenv(name, value)
        argv = in_temporary_folder(flags_of(command.words), tmp_path) + TINY[module]
        if module == "jglow.train.infer" and "--synthetic" in argv:
            argv += ["--synthetic", "2"]
        assert main(argv) == 0, f"{command} (run with {shlex.join(argv)})"
        assert expected_output(module, parsed_flags(module, argv)).is_file(), str(command)


@pytest.mark.parametrize("script", sorted(PYPROJECT["project"]["scripts"]))
def test_every_console_script_is_a_command_the_readme_test_can_run(script):
    module = PYPROJECT["project"]["scripts"][script].split(":")[0]
    assert command_main([script])[1] == module and module in TINY


def python_blocks(text: str) -> list:
    """The code of each ```python block of the Markdown `text`, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_python_snippet_runs_as_written_on_a_trained_model(tmp_path, monkeypatch,
                                                                        capsys):
    maps = synthetic_maps(4, 15, size=16, seed=0)
    preprocessing = fit_preprocessing(maps.maps)
    x = preprocessing.forward_maps(maps.maps)
    z = preprocessing.forward_params(maps.params)
    config = jglow.GlowConfig(image_shape=(16, 16, 1), levels=2, steps=2, hidden=8)
    params = jglow.init(jax.random.key(0), config, x, z)
    jglow.save(tmp_path / "runs" / "quick", TrainedModel(config, params, preprocessing))
    monkeypatch.chdir(tmp_path)
    (snippet,) = python_blocks((REPO / "README.md").read_text())
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all(line.startswith("truth [") for line in printed)


def test_the_guide_python_block_runs_as_written(capsys):
    (block,) = python_blocks((REPO / "docs" / "guide.md").read_text())
    exec(compile(block, "docs/guide.md", "exec"), {})
