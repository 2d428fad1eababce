"""Per-frame PSNR and SSIM of sampled videos against their ground truth (docs/EVALUATION.md),
and the baselines a video model must beat on the same clips.

Only generated frames count (a sampler copies the given ones, ``obs_mask`` True); a sample
scores the mean over its generated frames; per clip ramvid reports the best of its N samples
(PSNR and SSIM each their own best, as FitVid) and their mean, both averaged over clips. Frames
are compared on the [0, 1] scale: uint8 / 255, or (x + 1) / 2 for floats in [-1, 1].

The baselines fill the frames that were not given (``given`` False) from the given ones (the
mean frame: from the training set) and return uint8 (N, T, H, W, C) as in the sample npz files;
given frames stay unchanged, as a sampler leaves them.
"""
import numpy as np
import torch
from pytorch_msssim import ssim

# Identical frames have infinite PSNR; the MSE floor caps them at 100 dB.
MSE_FLOOR = 1e-10


def _to_unit(x, device=None) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] (numpy or torch) -> float32 tensor in [0, 1]."""
    # np.array copies: the rows may be a read-only map of the samples file
    x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
    x = x.to(device)  # before the conversion: uint8 is the cheapest to move
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise TypeError(f"frames must be uint8 or float, got {x.dtype}")
    check_float_range(x, "frames")
    return (x.float() + 1.0) / 2.0


def check_float_range(x, what):
    """ValueError unless the float tensor `x` lies in [-1, 1] (the other input is uint8)."""
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"float {what} must lie in [-1, 1] (got [{lo:.3g}, {hi:.3g}]); pass "
                         "uint8 for values in [0, 255]")


def bool_mask(obs_mask) -> np.ndarray:
    """obs_mask (numpy, list or tensor on any device) as a numpy bool array."""
    return np.asarray(obs_mask.cpu() if isinstance(obs_mask, torch.Tensor) else obs_mask,
                      dtype=bool)


def _check_shapes(samples, gt, obs_mask) -> np.ndarray:
    if samples.ndim != 6:
        raise ValueError("samples must be (N_clips, N_samples, T, H, W, C), got shape "
                         f"{tuple(samples.shape)}")
    expected_gt = (samples.shape[0], *samples.shape[2:])
    if tuple(gt.shape) != expected_gt:
        raise ValueError(f"gt must be (N_clips, T, H, W, C) = {expected_gt} to match samples, "
                         f"got {tuple(gt.shape)}")
    mask = bool_mask(obs_mask)
    num_clips, num_frames = samples.shape[0], samples.shape[2]
    if mask.shape == (num_frames,):
        mask = np.broadcast_to(mask, (num_clips, num_frames))
    if mask.shape != (num_clips, num_frames):
        raise ValueError(f"obs_mask must be (N_clips, T) = {(num_clips, num_frames)}, got "
                         f"{mask.shape}")
    if mask.all(axis=1).any():
        raise ValueError("obs_mask marks every frame of a clip as given: nothing to evaluate")
    return mask


def clip_scores(samples, gt, generated, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One clip: samples (S, T, H, W, C), gt (T, H, W, C), generated (T,) bool ->
    (psnr (S,), ssim (S,)), each the mean over the generated frames."""
    generated = generated.to(device)
    x = _to_unit(samples, device)[:, generated]           # (S, Tg, H, W, C)
    y = _to_unit(gt, device)[generated].expand_as(x)      # (S, Tg, H, W, C)
    mse = (x.double() - y.double()).pow(2).mean(dim=(2, 3, 4))           # (S, Tg)
    psnr = -10.0 * torch.log10(mse.clamp(min=MSE_FLOOR))
    s, t = x.shape[:2]
    # (S * Tg, C, H, W), the layout pytorch_msssim expects
    x_images = x.reshape(s * t, *x.shape[2:]).permute(0, 3, 1, 2)
    y_images = y.reshape(s * t, *y.shape[2:]).permute(0, 3, 1, 2)
    ssim_frames = ssim(x_images, y_images, data_range=1.0, size_average=False).reshape(s, t)
    return psnr.mean(dim=1), ssim_frames.double().mean(dim=1)


def frame_metrics(samples, gt, obs_mask, device=None, progress=None) -> dict:
    """PSNR and SSIM over the generated frames, best-of-N and mean-of-N per clip.

    samples: (N_clips, N_samples, T, H, W, C); gt: (N_clips, T, H, W, C), both uint8 or float
    in [-1, 1]; obs_mask: bool (N_clips, T) or (T,), True = given frame (excluded).
    Clips are scored one at a time on ``device`` (default CPU); ``progress`` wraps the loop.
    Returns floats ``psnr_best, psnr_mean, ssim_best, ssim_mean`` (averages over clips),
    ``per_clip`` (each of those four per clip, (N_clips,)) and ``per_sample``
    (``psnr``, ``ssim``: (N_clips, N_samples)), arrays as numpy float64.
    """
    mask = _check_shapes(samples, gt, obs_mask)
    num_clips = samples.shape[0]
    psnr = np.empty((num_clips, samples.shape[1]))
    ssim_values = np.empty_like(psnr)
    clips = range(num_clips)
    with torch.inference_mode():
        for i in progress(clips) if progress else clips:
            generated = torch.from_numpy(~mask[i])
            clip_psnr, clip_ssim = clip_scores(samples[i], gt[i], generated, device)
            psnr[i], ssim_values[i] = clip_psnr.cpu().numpy(), clip_ssim.cpu().numpy()
    per_clip = {"psnr_best": psnr.max(axis=1), "psnr_mean": psnr.mean(axis=1),
                "ssim_best": ssim_values.max(axis=1), "ssim_mean": ssim_values.mean(axis=1)}
    result = {name: float(values.mean()) for name, values in per_clip.items()}
    result.update(num_clips=num_clips, samples_per_clip=int(samples.shape[1]),
                  per_clip=per_clip, per_sample={"psnr": psnr, "ssim": ssim_values})
    return result


# --------------------------------------------------------------------------- baselines
def _check(videos, given):
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.dtype != np.uint8:
        raise ValueError(f"videos must be uint8 (N, T, H, W, C), got {videos.dtype} {videos.shape}")
    n, t = videos.shape[:2]
    mask = np.broadcast_to(np.asarray(given, dtype=bool), (n, t))
    if not mask.any(axis=1).all():
        raise ValueError("every video needs at least one given frame")
    return videos, mask


def _fill_from_given(videos, given, interpolate):
    """Every frame that is not given from its nearest given frames: the latest one before it (the
    first given frame when none precedes it) or, with `interpolate`, between two given frames
    their linear blend in time (pixel-wise cross-fade). Given frames stay unchanged."""
    videos, mask = _check(videos, given)
    out = np.empty_like(videos)
    t = np.arange(videos.shape[1])
    for i, row in enumerate(mask):
        before = np.maximum.accumulate(np.where(row, t, -1))  # latest given frame <= t, or -1
        after = np.minimum.accumulate(np.where(row, t, len(t))[::-1])[::-1]  # next one, or T
        a = np.where(before < 0, after, before)
        b = np.where(after == len(t), a, after)
        w = np.zeros(len(t))  # (T,): the weight of frame b
        if interpolate:
            w = np.where(b > a, (t - a) / np.maximum(b - a, 1), 0.0)
        w = w[:, None, None, None]
        out[i] = np.clip(np.rint((1 - w) * videos[i, a] + w * videos[i, b]), 0, 255)
    return out


def copy_last_given(videos, given):
    """Every frame repeats the latest given frame before it (the first given frame when none
    precedes it): the "nothing moves" guess."""
    return _fill_from_given(videos, given, interpolate=False)


def linear_interpolation(videos, given):
    """Each frame between two given frames blends them linearly in time; before the first / after
    the last given frame it holds that frame. With only leading given frames (prediction) this
    equals `copy_last_given`."""
    return _fill_from_given(videos, given, interpolate=True)


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
