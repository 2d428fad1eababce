"""What the demo shows at the end: a table of frame metrics (model vs baselines), metrics.json and
a plot of the training loss.

Scores follow ramvid.metrics.frame_metrics: PSNR and SSIM of every generated frame against the
ground truth (given frames are left out, since a sampler copies them), averaged per clip and
then over clips. With N samples per clip, "one sample" is the mean over the N samples (what one
sample scores on average) and "best of N" takes each clip's best sample, as papers report.
"""
import csv
import json
import math
from pathlib import Path

import numpy as np

from ..metrics import frame_metrics


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


def score_task(gt, given, methods):
    """{method: score(...)} for every {method: samples (N, S, ...)} on the same clips."""
    return {name: score(samples, gt, given) for name, samples in methods.items()}


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


def write_metrics_json(path, metrics):
    Path(path).write_text(json.dumps(metrics, indent=2) + "\n")
    return Path(path)


__all__ = ["format_table", "plot_training_loss", "read_progress", "score", "score_task",
           "write_metrics_json"]
