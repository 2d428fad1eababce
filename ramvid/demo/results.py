"""Scoring the demo's samples: load the npz files, run the baselines on the same clips, write
the comparison grids, and gather everything for the table and metrics.json."""
from pathlib import Path

import numpy as np

from ..video_grid import save_video_grid
from .baselines import copy_last_given, linear_interpolation, mean_frame
from .report import score_task

OURS = "RaMViD (ours)"
COPY_LAST = "copy last given"
LINEAR = "linear interp."
MEAN = "mean frame"
METHODS = (OURS, COPY_LAST, LINEAR, MEAN)


def training_reference(train_dir, image_size, seq_len, limit=256):
    """uint8 (M, T, H, W, C): the first `limit` training clips as the model sees them (after the
    data loader's resizing), for the mean-frame baseline."""
    import torch

    from ..data import VideoClipDataset
    from ..sample.output import to_uint8

    dataset = VideoClipDataset(train_dir, image_size, seq_len)
    clips = [dataset[i][0] for i in range(min(limit, len(dataset)))]
    return to_uint8(torch.stack(clips))


def load_videos(path):
    with np.load(path) as data:
        return data["arr_0"]


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


def score_conditional_task(samples, gt, given_frames, reference):
    """Scores of our samples and the baselines on the same clips: ({method: scores}, videos)."""
    if samples.shape != gt.shape:
        raise ValueError(f"samples {samples.shape} and ground truth {gt.shape} differ in shape")
    baselines, mask = baseline_videos(gt, given_frames, reference)
    videos = {OURS: samples, **baselines}
    return score_task(gt, mask, videos), videos


def comparison_grid(path, gt, videos, given_frames, rows=(OURS, COPY_LAST), count=8, fps=3):
    """An animated grid: first row the ground truth of `count` clips, then one row per method
    in `rows`; given frames are outlined. Returns the path."""
    stack = [gt[:count]] + [videos[name][:count] for name in rows if name in videos]
    return save_video_grid(Path(path), np.concatenate(stack), cond_frames=given_frames, fps=fps,
                           columns=min(count, len(gt)))


def margins(scores):
    """PSNR / SSIM of ours minus the best baseline, per task: {task: {...}}."""
    out = {}
    for task, by_method in scores.items():
        baselines = {k: v for k, v in by_method.items() if k != OURS}
        best = max(baselines, key=lambda k: baselines[k]["psnr"])
        out[task] = {
            "best_baseline": best,
            "psnr_gain_db": by_method[OURS]["psnr"] - baselines[best]["psnr"],
            "psnr_gain_over_copy_last_db": by_method[OURS]["psnr"] - by_method[COPY_LAST]["psnr"],
            "ssim_gain_over_copy_last": by_method[OURS]["ssim"] - by_method[COPY_LAST]["ssim"],
        }
    return out


__all__ = ["COPY_LAST", "LINEAR", "MEAN", "METHODS", "OURS", "baseline_videos",
           "comparison_grid", "load_videos", "margins", "score_conditional_task",
           "training_reference"]
