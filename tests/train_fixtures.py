"""Helpers for the training tests: a folder of small real video files and a tiny model config."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() \
    else sys.executable
MPIRUN = str(Path(PYTHON).parent / "mpirun")
TRAIN_SCRIPT = str(REPO / "scripts" / "video_train.py")

# A model small enough for 2 CPU cores: 8x8 frames, 4 of them, 32 channels, 50 diffusion steps.
TINY = ["--image_size", "8", "--num_channels", "32", "--channel_mult", "1,2",
        "--num_res_blocks", "1", "--attention_resolutions", "4", "--seq_len", "4",
        "--scale_time_dim", "0", "--diffusion_steps", "50", "--max_num_mask_frames", "2",
        "--num_workers", "0"]


def make_videos(folder, num_mp4=4, frames=6, size=8, seed=0, extras=True):
    """Sprite clips as lossless .mp4 (the synthetic data set), plus one .avi, one .gif and one
    broken .mp4 when `extras`. Returns the folder holding the videos."""
    if str(REPO) not in sys.path:  # `datasets/` is a folder of the checkout, not a package
        sys.path.insert(0, str(REPO))
    from datasets.synthetic import generate, make_clips
    from ramvid.video_io import write_video

    folder = Path(folder)
    generate(folder, num_train=num_mp4, num_test=0, image_size=size, num_frames=frames, seed=seed)
    train = folder / "train"
    if extras:
        clip = make_clips(2, image_size=size, num_frames=frames, seed=seed + 1, split="test").videos
        write_video(train / "square_avi.avi", clip[0])
        images = [Image.fromarray(f) for f in clip[1]]
        images[0].save(train / "circle_gif.gif", save_all=True, append_images=images[1:],
                       duration=100, loop=0)
        (train / "broken_00.mp4").write_bytes(b"not a video")
    return train


def script_env(logdir=None, **extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("OPENAI_LOGDIR", None)
    if logdir is not None:
        env["OPENAI_LOGDIR"] = str(logdir)
    env.update(extra)
    return env


def run_train(args, logdir=None, timeout=120, mpi_ranks=0):
    cmd = [PYTHON, TRAIN_SCRIPT, *map(str, args)]
    if mpi_ranks:
        cmd = [MPIRUN, "-n", str(mpi_ranks), *cmd]
    return subprocess.run(cmd, env=script_env(logdir), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def progress_rows(logdir):
    import csv

    path = Path(logdir) / "progress.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_all_final_files_load(logdir):
    """Every .pt under a final name loads (none truncated)."""
    import torch

    for path in Path(logdir).glob("*.pt"):
        torch.load(path, map_location="cpu", weights_only=True)


def finite(state):
    return all(np.isfinite(v.float().numpy()).all() for v in state.values())


def free_port():
    """A TCP port nobody listens on now (for a rendezvous the test starts next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_script(folder, source):
    """`source` saved as folder/probe.py, a program the multi-process tests launch; its path."""
    path = Path(folder) / "probe.py"
    path.write_text(source)
    return str(path)



def launcher_env(**launcher):
    """script_env() without any launcher variable inherited from the test's own environment, and
    with `launcher`'s: the variables srun, torchrun or mpirun would set for one process."""
    env = script_env()
    for key in list(env):
        if key.startswith(("SLURM_", "PMI", "OMPI_", "MPI_", "MV2_", "TORCHELASTIC")) or key in (
                "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            del env[key]
    env.update(launcher)
    return env
