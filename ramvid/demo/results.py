"""Scoring the demo's samples: load the npz files, run the baselines on the same clips, write
the comparison grids and the frame strip, and gather everything for the table and metrics.json."""
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..metrics.frame_metrics import copy_last_given, linear_interpolation, mean_frame
from ..video_io import save_video_grid
from .report import score_task

COPY_LAST = "copy last given"
LINEAR = "linear interp."
MEAN = "mean frame"
BASELINES = (COPY_LAST, LINEAR, MEAN)


def training_reference(train_dir, image_size, seq_len, limit=256):
    """uint8 (M, T, H, W, C): the first `limit` training clips as the model sees them (after the
    data loader's resizing), for the mean-frame baseline."""
    import torch

    from ..data import VideoClipDataset
    from ..sample.batch import to_uint8

    dataset = VideoClipDataset(train_dir, image_size, seq_len)
    clips = [dataset[i][0] for i in range(min(limit, len(dataset)))]
    return to_uint8(torch.stack(clips))


def load_videos(path):
    with np.load(path) as data:
        return data["arr_0"]


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
    return score_task(gt, mask, methods), videos


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


__all__ = ["BASELINES", "COPY_LAST", "LINEAR", "MEAN", "baseline_videos", "common_truth",
           "comparison_grid", "grouped_samples", "load_videos", "margins",
           "score_conditional_task", "training_reference"]
