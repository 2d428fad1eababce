"""Videos longer than the model's window: plan windows of seq_len frames, then sample them in turn.

A plan is a list of `Window`s. Each names the video frames its seq_len positions stand for,
which of them are already known (given to the model as clean frames) and which of the new ones
are written back into the video. Planning is pure index arithmetic, so it is tested on its own;
`rollout` runs a plan with the model. docs/SAMPLING.md#long-videos describes the two schemes.
"""
from dataclasses import dataclass

import numpy as np
import torch

from .batch import SamplerOptions, model_video_shape, sample_batch

SCHEMES = ("autoregressive", "hierarchical")


@dataclass(frozen=True)
class LongSettings:
    """video_sample_long.py's flags of the same names, their defaults resolved."""

    total_length: int
    scheme: str
    max_cond_frames: int
    prediction_step: int  # new frames kept per autoregressive window
    start_frames: int  # known first frames taken from the data clips (0: unconditional start)


@dataclass(frozen=True)
class Window:
    frames: tuple  # video frame index of each window position, increasing, len = seq_len
    obs_mask: tuple  # per position: True = a known frame, given clean
    new_frames: tuple  # video frame indices this window writes back (new, < total_length)


def _window(frames, known, total_length, new_frames=None):
    frames = tuple(int(f) for f in frames)
    obs_mask = tuple(f in known for f in frames)
    if new_frames is None:
        new_frames = tuple(f for f, g in zip(frames, obs_mask) if not g and f < total_length)
    return Window(frames, obs_mask, tuple(new_frames))


def check_long_flags(total_length, seq_len, max_cond_frames, prediction_step, num_start_frames):
    """ValueError naming the flag when the rollout cannot be planned."""
    if total_length < 1:
        raise ValueError(f"total_length={total_length} must be >= 1")
    if not 1 <= max_cond_frames < seq_len:
        raise ValueError(f"max_cond_frames={max_cond_frames} must lie in [1, seq_len={seq_len})")
    if not 1 <= prediction_step <= seq_len - max_cond_frames:
        raise ValueError(f"prediction_step={prediction_step} must lie in [1, seq_len - "
                         f"max_cond_frames = {seq_len - max_cond_frames}]")
    if not 0 <= num_start_frames <= seq_len:
        raise ValueError(f"start_frames={num_start_frames} must lie in [0, seq_len={seq_len}]")


def plan_autoregressive(total_length, seq_len, max_cond_frames, prediction_step, num_start_frames):
    """Windows [first, first + seq_len): the last max_cond_frames known frames, then new ones,
    of which prediction_step are kept. Without start frames the first window is unconditional
    and keeps all its frames. A last window may run past total_length; those frames are dropped."""
    check_long_flags(total_length, seq_len, max_cond_frames, prediction_step, num_start_frames)
    known = num_start_frames
    plan = []
    if known == 0:
        plan.append(_window(range(seq_len), set(), total_length))
        known = min(seq_len, total_length)
    while known < total_length:
        first = known - min(max_cond_frames, known)
        kept = range(known, min(total_length, known + prediction_step))
        plan.append(_window(range(first, first + seq_len), set(range(known)), total_length, kept))
        known = kept.stop
    return plan


def plan_hierarchical(total_length, seq_len, max_cond_frames, num_start_frames):
    """One window of keyframes spread over the whole length (after Harvey et al. 2022, conditioned
    on the last known start frames), then windows of seq_len consecutive frames, each starting
    max_cond_frames before the first missing frame, that fill in between the keyframes (every
    known frame inside a window is given)."""
    check_long_flags(total_length, seq_len, max_cond_frames, 1, num_start_frames)
    start_context = min(max_cond_frames, num_start_frames)
    if total_length - num_start_frames <= seq_len - start_context:
        # Everything fits in one window: the same as one autoregressive step.
        return plan_autoregressive(total_length, seq_len, max_cond_frames,
                                   seq_len - max_cond_frames, num_start_frames)
    known = set(range(num_start_frames))
    context = list(range(num_start_frames - start_context, num_start_frames))
    # Evenly spaced over [first missing, last frame] (one keyframe: the last frame); the
    # spacing exceeds 1, so rounding keeps them distinct.
    num_keyframes = seq_len - start_context
    first_keyframe = num_start_frames if num_keyframes > 1 else total_length - 1
    keyframes = np.round(np.linspace(first_keyframe, total_length - 1, num_keyframes))
    plan = [_window(context + [int(k) for k in keyframes], known, total_length)]
    known |= set(plan[0].new_frames)
    while len(known) < total_length:
        first_missing = min(set(range(total_length)) - known)
        first = min(first_missing - min(max_cond_frames, first_missing), total_length - seq_len)
        plan.append(_window(range(first, first + seq_len), known, total_length))
        known |= set(plan[-1].new_frames)
    return plan


def plan_long_video(long, seq_len):
    """The windows of a long-video job (`long`: its LongSettings)."""
    if long.scheme == "autoregressive":
        return plan_autoregressive(long.total_length, seq_len, long.max_cond_frames,
                                   long.prediction_step, long.start_frames)
    if long.scheme == "hierarchical":
        return plan_hierarchical(long.total_length, seq_len, long.max_cond_frames,
                                 long.start_frames)
    raise ValueError(f"scheme={long.scheme!r} is not one of: {', '.join(SCHEMES)}")


def rollout(model, diffusion, plan, generators, total_length, *, start=None, y=None,
            options=SamplerOptions(), callback=None):
    """Run `plan`: float (n, C, total_length, H, W) on the CPU.

    start: the known first frames, float (n, C, k, H, W) in [-1, 1] (k = the plan's start
    frames); y: class labels (n,). Each sample's generator carries on from window to window,
    so a sample depends on its seed only.
    """
    channels, _, height, width = model_video_shape(model)
    n = len(generators)
    length = max([total_length] + [max(w.frames) + 1 for w in plan])
    video = torch.zeros(n, channels, length, height, width)  # (N, C, L', H, W)
    if start is not None:
        video[:, :, : start.shape[2]] = start
    for window in plan:  # (a window without given frames is an unconditional batch)
        frames = list(window.frames)
        obs_mask = torch.tensor(window.obs_mask).expand(n, -1)  # (n, seq_len)
        out = sample_batch(model, diffusion, generators, obs=video[:, :, frames],
                           obs_mask=obs_mask, y=y, options=options, callback=callback)
        positions = [frames.index(f) for f in window.new_frames]
        video[:, :, list(window.new_frames)] = out[:, :, positions]
    return video[:, :, :total_length]

