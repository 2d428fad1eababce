"""Simple non-learned predictors that a video model must beat on the same clips.

Every baseline fills the frames that were not given (``given`` False) from the given ones
(or, for the mean frame, from the training set) and returns videos in the layout of the sample
npz files: uint8 (N, T, H, W, C). Given frames are copied unchanged, exactly as a sampler does,
so the frame metrics (which skip given frames) compare only what each method made.
"""
import numpy as np


def _check(videos, given):
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.dtype != np.uint8:
        raise ValueError(f"videos must be uint8 (N, T, H, W, C), got {videos.dtype} {videos.shape}")
    n, t = videos.shape[:2]
    mask = np.broadcast_to(np.asarray(given, dtype=bool), (n, t))
    if not mask.any(axis=1).all():
        raise ValueError("every video needs at least one given frame")
    return videos, mask


def nearest_given(mask):
    """For a bool (T,) mask: (previous, following) given frame of every frame, -1 where none.
    A given frame is its own previous and following frame."""
    num_frames = len(mask)
    previous = np.full(num_frames, -1)
    following = np.full(num_frames, -1)
    last = -1
    for t in range(num_frames):
        last = t if mask[t] else last
        previous[t] = last
    nxt = -1
    for t in reversed(range(num_frames)):
        nxt = t if mask[t] else nxt
        following[t] = nxt
    return previous, following


def copy_last_given(videos, given):
    """Every frame repeats the latest given frame before it (the first given frame when none
    precedes it): the "nothing moves" guess."""
    videos, mask = _check(videos, given)
    out = videos.copy()
    for i, row in enumerate(mask):
        previous, following = nearest_given(row)
        source = np.where(previous >= 0, previous, following)
        out[i] = videos[i, source]
    return out


def linear_interpolation(videos, given):
    """Each frame between two given frames blends them linearly in time (pixel-wise cross-fade);
    before the first / after the last given frame it holds that frame. With only leading given
    frames (prediction) this equals `copy_last_given`."""
    videos, mask = _check(videos, given)
    out = videos.copy()
    for i, row in enumerate(mask):
        previous, following = nearest_given(row)
        for t in np.flatnonzero(~row):
            a, b = previous[t], following[t]
            if a < 0 or b < 0:
                out[i, t] = videos[i, b if a < 0 else a]
                continue
            w = (t - a) / (b - a)
            blend = (1 - w) * videos[i, a].astype(np.float64) + w * videos[i, b]
            out[i, t] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return out


def mean_frame(videos, given, reference):
    """Every missing frame is the per-pixel mean frame of `reference` (uint8 (M, T, H, W, C),
    e.g. the training clips): the best constant guess that ignores the clip itself."""
    videos, mask = _check(videos, given)
    reference = np.asarray(reference)
    if reference.ndim != 5 or reference.shape[2:] != videos.shape[2:]:
        raise ValueError(
            f"reference clips {reference.shape} must share H, W, C with {videos.shape}")
    average = np.rint(reference.reshape(-1, *reference.shape[2:]).mean(axis=0, dtype=np.float64))
    out = videos.copy()
    out[~mask] = average.astype(np.uint8)
    return out


__all__ = ["copy_last_given", "linear_interpolation", "mean_frame", "nearest_given"]
