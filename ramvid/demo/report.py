"""What the demo shows at the end: its samples scored against simple baselines on the same clips,
a table, metrics.json, a plot of the training loss, comparison gifs and a frame strip.

Scores follow ramvid.metrics.frame_metrics: PSNR and SSIM of every generated frame against the
ground truth (given frames are left out, since a sampler copies them), averaged per clip and
then over clips. With N samples per clip, "one sample" is the mean over the N samples (what one
sample scores on average) and "best of N" takes each clip's best sample, as papers report.
"""
import csv
import math
import time
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..flags import write_json
from ..metrics.frame_metrics import copy_last_given, frame_metrics, linear_interpolation, mean_frame
from ..sample.files import read_npz
from ..video_io import save_video_grid

COPY_LAST = "copy last given"
LINEAR = "linear interp."
MEAN = "mean frame"
BASELINES = (COPY_LAST, LINEAR, MEAN)
SOURCES = ("shipped", "this_run")  # run_dir/<source>/<task>: which checkpoint sampled it


# ----------------------------------------------------------------------------- scores
def score(samples, gt, given):
    """PSNR (dB) and SSIM of `samples` (uint8 (N, S, T, H, W, C): S samples per clip) against
    `gt` (uint8 (N, T, H, W, C)) over the frames that are not given (`given`: bool (T,) or
    (N, T)): the one-sample mean, best of S, and per clip."""
    result = frame_metrics(np.asarray(samples), gt, given)
    return {"psnr": result["psnr_mean"], "ssim": result["ssim_mean"],
            "psnr_best": result["psnr_best"], "ssim_best": result["ssim_best"],
            "samples_per_clip": result["samples_per_clip"],
            "psnr_per_clip": result["per_clip"]["psnr_mean"].tolist(),
            "ssim_per_clip": result["per_clip"]["ssim_mean"].tolist()}


def baseline_videos(gt, given_frames, reference):
    """{method: uint8 (N, T, H, W, C)} for the baselines that apply to these given frames;
    linear interpolation only where a missing frame lies between two given frames."""
    mask = np.zeros(gt.shape[1], dtype=bool)
    mask[given_frames] = True
    out = {COPY_LAST: copy_last_given(gt, mask)}
    inside = np.arange(gt.shape[1])[~mask]
    if ((inside > min(given_frames)) & (inside < max(given_frames))).any():
        out[LINEAR] = linear_interpolation(gt, mask)
    out[MEAN] = mean_frame(gt, mask, reference)
    return out, mask


def score_conditional_task(ours, gt, given_frames, reference):
    """Scores of our samples ({method: (N, S, T, H, W, C)}) and the baselines on the same clips:
    ({method: scores}, {method: one video per clip})."""
    baselines, mask = baseline_videos(gt, given_frames, reference)
    methods = {**ours, **{name: videos[:, None] for name, videos in baselines.items()}}
    videos = {name: videos[:, 0] for name, videos in methods.items()}
    return {name: score(samples, gt, mask) for name, samples in methods.items()}, videos


def margins(scores, ours):
    """PSNR / SSIM of `ours` (one-sample mean) minus the baselines, per task: {task: {...}}."""
    out = {}
    for task, by_method in scores.items():
        baselines = {k: v for k, v in by_method.items() if k in BASELINES}
        best = max(baselines, key=lambda k: baselines[k]["psnr"])
        mine = by_method[ours]
        out[task] = {
            "best_baseline": best,
            "psnr_gain_over_best_baseline_db": mine["psnr"] - baselines[best]["psnr"],
            "psnr_gain_over_copy_last_db": mine["psnr"] - baselines[COPY_LAST]["psnr"],
            "ssim_gain_over_copy_last": mine["ssim"] - baselines[COPY_LAST]["ssim"],
        }
        if LINEAR in baselines:
            out[task]["psnr_gain_over_linear_db"] = mine["psnr"] - baselines[LINEAR]["psnr"]
            out[task]["ssim_gain_over_linear"] = mine["ssim"] - baselines[LINEAR]["ssim"]
    return out


# ----------------------------------------------------------------------------- the samples
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


def training_reference(train_dir, image_size, seq_len, limit=256):
    """uint8 (M, T, H, W, C): the first `limit` training clips as the model sees them (after the
    data loader's resizing), for the mean-frame baseline."""
    import torch

    from ..data import VideoClipDataset
    from ..sample.batch import to_uint8

    dataset = VideoClipDataset(train_dir, image_size, seq_len)
    clips = [dataset[i][0] for i in range(min(limit, len(dataset)))]
    return to_uint8(torch.stack(clips))


def grouped_samples(samples, gt, given_frames, per_clip):
    """Samples (N * S, T, H, W, C) in clip-major order and their ground truth (one row per
    sample) -> (samples (N, S, T, H, W, C), gt (N, T, H, W, C)).

    Checks what a silent mix-up would break: each clip's S truth rows are one clip, and every
    sample shows its clip's given frames exactly (the sampler copies them)."""
    if samples.shape != gt.shape or len(samples) % per_clip:
        raise UsageError(f"samples {samples.shape} and ground truth {gt.shape} do not form "
                         f"groups of {per_clip} samples per clip")
    samples = samples.reshape(-1, per_clip, *samples.shape[1:])
    gt = gt.reshape(-1, per_clip, *gt.shape[1:])
    if not (gt == gt[:, :1]).all():
        raise UsageError("the ground truth of one clip's samples differs: the sample order is "
                         "not clip-major")
    if not (samples[:, :, given_frames] == gt[:, :, given_frames]).all():
        raise UsageError("samples do not show their clips' given frames")
    return samples, gt[:, 0]


def common_truth(truths):
    """The one ground truth (N, T, H, W, C) of several models' samples ({label: truth}): scores
    are comparable only when every model was sampled on the same clips."""
    (first_label, first), *others = truths.items()
    for label, gt in others:
        if gt.shape != first.shape or not np.array_equal(gt, first):
            raise UsageError(f"{label} and {first_label} were sampled on different clips "
                             f"({gt.shape} vs {first.shape} or other pixels); their scores "
                             "would not be comparable")
    return first


def score_tasks(cfg, labels):
    """({task: {method: scores}}, {task: {method: one video per clip}}, {task: truth})."""
    reference = training_reference(cfg.data_dir / "train", cfg.image_size, cfg.seq_len)
    scores, videos, truths = {}, {}, {}
    for task in cfg.tasks:
        frames = cfg.given_frames(task)
        if frames is None:
            continue
        ours, truth = {}, {}
        for source in SOURCES:
            samples_path, gt_path = sample_files(cfg.run_dir / source / task)
            label = labels[source]
            ours[label], truth[label] = grouped_samples(
                read_npz(samples_path)[0], read_npz(gt_path)[0], frames, cfg.samples_per_clip)
        gt = common_truth(truth)
        scores[task], videos[task] = score_conditional_task(ours, gt, frames, reference)
        truths[task] = gt
    return scores, videos, truths


# ----------------------------------------------------------------------------- table, plot, grids
def format_table(rows, tasks):
    """A fixed-width text table: one row per (label, {task: {"psnr", "ssim"} or None}), PSNR
    and SSIM per task; '-' where a method does not apply to a task."""
    lines = [["method"] + [f"{task}" for task in tasks for _ in (0, 1)],
             [""] + ["PSNR dB", "SSIM"] * len(tasks)]
    for label, by_task in rows:
        cells = [label]
        for task in tasks:
            s = by_task.get(task)
            cells += ["-", "-"] if s is None else [f"{s['psnr']:.2f}", f"{s['ssim']:.3f}"]
        lines.append(cells)
    lines[0][2::2] = [""] * len(tasks)  # each task names its two columns once
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def table_rows(scores, labels, per_clip):
    rows = []
    for source in SOURCES:
        label = labels[source]
        rows.append((f"{label}: one sample", {t: s[label] for t, s in scores.items()}))
        rows.append((f"{label}: best of {per_clip}",
                     {t: {"psnr": s[label]["psnr_best"], "ssim": s[label]["ssim_best"]}
                      for t, s in scores.items()}))
    for method in BASELINES:
        rows.append((method, {t: s.get(method) for t, s in scores.items()}))
    return rows


def read_progress(path):
    """progress.csv -> {column: np.array of floats} (empty cells become NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} holds no logged steps")

    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return math.nan

    return {name: np.array([number(row[name]) for row in rows]) for name in rows[0]}


def training_summary(progress_csv):
    columns = read_progress(progress_csv)
    head = columns["loss"][: max(1, len(columns["loss"]) // 10)]
    tail = columns["loss"][-max(1, len(columns["loss"]) // 10):]
    return {"steps": int(columns["step"][-1]), "loss_first_10pct": float(head.mean()),
            "loss_last_10pct": float(tail.mean()),
            "samples_per_s": float(columns["samples_per_s"][-1])}


def plot_training_loss(progress_csv, png_path, title="training loss", preview_csv=None):
    """Save a PNG of the loss against the step: the total and the four timestep quartiles
    (q0 = least noise); with `preview_csv` (written by --sample_interval) a second panel shows
    the held-out PSNR of the previews beside copy-last. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a laptop terminal or a CI box
    import matplotlib.pyplot as plt

    columns = read_progress(progress_csv)
    step = columns["step"]
    previews = read_progress(preview_csv) if preview_csv and Path(preview_csv).is_file() else None
    fig, axes = plt.subplots(1, 2 if previews else 1, figsize=(10 if previews else 6, 3.6),
                             dpi=120, squeeze=False)
    ax = axes[0, 0]
    ax.plot(step, columns["loss"], color="black", lw=2, label="loss (all t)")
    for q in range(4):
        name = f"loss_q{q}"
        if name in columns and np.isfinite(columns[name]).any():
            label = f"t quartile {q}" + (" (least noise)" if q == 0 else "")
            ax.plot(step, columns[name], lw=1, alpha=0.8, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (frames not given)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    if previews:
        right = axes[0, 1]
        for task, color in (("prediction", "tab:blue"), ("infilling", "tab:orange")):
            right.plot(previews["step"], previews[f"psnr_{task}"], "o-", color=color,
                       label=f"{task}: model")
            right.plot(previews["step"], previews[f"psnr_{task}_copy_last"], "--", color=color,
                       label=f"{task}: copy last given")
        right.set_xlabel("step")
        right.set_ylabel("PSNR dB (held-out previews)")
        right.set_title("held-out previews (EMA weights, DDIM 10 steps)")
        right.grid(True, alpha=0.3)
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)


def comparison_grid(path, gt, videos, given_frames, rows, count=8, fps=3):
    """An animated grid (.gif) or a frame strip (.png): first the ground truth of `count`
    clips, then each method in `rows`; given frames outlined. Returns the path."""
    if Path(path).suffix == ".png":  # filmstrip: one row per video, clip by clip
        stack = np.stack([v for i in range(count)
                          for v in [gt[i]] + [videos[name][i] for name in rows]])
        return save_video_grid(Path(path), stack, cond_frames=given_frames, scale=3)
    stack = [gt[:count]] + [videos[name][:count] for name in rows]
    return save_video_grid(Path(path), np.concatenate(stack), cond_frames=given_frames, fps=fps,
                           columns=min(count, len(gt)))


def write_grids(cfg, labels, videos, truths):
    """Comparison gifs per task and one png frame strip of prediction; {name: path}."""
    files = {}
    for task, by_method in videos.items():
        rows = [labels[s] for s in SOURCES] + [m for m in (LINEAR, COPY_LAST) if m in by_method]
        files[f"{task} vs truth gif"] = comparison_grid(
            cfg.run_dir / f"{task}_vs_truth.gif", truths[task], by_method,
            cfg.given_frames(task), rows)
    rows = [labels["shipped"], COPY_LAST]
    files["prediction frame strip"] = comparison_grid(
        cfg.run_dir / "prediction_strip.png", truths["prediction"], videos["prediction"],
        cfg.given_frames("prediction"), rows, count=3)
    return files


# ----------------------------------------------------------------------------- the summary
def files_written(cfg, grids, plot):
    files = {"run": cfg.run_dir, "loss plot": plot, "metrics": cfg.run_dir / "metrics.json",
             "short run: checkpoints, logs": cfg.run_dir / "train",
             "short run: previews": cfg.run_dir / "train" / "preview"}
    files.update(grids)
    samples, _ = sample_files(cfg.run_dir / "shipped" / "unconditional")
    files["unconditional npz"] = samples
    unconditional = sorted((cfg.run_dir / "shipped" / "unconditional").rglob("samples_*.gif"))
    if unconditional:
        files["unconditional gif"] = unconditional[0]
    return files


def summarise(cfg, checkpoints, labels, timings, start, retrain_shown):
    """Score the samples of both checkpoints ({source: path}, named by `labels`), write
    metrics.json, the loss plot and the grids, and print the table and where everything is."""
    scores, videos, truths = score_tasks(cfg, labels)
    train_dir = cfg.run_dir / "train"
    plot = plot_training_loss(train_dir / "progress.csv", cfg.run_dir / "training_loss.png",
                              title=f"this run: demo preset, {cfg.max_steps} steps",
                              preview_csv=train_dir / "preview" / "preview.csv")
    train = training_summary(train_dir / "progress.csv")
    grids = write_grids(cfg, labels, videos, truths)
    timings["total_s"] = time.time() - start
    gains = {source: margins(scores, labels[source]) for source in SOURCES}
    table = format_table(table_rows(scores, labels, cfg.samples_per_clip), list(scores))
    files = files_written(cfg, grids, plot)

    write_json(cfg.run_dir / "metrics.json", {
        "config": cfg.to_json(), "checkpoints": {labels[k]: str(v) for k, v in checkpoints.items()},
        "shipped_checkpoint_command": retrain_shown, "training": train, "timings_s": timings,
        "scores": scores, "margins": {labels[k]: v for k, v in gains.items()},
        "files": {k: str(v) for k, v in files.items()},
    })

    print(f"\nPSNR / SSIM over the generated frames of {cfg.num_test} held-out clips (given "
          f"frames excluded; higher is better; {cfg.samples_per_clip} samples per clip):\n")
    print(table)
    print()
    for source in SOURCES:
        for task, gain in gains[source].items():
            line = (f"{labels[source]}, {task}: {gain['psnr_gain_over_copy_last_db']:+.2f} dB "
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
