"""`ramvid-demo` / `python scripts/demo.py` / `make demo`: watch a RaMViD model predict and infill.

1. draws the synthetic clips (one sprite moving 2 px per frame; train, val and held-out test);
2. trains the `demo` preset from scratch for --max_steps under `mpirun -n 2` (held-out previews
   every --sample_interval steps), to show the loss falling;
3. samples the held-out clips with the shipped checkpoint (the same preset trained longer by
   the recorded command, `retrain_command` below) and with this run's: prediction (first two
   frames given), infilling (first and last given), N samples per clip; unconditional videos;
4. scores prediction and infilling against simple baselines on the same clips, writes
   metrics.json, a loss plot, comparison gifs and a frame strip, and prints a table
   (ramvid/demo/report.py).
See docs/DEMO.md.

Every step runs the project's own command-line scripts in a subprocess, exactly as a user would
type them. Training and sampling run under `mpirun -n <procs>` with one thread per rank (two
ranks use two cores better than one process with two threads: small 3D convolutions scale poorly
across threads). Without mpirun the same scripts run as one plain process.
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
from typing import ClassVar

from ..config import PRESETS
from ..diffusion import space_timesteps
from ..errors import UsageError
from ..flags import Flag, at_least, parse, unit_interval, user_errors
from ..metrics.i3d import sha256_of
from .report import summarise

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STEPS = 600  # the short run: about 2.5 minutes on 2 idle cores (docs/DEMO.md)
# The demo's clips (datasets/synthetic.py): one sprite, radius 3.5-4.5 px, moving 2 px per
# frame in a 16 x 16 box, its colour fixed by its shape (docs/DEMO.md says why). The seed is
# fixed: the shipped checkpoint was trained on exactly these training clips, and the test and
# val clips come from other generator streams, so they are held out for it too.
DEMO_DATA = dict(num_train=2000, num_val=32, image_size=16, num_frames=8, max_sprites=1,
                 speed=(0.125, 0.125), radius=(0.22, 0.28), color_by_shape=True, seed=0)

# The checkpoint shipped in the repository. A few minutes of CPU training shows the loss falling
# and the model learning; the shipped checkpoint shows what the same `demo` preset reaches with
# longer training on the same clips: SHIPPED_STEPS steps of one process with two threads.
# `--retrain` runs `retrain_command` again and compares the result with SHIPPED_SHA256.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_STEPS = 16000
LR_ANNEAL_STEPS = 16000  # the learning rate falls linearly from 5e-4 towards 0 at this step
SHIPPED_CHECKPOINT = SHIPPED_DIR / f"ema_0.99_{SHIPPED_STEPS:06d}.pt"  # args.json beside it
SHIPPED_SHA256 = "caa6e4b27ee01e9037e87e28c2faff9d8f5c0cd1b5bc85360997704b2d61b2b6"
RETRAIN_THREADS = 2  # the recorded run used two threads; another count changes float rounding
RETRAIN_MINUTES = "about 86 minutes"  # the recorded run, on the 2-core development machine


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
    tasks: ClassVar[tuple] = ("prediction", "infilling", "unconditional")

    @property
    def seq_len(self):
        return DEMO_DATA["num_frames"]

    @property
    def image_size(self):
        return DEMO_DATA["image_size"]

    def given_frames(self, task):
        """The frames a task gives the sampler; None: unconditional."""
        return {"prediction": [0, 1], "infilling": [0, self.seq_len - 1],
                "unconditional": None}[task]

    def to_json(self):
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------- flags
def ddim_respacing(text):
    """The reason `text` is not a DDIM respacing of the demo's diffusion steps, or None."""
    if not text.startswith("ddim"):
        return "the demo samples with DDIM; use e.g. ddim20"
    try:  # checked now, not after minutes of training
        space_timesteps(PRESETS["demo"]["diffusion_steps"], text)
    except ValueError as e:
        return str(e).split(": ", 1)[-1]  # the library names the value itself
    return None


DEMO_FLAGS = (
    Flag("out_dir", "", "run folder (empty: runs/demo-<time>)"),
    Flag("data_dir", str(REPO / "runs" / "demo_data"),
         "synthetic clips, drawn once and reused while the settings match"),
    Flag("max_steps", DEFAULT_STEPS, "steps of the short training run from scratch",
         check=at_least(1)),
    Flag("sample_interval", 200, "held-out previews of the short run every this many steps",
         check=at_least(1)),
    Flag("procs", 2, "mpirun ranks (one core each)", check=at_least(1)),
    Flag("num_test", 64, "held-out clips scored for prediction and infilling",
         check=at_least(1)),
    Flag("samples_per_clip", 4, "N samples per held-out clip: best-of-N beside the one-sample "
         "mean", check=at_least(1)),
    Flag("timestep_respacing", "ddim20", "DDIM sampling steps (20 scored as well as 25 on "
         "validation clips, in a fifth less time)", check=ddim_respacing),
    Flag("eta", 1.0, "DDIM noise; 1 scored better than 0 on validation clips",
         check=unit_interval),
    Flag("seed", 0, "training and sampling seed"),
    Flag("retrain", False, "first retrain the shipped checkpoint with its recorded command "
         f"({RETRAIN_MINUTES}) and use that instead"),
)


def parse_args(argv=None):
    return parse(__doc__.split("\n\n")[0], DEMO_FLAGS, argv)


def make_config(args):
    run_dir = Path(args.out_dir or REPO / "runs" / time.strftime("demo-%Y%m%d-%H%M%S"))
    return DemoConfig(
        run_dir=run_dir, data_dir=Path(args.data_dir), max_steps=args.max_steps,
        num_test=args.num_test, samples_per_clip=args.samples_per_clip, num_unconditional=16,
        seed=args.seed, procs=args.procs, respacing=args.timestep_respacing, eta=args.eta,
        sample_interval=min(args.sample_interval, args.max_steps),
    )


# ----------------------------------------------------------------------------- shipped checkpoint
def retrain_command(data_dir):
    """The command that trained the shipped checkpoint (one process with RETRAIN_THREADS
    threads; global batch 8, as the preset's 4 per rank on 2 ranks), on the demo's clips in
    `data_dir`. It ends at SHIPPED_STEPS, the end of the learning-rate schedule, where the
    checkpoint was taken (docs/DEMO.md)."""
    return [
        sys.executable, str(REPO / "scripts" / "video_train.py"),
        "--data_dir", str(Path(data_dir) / "train"), "--preset", "demo", "--batch_size", "8",
        "--anneal_type", "linear", "--lr_anneal_steps", str(LR_ANNEAL_STEPS),
        "--max_steps", str(SHIPPED_STEPS),
        "--save_interval", "1000", "--log_interval", "10", "--seed", "0", "--num_workers", "1",
        "--sample_interval", "1000", "--val_data_dir", str(Path(data_dir) / "val"),
    ]


def verified_checkpoint():
    """The shipped checkpoint's path, after checking its bytes against SHIPPED_SHA256."""
    if not SHIPPED_CHECKPOINT.is_file():
        raise UsageError(f"the shipped demo checkpoint {SHIPPED_CHECKPOINT} is missing; restore "
                         "it from git or rebuild it with `python scripts/demo.py --retrain`")
    found = sha256_of(SHIPPED_CHECKPOINT)
    if found != SHIPPED_SHA256:
        raise UsageError(f"{SHIPPED_CHECKPOINT} has sha256 {found}, not the recorded "
                         f"{SHIPPED_SHA256}; restore it from git or rebuild it with "
                         "`python scripts/demo.py --retrain`")
    return SHIPPED_CHECKPOINT


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


def shown(command):
    """The command as a user would type it in the repository root (paths inside it relative)."""
    inside = str(REPO) + os.sep
    return shlex.join(part.removeprefix(inside) for part in command)


def run_step(name, command, threads, folder):
    """Run one child process with `threads` threads and OPENAI_LOGDIR=folder: its stdout (log
    lines) goes to folder/stdout.txt, its stderr (the tqdm bar, warnings, errors) to the
    terminal. Returns the seconds it took."""
    log_path = folder / "stdout.txt"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENAI_LOGDIR=str(folder), PYTHONUNBUFFERED="1")
    print(f"$ {shown(command)}", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        code = subprocess.call(command, env=env, stdout=log, cwd=REPO)
    if code != 0:
        tail = log_path.read_text().strip().splitlines()[-3:]
        detail = ("; last lines: " + " | ".join(tail)) if tail else ""
        raise UsageError(f"{name} failed (exit code {code}); its log: {log_path}{detail}")
    return time.time() - start


def ema_checkpoint(train_dir, step):
    """The EMA weights the training run saved at `step` (the first EMA rate's)."""
    found = sorted(Path(train_dir).glob(f"ema_*_{step:06d}.pt"))
    if not found:
        raise UsageError(f"training finished but {train_dir} holds no ema_*_{step:06d}.pt")
    return found[0]


# ----------------------------------------------------------------------------- the steps
def prepare_data(cfg):
    """Draw the synthetic clips once into cfg.data_dir (train/, val/, test/); a later demo with
    the same settings reuses them. Returns (seconds, reused)."""
    from datasets.synthetic import generate

    stamp_path = cfg.data_dir / "demo_data.json"
    settings = json.loads(json.dumps(dict(DEMO_DATA, num_test=cfg.num_test)))  # as JSON reads
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == settings:
        return 0.0, True
    start = time.time()
    stamp_path.unlink(missing_ok=True)  # a half-drawn set must not look complete
    generate(cfg.data_dir, overwrite=True, **dict(settings, speed=tuple(settings["speed"]),
                                                 radius=tuple(settings["radius"])))
    stamp_path.write_text(json.dumps(settings) + "\n")  # written last: marks a complete set
    return time.time() - start, False


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
    frames = cfg.given_frames(task)
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


def banner(text):
    print(f"\n== {text}", flush=True)


def retrain(cfg, timings):
    """Run the shipped checkpoint's recorded command; returns the new checkpoint."""
    train_dir = cfg.run_dir / "retrain"
    banner(f"retraining the shipped checkpoint ({SHIPPED_STEPS} steps, {RETRAIN_THREADS} "
           f"thread(s), {RETRAIN_MINUTES}; log: {train_dir})")
    timings["retrain_s"] = run_step("retraining", retrain_command(cfg.data_dir), RETRAIN_THREADS,
                                    train_dir)
    checkpoint = ema_checkpoint(train_dir, SHIPPED_STEPS)
    same = sha256_of(checkpoint) == SHIPPED_SHA256
    print(f"retrained in {timings['retrain_s']:.0f} s -> {checkpoint}: "
          + ("identical to the shipped checkpoint (sha256)" if same else
             "differs from the shipped checkpoint (another torch build or CPU rounds "
             "differently); the demo continues with the retrained one"), flush=True)
    return checkpoint


def train_short_run(cfg, prefix, threads, timings):
    banner(f"2/4 training the `demo` preset from scratch for {cfg.max_steps} steps "
           f"(log: {cfg.run_dir / 'train'})")
    train_dir = cfg.run_dir / "train"
    timings["train_s"] = run_step("training", train_command(cfg, prefix), threads, train_dir)
    checkpoint = ema_checkpoint(train_dir, cfg.max_steps)
    print(f"trained in {timings['train_s']:.0f} s -> {checkpoint}", flush=True)
    return checkpoint


def sample_all(cfg, prefix, threads, checkpoints, timings):
    """Sample every task with every checkpoint ({source: path}) into run_dir/<source>/<task>."""
    banner(f"3/4 sampling held-out clips with {cfg.respacing} (eta {cfg.eta:g}), "
           f"{cfg.samples_per_clip} samples per clip, EMA weights")
    for source, checkpoint in checkpoints.items():
        for task in cfg.tasks:
            if task == "unconditional" and source != "shipped":
                continue  # the better model's unconditional videos are the ones to look at
            command = sample_command(cfg, prefix, checkpoint, task)
            seconds = run_step(f"sampling ({source}, {task})", command, threads,
                               cfg.run_dir / source / task)
            timings[f"sample_{source}_{task}_s"] = seconds
            print(f"{source} {task}: {seconds:.0f} s", flush=True)


def main(argv=None):
    with user_errors():
        args = parse_args(argv)
        cfg = make_config(args)
        start = time.time()
        timings = {}
        shipped = None if args.retrain else verified_checkpoint()  # checked before any work
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        print(f"ramvid demo -> {cfg.run_dir}", flush=True)

        banner(f"1/4 synthetic clips ({cfg.num_test} held-out test clips) in {cfg.data_dir}")
        seconds, reused = prepare_data(cfg)
        timings["data_s"] = seconds
        print("reused the clips drawn by an earlier demo" if reused else f"drawn in {seconds:.1f} s",
              flush=True)
        if args.retrain:
            shipped = retrain(cfg, timings)

        mpirun = find_mpirun()
        if mpirun is None and cfg.procs > 1:
            print("note: mpirun not found; training and sampling run as one process with "
                  f"{cfg.procs} threads instead of {cfg.procs} ranks", flush=True)
        prefix = launch_prefix(cfg.procs, mpirun)
        threads = 1 if len(prefix) > 1 else cfg.procs
        this_run = train_short_run(cfg, prefix, threads, timings)
        checkpoints = {"shipped": shipped, "this_run": this_run}
        sample_all(cfg, prefix, threads, checkpoints, timings)

        banner("4/4 scoring against baselines on the same held-out clips")
        shipped_label = "retrained" if args.retrain else "shipped"
        labels = {"shipped": f"RaMViD, {shipped_label} checkpoint ({SHIPPED_STEPS} steps)",
                  "this_run": f"RaMViD, this run ({cfg.max_steps} steps)"}
        summarise(cfg, checkpoints, labels, timings, start,
                  retrain_shown=f"OMP_NUM_THREADS={RETRAIN_THREADS} "
                                + shown(retrain_command(cfg.data_dir)))
        return 0
