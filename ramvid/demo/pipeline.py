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

from ..errors import UsageError
from ..config import PRESETS

REPO = Path(__file__).resolve().parents[2]
TASKS = {  # name -> given frames (None: unconditional); T is the demo's seq_len
    "prediction": lambda t: [0, 1],
    "infilling": lambda t: [0, t - 1],
    "unconditional": lambda t: None,
}
# The demo's clips (datasets/synthetic.py): one sprite, radius 3.5-4.5 px, moving 2 px per
# frame in a 16 x 16 box, its colour fixed by its shape (docs/DEMO.md says why). The seed is
# fixed: the shipped checkpoint was trained on exactly these training clips, and the test and
# val clips come from other generator streams, so they are held out for it too.
DEMO_DATA = dict(num_train=2000, num_val=32, image_size=16, num_frames=8, max_sprites=1,
                 speed=(0.125, 0.125), radius=(0.22, 0.28), color_by_shape=True, seed=0)


@dataclass(frozen=True)
class DemoConfig:
    run_dir: Path
    data_dir: Path
    max_steps: int  # of the short training run from scratch
    num_test: int  # held-out clips scored for prediction and infilling
    samples_per_clip: int  # N of best-of-N
    num_unconditional: int
    seed: int  # training and sampling seed (the data's is DEMO_DATA["seed"])
    procs: int
    respacing: str  # sampling steps, e.g. "ddim25"
    eta: float  # DDIM noise: 1 re-injects noise each step, which corrects drifting frames
    sample_interval: int  # held-out previews during the short run
    preset: str = "demo"

    @property
    def seq_len(self):
        return DEMO_DATA["num_frames"]

    @property
    def image_size(self):
        return DEMO_DATA["image_size"]

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
        raise UsageError(f"{name} failed (exit code {code}); its log: {log_path}{detail}")
    return time.time() - start


# ----------------------------------------------------------------------------- data
def data_settings(num_test):
    """The arguments of datasets.synthetic.generate for the demo, as JSON-comparable values."""
    return json.loads(json.dumps(dict(DEMO_DATA, num_test=num_test)))


def prepare_data(cfg):
    """Draw the synthetic clips once into cfg.data_dir (train/, val/, test/); a later demo with
    the same settings reuses them. Returns (seconds, reused)."""
    from datasets.synthetic import generate

    stamp_path = cfg.data_dir / "demo_data.json"
    settings = data_settings(cfg.num_test)
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == settings:
        return 0.0, True
    start = time.time()
    stamp_path.unlink(missing_ok=True)  # a half-drawn set must not look complete
    generate(cfg.data_dir, overwrite=True, **dict(settings, speed=tuple(settings["speed"]),
                                                 radius=tuple(settings["radius"])))
    stamp_path.write_text(json.dumps(settings) + "\n")  # written last: marks a complete set
    return time.time() - start, False


# ----------------------------------------------------------------------------- commands
def train_command(cfg, prefix):
    """The short run from scratch that `make demo` trains, with held-out previews."""
    command = prefix + [
        str(REPO / "scripts" / "video_train.py"), "--data_dir", str(cfg.data_dir / "train"),
        "--preset", cfg.preset, "--max_steps", str(cfg.max_steps),
        "--save_interval", str(cfg.max_steps), "--log_interval", "10", "--seed", str(cfg.seed),
        "--num_workers", "1", "--sample_interval", str(cfg.sample_interval),
        "--val_data_dir", str(cfg.data_dir / "val"),
    ]
    if len(prefix) == 1 and cfg.procs > 1:
        # One process holds every rank's videos, so the global batch stays the preset's.
        command += ["--batch_size", str(PRESETS[cfg.preset]["batch_size"] * cfg.procs)]
    return command


def sample_command(cfg, prefix, checkpoint, task):
    frames = TASKS[task](cfg.seq_len)
    per_clip = cfg.samples_per_clip if frames else 1
    count = cfg.num_test * per_clip if frames else cfg.num_unconditional
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
                    "--samples_per_clip", str(per_clip),
                    "--cond_frames", ",".join(map(str, frames)) + ","]
    else:
        command += ["--cond_generation", "False"]
    return command


def ema_checkpoint(train_dir, step):
    """The EMA weights the training run saved at `step` (the first EMA rate's)."""
    found = sorted(Path(train_dir).glob(f"ema_*_{step:06d}.pt"))
    if not found:
        raise UsageError(f"training finished but {train_dir} holds no ema_*_{step:06d}.pt")
    return found[0]


def sample_files(task_dir):
    """(samples npz, ground-truth npz or None) that video_sample.py wrote under task_dir (in
    task_dir itself or in the one run folder it made there)."""
    found = sorted(Path(task_dir).rglob("*.npz"))
    samples = [p for p in found if not p.name.startswith("gt_")]
    truth = [p for p in found if p.name.startswith("gt_")]
    if len(samples) != 1 or len(truth) > 1:
        raise UsageError(f"expected one samples .npz (and at most one gt_*.npz) under "
                         f"{task_dir}, found {len(samples)} and {len(truth)}")
    return samples[0], (truth[0] if truth else None)


__all__ = [
    "DEMO_DATA", "REPO", "TASKS", "DemoConfig", "child_env", "data_settings",
    "ema_checkpoint", "find_mpirun", "launch_prefix", "prepare_data", "run_step",
    "sample_command", "sample_files", "shown", "train_command",
]
