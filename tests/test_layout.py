"""The shape of the code a reader follows: layers without circles, and short paths from each
command to the network.

Layers, bottom to top (an import may go down or sideways, never up, and no import circle):

    0  errors                          the one user-error type
    1  flags dist runtime checkpoint   infrastructure: flags and records, launch, TF32/compile/
       runlock video_io                heap/seeds, crash-safe writes and checkpoint files,
                                       run-folder lock, video files
    2  unet masking diffusion data     the model, the maths, the data, the metrics
       metrics
    3  config                          model and diffusion flags -> (model, diffusion); presets
    4  train sample                    the jobs: the training loop, the sampling driver
    5  */command demo ramvid           the commands (flags -> a job) and the package's face

The call paths are traced, not counted by hand: each command runs in this process on a tiny
model until its first network call, where the stack is read (frames in ramvid/ and scripts/,
the network's own excluded).
"""
import ast
import runpy
import sys
import traceback
from pathlib import Path

import pytest

import ramvid.unet
from conftest import REPO
from sample_fixtures import make_checkpoint
from sample_fixtures import make_videos as make_clip_videos
from train_fixtures import TINY, make_videos

LAYERS = {  # module prefix -> layer; the longest matching prefix decides
    "ramvid.errors": 0,
    "ramvid.flags": 1, "ramvid.dist": 1, "ramvid.runtime": 1, "ramvid.checkpoint": 1,
    "ramvid.runlock": 1, "ramvid.video_io": 1,
    "ramvid.unet": 2, "ramvid.masking": 2, "ramvid.diffusion": 2, "ramvid.data": 2,
    "ramvid.metrics": 2,
    "ramvid.config": 3,
    "ramvid.train": 4, "ramvid.sample": 4,
    "ramvid.train.command": 5, "ramvid.sample.command": 5, "ramvid.metrics.command": 5,
    "ramvid.train.__main__": 5, "ramvid.sample.__main__": 5, "ramvid.demo": 5, "ramvid": 5,
}


def module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    return {module_name(p): p for p in (REPO / "ramvid").rglob("*.py")}


def imports_of(name, path, known):
    """The ramvid modules `name` imports (at any depth of the file, also inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ramvid")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("ramvid"):
                continue
            for alias in node.names:  # `from .. import dist` imports the module ramvid.dist
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known
                          else source)
    return found - {name}


def layer(name):
    return max(((len(prefix), level) for prefix, level in LAYERS.items()
                if name == prefix or name.startswith(prefix + ".")))[1]


def test_imports_go_down_the_layers_and_never_in_a_circle():
    """Catches an upward import or an import circle (seen red with `from .sample.command import
    SAMPLING_FLAGS` added to ramvid/config.py, and with `from ..metrics.command import
    load_clips` in ramvid/sample/run.py)."""
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in graph.items() for b in targets if layer(b) > layer(a)]
    assert upward == []

    state, circles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


# --------------------------------------------------------------------------- call paths
class FirstModelCall(Exception):
    pass


def trace_to_model(monkeypatch, script, argv):
    """[(file, function)] of ramvid/ and scripts/ frames on the stack at the command's first
    network call, outermost first."""
    seen = []

    def forward(self, *args, **kwargs):
        seen.extend(traceback.extract_stack()[:-1])
        raise FirstModelCall

    monkeypatch.setattr(ramvid.unet.UNetModel, "forward", forward)
    monkeypatch.setattr(sys, "argv", [str(REPO / "scripts" / script), *map(str, argv)])
    monkeypatch.delenv("OPENAI_LOGDIR", raising=False)
    with pytest.raises(FirstModelCall):
        runpy.run_path(str(REPO / "scripts" / script), run_name="__main__")
    ours = [Path(f.filename).resolve() for f in seen]
    return [(str(path.relative_to(REPO)), f.name) for path, f in zip(ours, seen)
            if path.is_relative_to(REPO / "ramvid") or path.is_relative_to(REPO / "scripts")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layout")
    return make_checkpoint(folder / "run"), make_clip_videos(folder / "clips")


@pytest.mark.parametrize("script, argv, max_calls, max_files", [
    ("video_sample.py", ["--cond_frames", "0,", "--num_samples", "1", "--save_video", "none"],
     8, 6),
    ("video_sample_long.py", ["--total_length", "8", "--num_samples", "1",
                              "--save_video", "none"], 8, 6),
    ("video_eval.py", ["--protocol", "custom", "--cond_frames", "0,", "--num_clips", "1",
                       "--fvd", "False"], 9, 7),
])
def test_sampling_commands_reach_the_network_in_few_calls(monkeypatch, tmp_path, checkpoint,
                                                          script, argv, max_calls, max_files):
    """Goal of the layout: a reader follows a sampling command to the network in a handful of
    calls (seen red with a forwarding wrapper inserted between `sample_batch` and
    `sample_loop`)."""
    ckpt, clips = checkpoint
    out = ["--work_dir" if script == "video_eval.py" else "--out_dir", tmp_path / "out"]
    chain = trace_to_model(monkeypatch, script, ["--model_path", ckpt, "--data_dir", clips,
                                                 "--timestep_respacing", "2", *argv, *out])
    shown = " > ".join(f"{file}:{function}" for file, function in chain)
    assert len(chain) <= max_calls, shown
    assert len({file for file, _ in chain}) <= max_files, shown


def test_training_reaches_the_loss_in_few_calls(monkeypatch, tmp_path):
    """Goal of the layout: from video_train.py to the network in at most 7 calls over 5 files
    (seen red with the loop split back into a helper per stage)."""
    data = make_videos(tmp_path / "videos", extras=False)
    chain = trace_to_model(monkeypatch, "video_train.py",
                           ["--data_dir", data, "--log_dir", tmp_path / "run", *TINY,
                            "--batch_size", "1"])
    shown = " > ".join(f"{file}:{function}" for file, function in chain)
    assert len(chain) <= 7, shown
    assert len({file for file, _ in chain}) <= 5, shown
