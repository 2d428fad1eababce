"""The demo's steps: data -> training -> sampling, each through the project's own command-line
scripts in a subprocess, exactly as a user would type them.

Training and sampling run under `mpirun -n <procs>` with one thread per rank (two ranks use two
cores better than one process with two threads: small 3D convolutions scale poorly across
threads). Without mpirun the same scripts run as one plain process.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..presets import preset_flags

REPO = Path(__file__).resolve().parents[2]
TASKS = {  # name -> given frames (None: unconditional); T is the demo's seq_len
    "prediction": lambda t: [0, 1],
    "infilling": lambda t: [0, t - 1],
    "unconditional": lambda t: None,
}


class DemoError(Exception):
    """A step of the demo failed; the message names the step and where its log is."""


@dataclass(frozen=True)
class DemoConfig:
    run_dir: Path
    data_dir: Path
    max_steps: int
    seq_len: int
    image_size: int
    num_train: int
    num_test: int  # held-out clips scored for prediction and infilling
    num_unconditional: int
    max_sprites: int
    seed: int
    procs: int
    respacing: str  # sampling steps, e.g. "ddim25"
    eta: float  # DDIM noise: 1 re-injects noise each step, which corrects drifting frames
    preset: str = "demo"

    def to_json(self):
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------- launching
def find_mpirun():
    """The mpirun beside the running Python (the venv's MPICH), else one on PATH, else None."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    return shutil.which("mpirun")


def launch_prefix(procs, mpirun):
    """Command prefix running a Python script on `procs` ranks (plain python without mpirun)."""
    if mpirun and procs > 1:
        return [mpirun, "-n", str(procs), sys.executable]
    return [sys.executable]


def child_env(threads, logdir):
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENAI_LOGDIR=str(logdir), PYTHONUNBUFFERED="1")
    return env


def shown(command):
    """The command as a user would type it in the repository root (paths inside it relative)."""
    inside = str(REPO) + os.sep
    return shlex.join(part.removeprefix(inside) for part in command)


def run_step(name, command, env, log_path):
    """Run one child process: its stdout (log lines) goes to `log_path`, its stderr (the tqdm
    bar, warnings, errors) to the terminal. Returns the seconds it took."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {shown(command)}", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        code = subprocess.call(command, env=env, stdout=log, cwd=REPO)
    if code != 0:
        tail = log_path.read_text().strip().splitlines()[-3:]
        detail = ("; last lines: " + " | ".join(tail)) if tail else ""
        raise DemoError(f"{name} failed (exit code {code}); its log: {log_path}{detail}")
    return time.time() - start


# ----------------------------------------------------------------------------- data
def prepare_data(cfg):
    """Draw the synthetic clips once into cfg.data_dir (train/ and test/); a later demo with the
    same settings reuses them. Returns (seconds, reused)."""
    from datasets.synthetic import generate

    stamp_path = cfg.data_dir / "demo_data.json"
    settings = dict(num_train=cfg.num_train, num_test=cfg.num_test, image_size=cfg.image_size,
                    num_frames=cfg.seq_len, seed=cfg.seed, max_sprites=cfg.max_sprites)
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == settings:
        return 0.0, True
    start = time.time()
    generate(cfg.data_dir, overwrite=True, **settings)
    stamp_path.write_text(json.dumps(settings) + "\n")  # written last: marks a complete set
    return time.time() - start, False


# ----------------------------------------------------------------------------- commands
def train_command(cfg, prefix):
    command = prefix + [
        str(REPO / "scripts" / "video_train.py"), "--data_dir", str(cfg.data_dir / "train"),
        "--preset", cfg.preset, "--max_steps", str(cfg.max_steps),
        "--save_interval", str(cfg.max_steps), "--log_interval", "10", "--seed", str(cfg.seed),
        "--num_workers", "1",
    ]
    if len(prefix) == 1 and cfg.procs > 1:
        # One process holds every rank's videos, so the global batch stays the preset's.
        command += ["--batch_size", str(preset_flags(cfg.preset)["batch_size"] * cfg.procs)]
    return command


def sample_command(cfg, prefix, checkpoint, task):
    frames = TASKS[task](cfg.seq_len)
    count = cfg.num_test if frames else cfg.num_unconditional
    ranks = 1 if len(prefix) == 1 else cfg.procs
    command = prefix + [
        str(REPO / "scripts" / "video_sample.py"), "--model_path", str(checkpoint),
        "--num_samples", str(count), "--batch_size", str(-(-count // ranks)),
        "--use_ddim", "True", "--eta", str(cfg.eta), "--timestep_respacing", cfg.respacing,
        "--seed", str(cfg.seed),
        "--save_video", "gif",
    ]
    if frames:
        command += ["--data_dir", str(cfg.data_dir / "test"), "--save_gt", "True",
                    "--cond_frames", ",".join(map(str, frames)) + ","]
    else:
        command += ["--cond_generation", "False"]
    return command


def ema_checkpoint(train_dir, step):
    """The EMA weights the training run saved at `step` (the first EMA rate's)."""
    found = sorted(Path(train_dir).glob(f"ema_*_{step:06d}.pt"))
    if not found:
        raise DemoError(f"training finished but {train_dir} holds no ema_*_{step:06d}.pt")
    return found[0]


def sample_files(task_dir):
    """(samples npz, ground-truth npz or None) written by video_sample.py into task_dir."""
    samples = [p for p in Path(task_dir).glob("*.npz") if not p.name.startswith("gt_")]
    truth = list(Path(task_dir).glob("gt_*.npz"))
    if len(samples) != 1:
        raise DemoError(f"expected one samples .npz in {task_dir}, found {len(samples)}")
    return samples[0], (truth[0] if truth else None)


__all__ = [
    "TASKS",
    "DemoConfig",
    "DemoError",
    "child_env",
    "ema_checkpoint",
    "find_mpirun",
    "launch_prefix",
    "prepare_data",
    "run_step",
    "sample_command",
    "sample_files",
    "train_command",
]
