"""`pip install -e .` installs the project's commands, and each one answers `--help`.

The commands and their targets are the ones the README promises; a target that does not exist
(yet) fails here with its name, so a missing command cannot reach a user unnoticed.
"""
import importlib
import os
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

from conftest import REPO

COMMANDS = {
    "ramvid-train": "ramvid.train.command:main",
    "ramvid-sample": "ramvid.sample.command:sample_main",
    "ramvid-sample-long": "ramvid.sample.command:sample_long_main",
    "ramvid-eval": "ramvid.metrics.command:eval_main",
    "ramvid-demo": "ramvid.demo.command:main",
}
MODULES = ("ramvid.train", "ramvid.sample")  # `python -m MODULE --help`
BIN = Path(sys.executable).parent


def test_installed_entry_points_match():
    """Catches: pyproject.toml's [project.scripts] drifting from the documented commands, or an install
    older than pyproject.toml (re-run `pip install -e .`, or `make venv`)."""
    installed = {ep.name: ep.value for ep in distribution("ramvid").entry_points
                 if ep.group == "console_scripts"}
    assert installed == COMMANDS, "re-run `pip install -e .` if pyproject.toml changed"


@pytest.fixture(scope="module")
def help_runs():
    """Every command's `--help`, started at once (each pays the torch import) and collected."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = {name: [str(BIN / name), "--help"] for name in COMMANDS}
    commands.update({f"-m {m}": [sys.executable, "-m", m, "--help"] for m in MODULES})
    running = {name: subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for name, argv in commands.items() if Path(argv[0]).exists()}
    return {name: (p, *p.communicate(timeout=120)) for name, p in running.items()}


@pytest.mark.parametrize("name", [*COMMANDS, *(f"-m {m}" for m in MODULES)])
def test_command_help(help_runs, name):
    """Catches: a declared command whose target module or function is missing or crashes."""
    assert name in help_runs, f"{BIN / name} is not installed: run `pip install -e .`"
    process, out, err = help_runs[name]
    assert process.returncode == 0, f"{name} --help failed:\n{err[-2000:]}"
    assert out.startswith("usage:"), out[:200]


def _installed_run(name, argv, monkeypatch):
    """The exit code of command `name` as its installed wrapper runs it: `sys.exit(main())`,
    where None means 0, an int is the code and anything else prints itself and means 1."""
    module, function = COMMANDS[name].split(":")
    monkeypatch.setattr(sys, "argv", [name, *map(str, argv)])
    with pytest.raises(SystemExit) as stop:
        sys.exit(getattr(importlib.import_module(module), function)())
    return stop.value.code or 0


def test_installed_commands_exit_0_after_a_successful_run(tmp_path, monkeypatch, one_thread):
    """ramvid-sample, ramvid-sample-long and ramvid-eval end a run that succeeded with exit
    code 0, as their scripts do. Seen red with sample_main returning the written paths (the
    wrapper printed the dict and exited 1)."""
    from sample_fixtures import make_checkpoint, make_videos

    monkeypatch.delenv("OPENAI_LOGDIR", raising=False)
    ckpt, data = make_checkpoint(tmp_path / "run"), make_videos(tmp_path / "data")
    common = ["--model_path", ckpt, "--timestep_respacing", 2, "--save_video", "none",
              "--progress", "False"]
    assert _installed_run("ramvid-sample", [
        *common, "--data_dir", data, "--cond_frames", "0,1,", "--save_gt", "True",
        "--num_samples", 2, "--out_dir", tmp_path / "predict"], monkeypatch) == 0
    assert _installed_run("ramvid-sample-long", [
        *common, "--cond_generation", "False", "--max_cond_frames", 2, "--total_length", 8,
        "--num_samples", 1, "--out_dir", tmp_path / "long"], monkeypatch) == 0
    assert _installed_run("ramvid-eval", ["--samples", tmp_path / "predict", "--fvd", "False"],
                          monkeypatch) == 0
    assert (tmp_path / "predict" / "eval.json").exists()
