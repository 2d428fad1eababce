"""What the demo shows at the end: a table of frame metrics (model vs baselines), metrics.json and
a plot of the training loss.

Scores follow ramvid.metrics.frame_metrics: PSNR and SSIM of every generated frame against the
ground truth (given frames are left out, since a sampler copies them), averaged per clip and
then over clips. Each method contributes one video per clip, so best-of-N = mean-of-N here.
"""
import csv
import json
import math
from pathlib import Path

import numpy as np

from ..metrics import frame_metrics


def score(videos, gt, given):
    """PSNR (dB) and SSIM of `videos` against `gt` (both uint8 (N, T, H, W, C)) over the frames
    that are not given (`given`: bool (T,) or (N, T))."""
    result = frame_metrics(np.asarray(videos)[:, None], gt, given)
    return {"psnr": result["psnr_mean"], "ssim": result["ssim_mean"],
            "psnr_per_clip": result["per_clip"]["psnr_mean"].tolist(),
            "ssim_per_clip": result["per_clip"]["ssim_mean"].tolist()}


def score_task(gt, given, methods):
    """{method: score(...)} for every {method: videos} on the same clips and given frames."""
    return {name: score(videos, gt, given) for name, videos in methods.items()}


def format_table(tasks, methods):
    """A fixed-width text table: one row per task, PSNR / SSIM per method; '-' where a method
    was not run on a task. `tasks`: {task: {method: {"psnr", "ssim"}}}."""
    header = ["task"] + list(methods)
    rows = [header, [""] + ["PSNR dB / SSIM"] * len(methods)]
    for task, scores in tasks.items():
        cells = [task]
        for method in methods:
            s = scores.get(method)
            cells.append("-" if s is None else f"{s['psnr']:5.2f} / {s['ssim']:.3f}")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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


def plot_training_loss(progress_csv, png_path, title="training loss"):
    """Save a PNG of the loss against the step: the total and the four timestep quartiles
    (q0 = least noise). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a laptop terminal or a CI box
    import matplotlib.pyplot as plt

    columns = read_progress(progress_csv)
    step = columns["step"]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
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
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)


def write_metrics_json(path, metrics):
    Path(path).write_text(json.dumps(metrics, indent=2) + "\n")
    return Path(path)


__all__ = ["format_table", "plot_training_loss", "read_progress", "score", "score_task",
           "write_metrics_json"]
