"""Every command in README.md and docs/*.md that runs a project program is run here.

The rule (a doc writer's checklist):
- Every line of a shell code block (```bash, ```sh, ```console or an unlabelled block) that runs
  `python scripts/X.py`, `python datasets/X.py`, `python benchmarks/X.py`, `python -m ramvid...`
  or an installed `ramvid-*` command is a command a reader will paste, so it must work.
  A `$ ` prompt and a launcher (`mpirun -n N`, `srun ...`) in front are allowed; after `mpirun`
  or `srun` comes `python` (mpirun cannot start a .py file by itself); `torchrun` takes the
  script directly. `VAR=value` lines and prefixes apply to the rest of the page, and
  `$OPENAI_LOGDIR` is `logs` unless the page sets it.
- A line with a placeholder (`...`, `<name>`, `[optional flags]`, `XXXXXX`) is a synopsis: it is
  not run. Output and transcripts without a program call are not run either.
- The command runs with `--dry_run` where the program has that flag (it checks every flag and
  that the inputs exist, then prints the configuration), otherwise with `--help`, inside the
  test process (as `python` would run it, without a torch import per command), in an
  empty temporary folder in which the inputs it names were made first: every `--*_dir` folder
  (empty), a tiny checkpoint with its args.json at `--model_path`, small npz files for
  `--samples`/`--gt`. Absolute `/tmp/...` paths are moved into that folder.
So a documented path needs no real data, but a flag that does not exist, a value the program
refuses, a wrong script name or a missing `python` fails here, with the doc file and line.
"""
import re
import runpy
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")
PROGRAM = re.compile(r"^(?:\.venv/bin/)?python3?$")
SCRIPT = re.compile(r"^(scripts|datasets|benchmarks)/\w+\.py$")
PLACEHOLDER = re.compile(r"\.\.\.|<[\w -]+>|\[[^\]]*\]|XXXX|@@\w+@@")
LAUNCHERS = {"mpirun": ("-n", "-np", "--hostfile", "-H"), "srun": ("-n", "-N", "--ntasks"),
             "torchrun": ("--nproc_per_node", "--nnodes", "--standalone")}
HAS_DRY_RUN = {"scripts/video_train.py", "scripts/video_sample.py", "scripts/video_sample_long.py",
               "scripts/video_eval.py", "ramvid-train", "ramvid-sample", "ramvid-sample-long",
               "ramvid-eval", "ramvid.train", "ramvid.sample"}
DEFAULT_ENV = {"OPENAI_LOGDIR": "logs"}


@dataclass
class DocCommand:
    where: str  # README.md:57
    argv: list = field(default_factory=list)  # without the launcher, with --dry_run/--help
    env: dict = field(default_factory=dict)
    problem: str = ""  # a mistake found without running it


def _shell_blocks(path):
    """(first line number, text) of every shell code block, line continuations joined."""
    lines = path.read_text().splitlines()
    block, start, lang = None, 0, ""
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and block is None:
            block, start, lang = [], number + 1, fence.group(1)
        elif fence:
            if lang in SHELL_BLOCKS:
                yield start, block
            block = None
        elif block is not None:
            block.append(line)


def _logical_lines(start, block):
    """(line number, text) with `\\` continuations joined and `#` comments removed."""
    pending, first = "", start
    for offset, line in enumerate(block):
        if not pending:
            first = start + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = pending + line
        pending = ""
        yield first, re.sub(r"(^|\s)#.*$", "", text).strip()


def _expand(text, variables):
    """`text` with $NAME replaced; KeyError names a variable the page never sets."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], text)


def _strip_launcher(words, where):
    """The words after `mpirun -n 2` etc., and a problem if the launcher misses `python`."""
    launcher = Path(words[0]).name
    if launcher not in LAUNCHERS:
        return words, ""
    rest = words[1:]
    while rest and rest[0].startswith("-"):
        takes_value = rest[0] in LAUNCHERS[launcher] and "=" not in rest[0] \
            and rest[0] != "--standalone"
        rest = rest[2:] if takes_value else rest[1:]
    if launcher == "torchrun":
        return ["python", *rest], ""
    if rest and SCRIPT.match(rest[0]):
        return rest, f"{where}: `{launcher} {rest[0]}` cannot start a .py file: write " \
                     f"`{launcher} ... python {rest[0]}`"
    return rest, ""


def collect():
    commands = []
    for doc in DOCS:
        variables = dict(DEFAULT_ENV)  # a reader pastes a page's blocks in order
        for start, block in _shell_blocks(doc):
            for number, text in _logical_lines(start, block):
                where = f"{doc.relative_to(REPO)}:{number}"
                text = text.removeprefix("$ ").strip()
                assignment = re.match(r"^(\w+)=(\"[^\"]*\"|'[^']*'|\S*)$", text)
                if assignment:
                    value = shlex.split(assignment.group(2))[0] if assignment.group(2) else ""
                    variables[assignment.group(1)] = _expand(value, variables)
                    continue
                if not text or PLACEHOLDER.search(text):
                    continue
                try:
                    words = shlex.split(_expand(text, variables))
                except KeyError as unset:
                    words = shlex.split(text)
                    if _program(_strip_launcher(words, where)[0]) is not None:
                        commands.append(DocCommand(where, words, problem=f"{where}: ${unset.args[0]} is "
                                                   "used but never set on this page"))
                    continue
                except ValueError:
                    continue
                env = {}
                while words and re.match(r"^\w+=", words[0]):
                    name, value = words.pop(0).split("=", 1)
                    env[name] = value
                if not words:
                    continue
                words, problem = _strip_launcher(words, where)
                program = _program(words)
                if program is None:
                    continue
                flag = "--dry_run" if program in HAS_DRY_RUN else "--help"
                argv = [w for w in words if w not in ("--dry_run", "--help")] + [flag]
                commands.append(DocCommand(where, argv, env, problem))
    return commands


def _program(words):
    """The project program a command runs (script path, module or command name), or None."""
    if words[0].startswith("ramvid-"):
        return words[0]
    if len(words) > 1 and PROGRAM.match(words[0]):
        if SCRIPT.match(words[1]):
            return words[1]
        if words[1] == "-m" and len(words) > 2 and words[2].startswith("ramvid"):
            return words[2]
    if SCRIPT.match(words[0]):  # e.g. after a launcher that lost its `python`
        return words[0]
    return None


def inline_launcher_mistakes():
    """`mpirun -n 2 scripts/x.py` in prose (inline code) misses `python` too."""
    pattern = re.compile(r"`((?:mpirun|srun)(?: -\S+ \S+)* (?:scripts|datasets|benchmarks)/\w+\.py)")
    return [f"{doc.relative_to(REPO)}:{text[:m.start()].count(chr(10)) + 1}: `{m.group(1)}` "
            "cannot start a .py file: write python before the script"
            for doc in DOCS for text in [doc.read_text()] for m in pattern.finditer(text)]


COMMANDS = collect()


def _inside(path, folder):
    """A path of the command, absolute /tmp/... ones moved into `folder`."""
    return folder / path.lstrip("/") if path.startswith("/") else folder / path


def _prepare_inputs(argv, folder, checkpoint):
    """Make what the command reads; returns argv with absolute paths moved into `folder`."""
    argv = [str(_inside(w, folder)) if w.startswith("/tmp/") else w for w in argv]
    for flag, value in zip(argv, argv[1:]):
        path = Path(value) if value.startswith("/") else folder / value
        if flag.endswith("_dir") and flag.startswith("--") and flag != "--out_dir":
            path.mkdir(parents=True, exist_ok=True)
        elif flag == "--model_path":
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(checkpoint, path)
            shutil.copy(checkpoint.parent / "args.json", path.parent / "args.json")
        elif flag in ("--samples", "--gt"):
            _write_npz(path, argv)
    return argv


def _write_npz(path, argv):
    """Blank clips shaped as the file name says (N x T x H x W x C), with N cut down while
    keeping it a multiple of --samples_per_clip."""
    shape = [int(n) for n in re.findall(r"\d+", path.name.split(".")[0].split("_")[-1])]
    if len(shape) != 5:
        return
    per_clip = int(argv[argv.index("--samples_per_clip") + 1]) if "--samples_per_clip" in argv \
        else 1
    shape[0] = min(shape[0], 2 * per_clip)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, np.zeros(shape, np.uint8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model checkpoint (demo preset, 20 frames) with its args.json."""
    import ramvid
    from ramvid.flags import write_json
    from ramvid.config import PRESETS

    folder = tmp_path_factory.mktemp("checkpoint")
    defaults = ramvid.model_and_diffusion_defaults()
    flags = {**defaults, **{k: v for k, v in dict(PRESETS["demo"]).items() if k in defaults},
             "seq_len": 20}
    torch.save(ramvid.create_model(**flags).state_dict(), folder / "ema_0.9999_000100.pt")
    write_json(folder / "args.json", flags)
    return folder / "ema_0.9999_000100.pt"


def test_prose_launchers_name_python():
    """Catches: `mpirun -n 2 scripts/video_train.py` in a sentence (break: write one)."""
    mistakes = inline_launcher_mistakes()
    assert not mistakes, "\n".join(mistakes)


def _documented(flag_pattern, line_filter=""):
    values = []
    for doc in DOCS:
        for start, block in _shell_blocks(doc):
            for number, text in _logical_lines(start, block):
                if line_filter in text:
                    values += [(f"{doc.relative_to(REPO)}:{number}", v)
                               for v in re.findall(flag_pattern + r"\s+(\S+)", text)]
    return values


def test_documented_data_folders_are_the_prepared_ones():
    """Catches: one page training on data/k600/train while the preparation command writes
    data/kinetics600/<split> (break: rename one of the two). A `data/...` folder given to
    --data_dir or --val_data_dir is <out_dir>/<split> of a documented datasets/ command."""
    prepared = {value for _, value in _documented("--out_dir", "datasets/")}
    used = _documented(r"--(?:val_)?data_dir")
    wrong = [f"{where}: {value}" for where, value in used
             if value.startswith("data/") and str(Path(value).parent) not in prepared]
    assert not wrong, "\n".join(wrong) + f"\nprepared by datasets/*.py: {sorted(prepared)}"


def test_documented_video_extensions_are_the_loaders():
    """Catches: a page saying --data_dir is searched for .mp4/.avi/.gif when the loader also
    reads .mov/.mkv/.webm (break: drop one from a page). A paragraph that speaks of
    `--data_dir` and names video extensions names all of them."""
    from ramvid.data import VIDEO_EXTENSIONS

    token = re.compile(r"(?<![\w/])(" + "|".join(re.escape(e) for e in VIDEO_EXTENSIONS) + r")\b")
    wrong = []
    for doc in DOCS:
        text = doc.read_text()
        for paragraph in re.split(r"\n\s*\n", text):
            named = set(token.findall(paragraph))
            if "--data_dir" in paragraph and len(named) >= 2 and named != VIDEO_EXTENSIONS:
                line = text[:text.index(paragraph)].count("\n") + 1
                wrong.append(f"{doc.relative_to(REPO)}:{line}: {sorted(named)}")
    assert not wrong, "\n".join(wrong) + f"\nthe loader reads {sorted(VIDEO_EXTENSIONS)}"


def test_readme_library_example_runs(one_thread):
    """Catches: the README's library example drifting from the API (break: rename an argument
    of sample_loop)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md (Library)", "exec"), scope)
    video, x0 = scope["video"], scope["x0"]
    assert video.shape == x0.shape and torch.equal(video[:, :, :2], x0[:, :, :2])


def test_the_docs_have_commands():
    """Catches: the extractor silently finding nothing (e.g. after a change of fence style)."""
    programs = {Path(c.argv[1] if PROGRAM.match(c.argv[0]) else c.argv[0]).name
                for c in COMMANDS}
    assert {"video_train.py", "video_sample.py", "video_eval.py"} <= programs


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_runs(command, checkpoint, tmp_path, monkeypatch, capsys):
    """Catches: a documented flag, value, path or script that the program refuses, a launcher
    line without `python` (break: delete a flag the README uses from the parser)."""
    assert not command.problem, command.problem
    argv = _prepare_inputs(command.argv, tmp_path, checkpoint)
    monkeypatch.chdir(tmp_path)
    for name, value in {**DEFAULT_ENV, **command.env}.items():
        monkeypatch.setenv(name, str(_inside(value, tmp_path)) if value.startswith("/tmp/")
                           else value)
    code = _run_in_process(argv, monkeypatch)
    err = capsys.readouterr().err
    assert code in (0, None), f"{command.where}: `{' '.join(command.argv)}` exited {code}:\n" \
                              f"{err[-1500:]}"


def _run_in_process(argv, monkeypatch):
    """Run the program as `python ...` would, in this process (no torch import per command);
    returns its exit code."""
    if argv[0].startswith("ramvid-"):
        [entry] = [ep for ep in entry_points(group="console_scripts") if ep.name == argv[0]]
        monkeypatch.setattr(sys, "argv", argv)
        run = entry.load()
    elif argv[1] == "-m":
        monkeypatch.setattr(sys, "argv", [argv[2], *argv[3:]])
        run = lambda: runpy.run_module(argv[2], run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        script = str(REPO / argv[1])
        monkeypatch.setattr(sys, "argv", [script, *argv[2:]])
        run = lambda: runpy.run_path(script, run_name="__main__")  # noqa: E731
    try:
        result = run()
    except SystemExit as stop:
        return stop.code
    return result if isinstance(result, int) else 0


def test_training_flag_table_matches_the_declarations():
    """Catches: docs/TRAINING.md's flag table naming a flag the parser lacks, missing one it
    has, or stating another default (break: change a default in TRAIN_FLAGS)."""
    from ramvid.train.command import TRAIN_FLAGS

    text = (REPO / "docs" / "TRAINING.md").read_text()
    table = text[text.index("## Flags"):].split("\n\n")[2]
    declared = {f.name: f for f in TRAIN_FLAGS}
    problems, seen = [], set()
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`--(\w+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[1])
        for i, name in enumerate(names):
            seen.add(name)
            if name in ("preset", "dry_run"):
                continue
            if name not in declared:
                problems.append(f"--{name}: in the table, not a training flag")
            elif i < len(defaults) and not defaults[i].startswith("$") \
                    and not _same_default(defaults[i], declared[name].default):
                problems.append(f"--{name}: table says {defaults[i]!r}, the flag "
                                f"{declared[name].default!r}")
    problems += [f"--{name}: a training flag missing from the table"
                 for name in declared if name not in seen]
    assert not problems, "\n".join(problems)


def _same_default(written, default):
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return written == str(default)
    try:
        return float(written) == default
    except ValueError:
        return False
