"""`pip install -e .` installs the project's commands, and each one answers `--help`.

The commands and their targets are the ones the README promises; a target that does not exist
(yet) fails here with its name, so a missing command cannot reach a user unnoticed.
"""
import os
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

from conftest import REPO

# Until the sampling, evaluation and demo commands land in the library, their rows fail here.
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
    """Catches: setup.py's console_scripts drifting from the documented commands, or an install
    older than setup.py (re-run `pip install -e .`, or `make venv`)."""
    installed = {ep.name: ep.value for ep in distribution("ramvid").entry_points
                 if ep.group == "console_scripts"}
    assert installed == COMMANDS, "re-run `pip install -e .` if setup.py changed"


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
