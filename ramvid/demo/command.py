"""`ramvid-demo` / `python scripts/demo.py` / `make demo`: watch a RaMViD model predict and infill.

The four steps (synthetic clips; a short training run from scratch; sampling the held-out clips
with the shipped checkpoint and with this run's; scores against baselines) and their numbers:
docs/DEMO.md. Every step runs the project's own command-line scripts in a subprocess, exactly as
a user would type them; training and sampling under `mpirun -n <procs>` with one thread per rank
(two ranks use two cores better than one process with two threads: small 3D convolutions scale
poorly across threads), else as one plain process.
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

import numpy as np

from ..config import PRESETS
from ..diffusion import space_timesteps
from ..errors import UsageError
from ..flags import Flag, at_least, parse, unit_interval, user_errors, write_json
from ..metrics.command import find_sample_file, load_samples, resolve_settings
from ..metrics.evaluation import PROTOCOLS
from ..metrics.frame_metrics import copy_last_given, frame_metrics, linear_interpolation, mean_frame
from ..metrics.i3d import sha256_of
from ..sample.run import RECORD_JSON
from ..train.logs import PREVIEW_CSV, PREVIEW_RESPACING, PROGRESS_CSV, preview_tasks
from ..video_io import save_video_grid

REPO = Path(__file__).resolve().parents[2]
# The demo's clips (datasets/synthetic.py): one sprite, radius 3.5-4.5 px, moving 2 px per
# frame in a 16 x 16 box, its colour fixed by its shape (docs/DEMO.md says why). The seed is
# fixed: the shipped checkpoint was trained on exactly these training clips, and the test and
# val clips come from other generator streams, so they are held out for it too.
DEMO_DATA = dict(num_train=2000, num_val=32, image_size=16, num_frames=8, max_sprites=1,
                 speed=(0.125, 0.125), radius=(0.22, 0.28), color_by_shape=True, seed=0)
# The frames each task gives the sampler (the tasks a training run's previews score, so the
# loss plot shows them); None: unconditional.
TASKS = {**preview_tasks(DEMO_DATA["num_frames"]), "unconditional": None}
SOURCES = ("shipped", "this_run")  # run_dir/<source>/<task>: which checkpoint sampled it
COPY_LAST, LINEAR, MEAN = "copy last given", "linear interp.", "mean frame"
BASELINES = (COPY_LAST, LINEAR, MEAN)

# The checkpoint shipped in the repository: the same `demo` preset trained longer on the same
# clips, by `retrain_command` (SHIPPED_STEPS steps of one process with RETRAIN_THREADS threads;
# another thread count changes float rounding). `--retrain` runs it again.
SHIPPED_STEPS = 16000
SHIPPED_CHECKPOINT = (Path(__file__).resolve().parent / "shipped"
                      / f"ema_0.99_{SHIPPED_STEPS:06d}.pt")  # its run's args.json beside it
SHIPPED_SHA256 = "caa6e4b27ee01e9037e87e28c2faff9d8f5c0cd1b5bc85360997704b2d61b2b6"
RETRAIN_THREADS = 2
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
    # 600 steps: about 2.5 minutes on 2 idle cores (docs/DEMO.md)
    Flag("max_steps", 600, "steps of the short training run from scratch", check=at_least(1)),
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


# ----------------------------------------------------------------------------- the commands
def train_command(data_dir, max_steps, sample_interval, seed, *flags, save_interval=None):
    """video_train.py with the `demo` preset on data_dir/train, previews of data_dir/val."""
    return [str(REPO / "scripts" / "video_train.py"), "--data_dir", str(Path(data_dir) / "train"),
            "--preset", "demo", *flags, "--max_steps", str(max_steps),
            "--save_interval", str(save_interval or max_steps), "--log_interval", "10",
            "--seed", str(seed), "--num_workers", "1", "--sample_interval", str(sample_interval),
            "--val_data_dir", str(Path(data_dir) / "val")]


def retrain_command(data_dir):
    """The command that trained the shipped checkpoint (global batch 8: the preset's 4 per rank
    on 2 ranks), on the demo's clips in `data_dir`. It ends at the end of its learning-rate
    schedule, where the checkpoint was taken (docs/DEMO.md)."""
    return [sys.executable] + train_command(
        data_dir, SHIPPED_STEPS, 1000, 0, "--batch_size", "8", "--anneal_type", "linear",
        "--lr_anneal_steps", str(SHIPPED_STEPS), save_interval=1000)


def short_run_command(cfg, prefix):
    # One process holds every rank's videos, so the global batch stays the preset's.
    batch = (["--batch_size", str(PRESETS["demo"]["batch_size"] * cfg.procs)]
             if len(prefix) == 1 and cfg.procs > 1 else [])
    return prefix + train_command(cfg.data_dir, cfg.max_steps, cfg.sample_interval, cfg.seed,
                                  *batch)


def sample_command(cfg, prefix, checkpoint, task):
    """video_sample.py for one task: N samples of each test clip, clip-major (unconditional:
    cfg.num_unconditional videos)."""
    frames = TASKS[task]
    count = cfg.num_test * cfg.samples_per_clip if frames else cfg.num_unconditional
    ranks = 1 if len(prefix) == 1 else cfg.procs
    command = prefix + [
        str(REPO / "scripts" / "video_sample.py"), "--model_path", str(checkpoint),
        "--num_samples", str(count), "--batch_size", str(-(-count // ranks)),
        "--use_ddim", "True", "--eta", str(cfg.eta), "--timestep_respacing", cfg.respacing,
        "--seed", str(cfg.seed), "--save_video", "gif"]
    if frames:
        return command + ["--data_dir", str(cfg.data_dir / "test"), "--save_gt", "True",
                          "--samples_per_clip", str(cfg.samples_per_clip),
                          "--cond_frames", ",".join(map(str, frames)) + ","]
    return command + ["--cond_generation", "False"]


def launch_prefix(procs, mpirun):
    return [mpirun, "-n", str(procs), sys.executable] if mpirun and procs > 1 else [sys.executable]


def shown(command):
    """The command as a user would type it in the repository root (paths inside it relative)."""
    return shlex.join(part.removeprefix(str(REPO) + os.sep) for part in command)


# ----------------------------------------------------------------------------- the steps
def verified_checkpoint():
    found = sha256_of(SHIPPED_CHECKPOINT) if SHIPPED_CHECKPOINT.is_file() else None
    if found != SHIPPED_SHA256:
        problem = (f"has sha256 {found}, not the recorded {SHIPPED_SHA256}" if found
                   else "is missing")
        raise UsageError(f"the shipped demo checkpoint {SHIPPED_CHECKPOINT} {problem}; restore it "
                         "from git or rebuild it with `python scripts/demo.py --retrain`")
    return SHIPPED_CHECKPOINT


def prepare_data(cfg):
    """Draw the synthetic clips once into cfg.data_dir (train/, val/, test/); a later demo with
    the same settings reuses them. Returns (seconds, reused)."""
    from datasets.synthetic import generate

    settings = dict(DEMO_DATA, num_test=cfg.num_test)
    stamp, stamp_path = json.dumps(settings) + "\n", cfg.data_dir / "demo_data.json"
    if stamp_path.is_file() and stamp_path.read_text() == stamp:
        return 0.0, True
    start = time.time()
    stamp_path.unlink(missing_ok=True)  # a half-drawn set must not look complete
    generate(cfg.data_dir, overwrite=True, **settings)
    stamp_path.write_text(stamp)  # written last: marks a complete set
    return time.time() - start, False


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


def train(name, command, threads, folder, step, timings):
    """Run a training command into `folder` (its seconds go to timings["<folder name>_s"]);
    returns the EMA weights (the first EMA rate's) it saved at `step`."""
    timings[f"{folder.name}_s"] = seconds = run_step(name, command, threads, folder)
    found = sorted(folder.glob(f"ema_*_{step:06d}.pt"))
    if not found:
        raise UsageError(f"training finished but {folder} holds no ema_*_{step:06d}.pt")
    print(f"{name} took {seconds:.0f} s -> {found[0]}", flush=True)
    return found[0]


# ----------------------------------------------------------------------------- scores
def score(samples, gt, given):
    """PSNR (dB) and SSIM of `samples` (uint8 (N, S, T, H, W, C): S samples per clip) against
    `gt` (uint8 (N, T, H, W, C)) over the frames that are not given (`given`: bool (T,)): the
    one-sample mean, best of S, and per clip."""
    result = frame_metrics(samples, gt, given)
    return {"psnr": result["psnr_mean"], "ssim": result["ssim_mean"],
            "psnr_best": result["psnr_best"], "ssim_best": result["ssim_best"],
            "samples_per_clip": result["samples_per_clip"],
            "psnr_per_clip": result["per_clip"]["psnr_mean"].tolist(),
            "ssim_per_clip": result["per_clip"]["ssim_mean"].tolist()}


def score_task(ours, gt, frames, reference):
    """Our samples ({label: (N, S, T, H, W, C)}) and the baselines scored on the same clips `gt`
    (N, T, H, W, C) with `frames` given: ({method: scores}, {method: one video per clip}).
    Linear interpolation only where a missing frame lies between two given frames."""
    given = np.isin(np.arange(gt.shape[1]), frames)
    videos = {label: samples[:, 0] for label, samples in ours.items()}
    videos[COPY_LAST] = copy_last_given(gt, given)
    if max(frames) - min(frames) >= len(frames):  # a gap between the given frames
        videos[LINEAR] = linear_interpolation(gt, given)
    videos[MEAN] = mean_frame(gt, given, reference)
    scores = {name: score(ours.get(name, v[:, None]), gt, given) for name, v in videos.items()}
    return scores, videos


def margins(scores, ours):
    """{task: PSNR / SSIM of `ours` (one-sample mean) minus the baselines'}."""
    out = {}
    for task, by_method in scores.items():
        mine = by_method[ours]
        best = max((m for m in BASELINES if m in by_method), key=lambda m: by_method[m]["psnr"])
        out[task] = {"best_baseline": best,
                     "psnr_gain_over_best_baseline_db": mine["psnr"] - by_method[best]["psnr"]}
        for method, name in ((COPY_LAST, "copy_last"), (LINEAR, "linear")):
            if method in by_method:
                out[task][f"psnr_gain_over_{name}_db"] = mine["psnr"] - by_method[method]["psnr"]
                out[task][f"ssim_gain_over_{name}"] = mine["ssim"] - by_method[method]["ssim"]
    return out


# ----------------------------------------------------------------------------- the samples
def sample_run(task_dir):
    """The folder of the one run video_sample.py made in task_dir (its OPENAI_LOGDIR)."""
    found = sorted(Path(task_dir).glob(f"*/{RECORD_JSON}"))
    if len(found) != 1:
        raise UsageError(f"expected one sample run (a folder with {RECORD_JSON}) in {task_dir}, "
                         f"found {len(found)}")
    return found[0].parent


def task_samples(task_dir, frames, per_clip):
    """(samples (N, S, T, H, W, C), gt (N, T, H, W, C)) of the sample run in task_dir, read and
    checked as video_eval.py reads a run folder (its record is the one asked for: `frames` given,
    `per_clip` samples per clip; its gt_ file is clip-major), and every sample shows its clip's
    given frames exactly (the sampler copies them; a mix-up of files would not)."""
    files = [find_sample_file(sample_run(task_dir))]
    resolve_settings(files, PROTOCOLS["custom"], frames, per_clip)
    samples, gt, gt_path = load_samples(files, None, per_clip)
    if not (samples[:, :, frames] == gt[:, None, frames]).all():
        raise UsageError(f"{files[0][0]}: samples do not show their clips' given frames "
                         f"{frames} of {gt_path}")
    return samples, gt


def common_truth(truths):
    """The one ground truth (N, T, H, W, C) of several models' samples ({label: truth}): scores
    are comparable only when every model was sampled on the same clips."""
    (first_label, first), *others = truths.items()
    for label, gt in others:
        if not np.array_equal(gt, first):
            raise UsageError(f"{label} and {first_label} were sampled on different clips "
                             f"({gt.shape} vs {first.shape} or other pixels); their scores "
                             "would not be comparable")
    return first


def training_reference(train_dir):
    """uint8 (M, T, H, W, C): the first 256 training clips as the model sees them (after the
    data loader's resizing), for the mean-frame baseline."""
    import torch

    from ..data import VideoClipDataset
    from ..sample.batch import to_uint8

    dataset = VideoClipDataset(train_dir, DEMO_DATA["image_size"], DEMO_DATA["num_frames"])
    return to_uint8(torch.stack([dataset[i][0] for i in range(min(256, len(dataset)))]))


# ----------------------------------------------------------------------------- table and plot
def format_table(rows, tasks):
    """A fixed-width text table: one row per (label, {task: {"psnr", "ssim"} or None}), PSNR
    and SSIM per task; '-' where a method does not apply to a task."""
    lines = [["method"] + [c for task in tasks for c in (task, "")],
             [""] + ["PSNR dB", "SSIM"] * len(tasks)]
    for label, by_task in rows:
        lines.append([label] + [c for task in tasks for c in (
            ("-", "-") if by_task.get(task) is None
            else (f"{by_task[task]['psnr']:.2f}", f"{by_task[task]['ssim']:.3f}"))])
    widths = [max(map(len, column)) for column in zip(*lines)]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def read_progress(path):
    """progress.csv or preview.csv -> {column: float array}; empty cells are NaN."""
    rows = np.atleast_1d(np.genfromtxt(path, delimiter=",", names=True))
    if rows.dtype.names is None or not len(rows):
        raise ValueError(f"{path} holds no logged steps")
    return {name: rows[name] for name in rows.dtype.names}


def plot_training_loss(progress_csv, png_path, title="training loss", preview_csv=None):
    """Save a PNG of the loss against the step: the total and the four timestep quartiles
    (q0 = least noise); with `preview_csv` (written by --sample_interval) a second panel shows
    the held-out PSNR of the previews beside copy-last. Returns the path."""
    from matplotlib.figure import Figure  # not pyplot: no display, no backend to choose

    columns = read_progress(progress_csv)
    previews = read_progress(preview_csv) if preview_csv and Path(preview_csv).is_file() else None
    fig = Figure(figsize=(10 if previews else 6, 3.6), dpi=120)
    axes = fig.subplots(1, 2 if previews else 1, squeeze=False)
    ax = axes[0, 0]
    ax.plot(columns["step"], columns["loss"], color="black", lw=2, label="loss (all t)")
    for q in range(4):
        if np.isfinite(columns.get(f"loss_q{q}", np.nan)).any():
            ax.plot(columns["step"], columns[f"loss_q{q}"], lw=1, alpha=0.8,
                    label=f"t quartile {q}" + (" (least noise)" if q == 0 else ""))
    ax.set(yscale="log", xlabel="step", ylabel="MSE (frames not given)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    if previews:
        ax = axes[0, 1]
        for task, color in (("prediction", "tab:blue"), ("infilling", "tab:orange")):
            ax.plot(previews["step"], previews[f"psnr_{task}"], "o-", color=color,
                    label=f"{task}: model")
            ax.plot(previews["step"], previews[f"psnr_{task}_copy_last"], "--", color=color,
                    label=f"{task}: copy last given")
        ax.set(xlabel="step", ylabel="PSNR dB (held-out previews)",
               title="held-out previews (EMA weights, DDIM "
               f"{PREVIEW_RESPACING.removeprefix('ddim')} steps)")
        ax.grid(True, alpha=0.3)
    for ax in axes[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path)
    return Path(png_path)


# ----------------------------------------------------------------------------- the summary
def summarise(cfg, checkpoints, labels, timings, start):
    """Check and score the samples of both checkpoints ({source: path}, named by `labels`)
    against the baselines, write metrics.json, the loss plot and the grids, and print the table
    and where everything is."""
    reference = training_reference(cfg.data_dir / "train")
    # {task: {method: scores}}, {task: {method: one video per clip}}, {task: truth}
    scores, videos, truths = {}, {}, {}
    for task in ("prediction", "infilling"):
        ours, truth = {}, {}
        for source in SOURCES:
            ours[labels[source]], truth[labels[source]] = task_samples(
                cfg.run_dir / source / task, TASKS[task], cfg.samples_per_clip)
        truths[task] = common_truth(truth)
        scores[task], videos[task] = score_task(ours, truths[task], TASKS[task], reference)
    retrain_shown = f"OMP_NUM_THREADS={RETRAIN_THREADS} " + shown(retrain_command(cfg.data_dir))
    train_dir = cfg.run_dir / "train"
    plot = plot_training_loss(train_dir / PROGRESS_CSV, cfg.run_dir / "training_loss.png",
                              title=f"this run: demo preset, {cfg.max_steps} steps",
                              preview_csv=train_dir / PREVIEW_CSV)
    progress = read_progress(train_dir / PROGRESS_CSV)
    loss, tenth = progress["loss"], max(1, len(progress["loss"]) // 10)
    train = {"steps": int(progress["step"][-1]), "loss_first_10pct": float(loss[:tenth].mean()),
             "loss_last_10pct": float(loss[-tenth:].mean()),
             "samples_per_s": float(progress["samples_per_s"][-1])}
    files = {"run": cfg.run_dir, "loss plot": plot, "metrics": cfg.run_dir / "metrics.json",
             "short run: checkpoints, logs": train_dir,
             "short run: previews": train_dir / PREVIEW_CSV.parent}
    # Per task the truth of 8 clips, both models and the baselines that fill frames from the
    # given ones; a frame strip of prediction, clip by clip; given frames outlined.
    for task, by_method in videos.items():
        methods = [labels[s] for s in SOURCES] + [m for m in (LINEAR, COPY_LAST) if m in by_method]
        stack = np.concatenate([truths[task][:8]] + [by_method[name][:8] for name in methods])
        files[f"{task} vs truth gif"] = save_video_grid(
            cfg.run_dir / f"{task}_vs_truth.gif", stack, cond_frames=TASKS[task], fps=3,
            columns=min(8, len(truths[task])))
    prediction = videos["prediction"]
    strip = np.stack([v for i in range(3) for v in (
        truths["prediction"][i], prediction[labels["shipped"]][i], prediction[COPY_LAST][i])])
    files["prediction frame strip"] = save_video_grid(
        cfg.run_dir / "prediction_strip.png", strip, cond_frames=TASKS["prediction"], scale=3)
    unconditional = sample_run(cfg.run_dir / "shipped" / "unconditional")
    files["unconditional npz"] = find_sample_file(unconditional)[0]
    gif = sorted(unconditional.glob("samples_*.gif"))
    if gif:
        files["unconditional gif"] = gif[0]
    timings["total_s"] = time.time() - start
    gains = {labels[source]: margins(scores, labels[source]) for source in SOURCES}
    write_json(cfg.run_dir / "metrics.json", {
        "config": asdict(cfg), "checkpoints": {labels[k]: v for k, v in checkpoints.items()},
        "shipped_checkpoint_command": retrain_shown, "training": train, "timings_s": timings,
        "scores": scores, "margins": gains, "files": files})

    print(f"\nPSNR / SSIM over the generated frames of {cfg.num_test} held-out clips (given "
          f"frames excluded; higher is better; {cfg.samples_per_clip} samples per clip):\n")
    rows = []
    for label in (labels[source] for source in SOURCES):
        rows.append((f"{label}: one sample", {t: s[label] for t, s in scores.items()}))
        rows.append((f"{label}: best of {cfg.samples_per_clip}",
                     {t: {"psnr": s[label]["psnr_best"], "ssim": s[label]["ssim_best"]}
                      for t, s in scores.items()}))
    rows += [(method, {t: s.get(method) for t, s in scores.items()}) for method in BASELINES]
    print(format_table(rows, list(scores)))
    print()
    for label, by_task in gains.items():
        for task, gain in by_task.items():
            line = (f"{label}, {task}: {gain['psnr_gain_over_copy_last_db']:+.2f} dB "
                    f"PSNR, {gain['ssim_gain_over_copy_last']:+.3f} SSIM over {COPY_LAST}")
            if "psnr_gain_over_linear_db" in gain:
                line += (f"; {gain['psnr_gain_over_linear_db']:+.2f} dB, "
                         f"{gain['ssim_gain_over_linear']:+.3f} SSIM over {LINEAR}")
            print(line)
    print(f"this run: training loss {train['loss_first_10pct']:.3f} -> "
          f"{train['loss_last_10pct']:.3f} over {train['steps']} steps")
    print(f"the shipped checkpoint was trained by: {retrain_shown}")
    sampling = sum(v for k, v in timings.items() if k.startswith("sample_"))
    print(f"time: data {timings['data_s']:.0f} s, training {timings['train_s']:.0f} s, sampling "
          f"{sampling:.0f} s, total {timings['total_s']:.0f} s\n")
    width = max(len(k) for k in files)
    for name, path in files.items():
        print(f"  {name.ljust(width)}  {path}")
    print("\nopen the gifs (rows: truth, shipped checkpoint, this run, baselines; "
          "red outline = given frame)")


def banner(text):
    print(f"\n== {text}", flush=True)


def main(argv=None):
    with user_errors():
        args = parse_args(argv)
        cfg = DemoConfig(
            run_dir=Path(args.out_dir or REPO / "runs" / time.strftime("demo-%Y%m%d-%H%M%S")),
            data_dir=Path(args.data_dir), max_steps=args.max_steps, num_test=args.num_test,
            samples_per_clip=args.samples_per_clip, num_unconditional=16, seed=args.seed,
            procs=args.procs, respacing=args.timestep_respacing, eta=args.eta,
            sample_interval=min(args.sample_interval, args.max_steps))
        start, timings = time.time(), {}
        shipped = None if args.retrain else verified_checkpoint()  # checked before any work
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        print(f"ramvid demo -> {cfg.run_dir}", flush=True)

        banner(f"1/4 synthetic clips ({cfg.num_test} held-out test clips) in {cfg.data_dir}")
        timings["data_s"], reused = prepare_data(cfg)
        print("reused the clips drawn by an earlier demo" if reused
              else f"drawn in {timings['data_s']:.1f} s", flush=True)
        if args.retrain:
            folder = cfg.run_dir / "retrain"
            banner(f"retraining the shipped checkpoint ({SHIPPED_STEPS} steps, {RETRAIN_THREADS} "
                   f"thread(s), {RETRAIN_MINUTES}; log: {folder})")
            shipped = train("retraining", retrain_command(cfg.data_dir), RETRAIN_THREADS, folder,
                            SHIPPED_STEPS, timings)
            print("identical to the shipped checkpoint (sha256)"
                  if sha256_of(shipped) == SHIPPED_SHA256 else
                  "differs from the shipped checkpoint (another torch build or CPU rounds "
                  "differently); the demo continues with the retrained one", flush=True)

        beside = Path(sys.executable).parent / "mpirun"  # the venv's MPICH, else one on PATH
        mpirun = str(beside) if beside.exists() else shutil.which("mpirun")
        if mpirun is None and cfg.procs > 1:
            print("note: mpirun not found; training and sampling run as one process with "
                  f"{cfg.procs} threads instead of {cfg.procs} ranks", flush=True)
        prefix = launch_prefix(cfg.procs, mpirun)
        threads = 1 if len(prefix) > 1 else cfg.procs
        banner(f"2/4 training the `demo` preset from scratch for {cfg.max_steps} steps "
               f"(log: {cfg.run_dir / 'train'})")
        this_run = train("training", short_run_command(cfg, prefix), threads,
                         cfg.run_dir / "train", cfg.max_steps, timings)

        banner(f"3/4 sampling held-out clips with {cfg.respacing} (eta {cfg.eta:g}), "
               f"{cfg.samples_per_clip} samples per clip, EMA weights")
        checkpoints = {"shipped": shipped, "this_run": this_run}
        for source, checkpoint in checkpoints.items():
            # The better model's unconditional videos are the ones to look at.
            for task in TASKS if source == "shipped" else ("prediction", "infilling"):
                seconds = run_step(f"sampling ({source}, {task})",
                                   sample_command(cfg, prefix, checkpoint, task), threads,
                                   cfg.run_dir / source / task)
                timings[f"sample_{source}_{task}_s"] = seconds
                print(f"{source} {task}: {seconds:.0f} s", flush=True)

        banner("4/4 scoring against baselines on the same held-out clips")
        shipped_label = "retrained" if args.retrain else "shipped"
        labels = {"shipped": f"RaMViD, {shipped_label} checkpoint ({SHIPPED_STEPS} steps)",
                  "this_run": f"RaMViD, this run ({cfg.max_steps} steps)"}
        summarise(cfg, checkpoints, labels, timings, start)
        return 0
