"""Shared set-up for the sampling and evaluation tests (no tests here): a tiny checkpoint with
its args.json, small real video files, and running the scripts in-process or under mpirun."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import ramvid

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
VENV_BIN = Path(sys.executable).parent

TINY = dict(image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1,
            attention_resolutions="8", num_heads=4, seq_len=6, scale_time_dim=0,
            diffusion_steps=100)
VIDEO_FRAMES = 16  # long enough for the long-video ground truth
NUM_VIDEOS = 3


def make_checkpoint(folder, write_args_json=True, perturbation=0.02, **overrides):
    """A freshly created model with its zero-initialised layers perturbed by `perturbation` x N(0, 1)
    (so outputs depend on every input), saved as ema_0.9999_000010.pt, plus args.json as
    training writes it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flags = {**TINY, **overrides}
    model = ramvid.create_model(**flags)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturbation * torch.randn(p.shape, generator=gen))
    path = folder / "ema_0.9999_000010.pt"
    torch.save(model.state_dict(), path)
    if write_args_json:
        args = {**ramvid.model_and_diffusion_defaults(), **flags, "lr": 1e-4, "batch_size": 2,
                "data_dir": "/somewhere/train"}
        (folder / "args.json").write_text(json.dumps(args, indent=2))
    return path


def make_videos(folder, prefixes=("a", "b", "c")):
    """NUM_VIDEOS mp4 files of 32 x 32 (VIDEO_FRAMES frames): a white square moving over a
    coloured background, different per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for k, prefix in enumerate(prefixes):
        with av.open(str(folder / f"{prefix}_{k}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width = stream.height = 32
            stream.pix_fmt = "yuv420p"
            for t in range(VIDEO_FRAMES):
                image = np.full((32, 32, 3), 40, np.uint8)
                image[:, :, k % 3] = 150 - 20 * (k // 3)
                x = (2 * t + 5 * k) % 24
                image[8:16, x:x + 8] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return folder


def runs_as(name):
    """An autouse fixture for a test module: sys.argv[0] as when scripts/<name>.py runs, so
    error lines start with '<name>.py: error:' as on the command line.
    Use: `_argv0 = runs_as("video_sample")`."""
    @pytest.fixture(autouse=True)
    def _argv0(monkeypatch):
        monkeypatch.setattr(sys, "argv", [str(SCRIPTS / f"{name}.py")])
    return _argv0


def load_script(name):
    """scripts/<name>.py as a module (its main(argv) runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, argv, out_dir, monkeypatch, threads=None):
    """Run a sampling script's main in-process writing into exactly `out_dir`; returns it."""
    monkeypatch.delenv("OPENAI_LOGDIR", raising=False)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        load_script(name).main([str(a) for a in argv] + ["--out_dir", str(out_dir)])
    finally:
        torch.set_num_threads(before)
    return Path(out_dir)


def script_command(name, argv):
    return [sys.executable, str(SCRIPTS / f"{name}.py"), *map(str, argv)]


def mpirun_script(name, argv, out_dir, ranks=2, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_LOGDIR", None)
    cmd = [str(VENV_BIN / "mpirun"), "-n", str(ranks),
           *script_command(name, [*argv, "--out_dir", out_dir])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def load_npz(path):
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}
