"""Fréchet Video Distance (Unterthiner et al., 2018) as docs/EVALUATION.md describes it: frames
resized with TF1 ``resize_bilinear`` on the 0..255 scale, mapped to [-1, 1], I3D logits averaged
over time (float64), then the Fréchet distance of the two sets' Gaussians.

TF1's default bilinear mapping samples output pixel i of the input at ``i * in_size / out_size``
(no half-pixel centres), between the neighbours ``floor`` and ``ceil`` of that position, clamped
to the image. PyTorch's ``interpolate(mode="bilinear", align_corners=False)`` uses half-pixel
centres instead, which on 64 x 64 frames moves every sample by about 0.36 pixels and changes FVD
by several percent, so ramvid spells the TF1 mapping out.
"""
import functools
import warnings

import numpy as np
import scipy
import scipy.linalg
import torch

from .frame_metrics import check_float_range
from .i3d import I3D, MIN_FRAMES, load_i3d

I3D_SIZE = (224, 224)


# --------------------------------------------------------------------------- TF1 resizing
def tf1_bilinear_taps(in_size: int, out_size: int, device=None):
    """Neighbour indices (lo, hi) and weight of hi, each (out_size,), for one axis."""
    # float32 throughout, as TF computes the source positions.
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size,
                                                                       dtype=torch.float32)
    source = torch.arange(out_size, dtype=torch.float32, device=device) * scale.to(device)
    lo = torch.floor(source)
    weight = source - lo
    hi = torch.ceil(source).long().clamp(max=in_size - 1)
    lo = lo.long().clamp(min=0, max=in_size - 1)
    return lo, hi, weight


def resize_bilinear_tf1(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., H, W, C) float -> (..., size[0], size[1], C), TF1 resize_bilinear arithmetic."""
    if not images.is_floating_point():
        raise TypeError("resize_bilinear_tf1 expects a floating-point tensor")
    in_h, in_w = images.shape[-3], images.shape[-2]
    out_h, out_w = size
    if (in_h, in_w) == (out_h, out_w):
        return images
    y_lo, y_hi, y_weight = tf1_bilinear_taps(in_h, out_h, images.device)
    x_lo, x_hi, x_weight = tf1_bilinear_taps(in_w, out_w, images.device)
    y_weight = y_weight.to(images.dtype)[:, None, None]          # (out_h, 1, 1)
    x_weight = x_weight.to(images.dtype)[:, None]                # (out_w, 1)

    def along_width(rows):                                       # (..., out_h, W, C)
        left, right = rows[..., x_lo, :], rows[..., x_hi, :]     # (..., out_h, out_w, C)
        return left + (right - left) * x_weight

    top = along_width(images[..., y_lo, :, :])
    bottom = along_width(images[..., y_hi, :, :])
    return top + (bottom - top) * y_weight


# --------------------------------------------------------------------------- FVD
@functools.cache
def _cached_i3d(device: str) -> I3D:
    return load_i3d(device)


def preprocess(videos: torch.Tensor) -> torch.Tensor:
    """(N, T, H, W, C) uint8 in [0, 255] or float in [-1, 1] -> (N, 3, T, 224, 224) float32
    in [-1, 1], the I3D input."""
    if videos.dtype == torch.uint8:
        x = videos.float()
    elif videos.is_floating_point():
        check_float_range(videos, "videos")
        # Back to the 0..255 scale so that float and uint8 inputs share the same arithmetic.
        x = (videos.float() + 1.0) * 127.5
    else:
        raise TypeError(f"videos must be uint8 or float, got {videos.dtype}")
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)  # grayscale frames shown to I3D as gray RGB
    x = resize_bilinear_tf1(x, I3D_SIZE)                 # (N, T, 224, 224, 3)
    x = 2.0 * x / 255.0 - 1.0
    return x.permute(0, 4, 1, 2, 3).contiguous()         # (N, 3, T, 224, 224)


def i3d_features(videos, batch_size: int = 16, model: I3D | None = None,
                 device=None, progress=None, frames=None) -> np.ndarray:
    """(N, T, H, W, C) uint8 or float [-1, 1] videos (numpy or torch) -> (N, 400) float64 I3D
    logits averaged over time. ``frames`` (indices) keeps only those frames of every video,
    batch by batch, without copying the whole array; ``progress`` wraps the batch iterator
    (e.g. ``tqdm``)."""
    if videos.ndim != 5 or videos.shape[0] == 0 or videos.shape[-1] not in (1, 3):
        raise ValueError("videos must be (N, T, H, W, C) with N >= 1 and C = 1 or 3, got shape "
                         f"{tuple(videos.shape)}")
    frames = None if frames is None else list(frames)
    num_frames = videos.shape[1] if frames is None else len(frames)
    if num_frames < MIN_FRAMES:
        raise ValueError(f"I3D needs at least {MIN_FRAMES} frames per video, got {num_frames}")
    if model is None:
        model = _cached_i3d(str(torch.device(device or ("cuda" if torch.cuda.is_available()
                                                         else "cpu"))))
    device = next(model.parameters()).device
    starts = range(0, videos.shape[0], batch_size)
    features = []
    with torch.inference_mode():
        for start in progress(starts) if progress else starts:
            batch = videos[start:start + batch_size]
            if frames is not None:
                batch = batch[:, frames]
            if not isinstance(batch, torch.Tensor):
                batch = torch.from_numpy(np.array(batch))  # a copy: rows may be a read-only map
            logits = model(preprocess(batch.to(device)))   # (B, 400)
            features.append(logits.double().cpu().numpy())
    return np.concatenate(features, axis=0)


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> tuple[float, float]:
    """Fréchet distance between Gaussians fitted to (N_a, D) and (N_b, D) features.

    Returns ``(distance, imag_residue)``: the matrix square root of ``S_a S_b`` is real in
    exact arithmetic; ``imag_residue`` is the largest magnitude of the imaginary parts
    numerical error left in it (dropped from the distance). A residue that is not small
    compared with the distance means too few videos for the feature dimension.
    """
    if tuple(int(p) for p in scipy.__version__.split(".")[:2]) < (1, 13):
        raise RuntimeError(
            f"FVD needs scipy >= 1.13 (found {scipy.__version__}): older scipy.linalg.sqrtm "
            "returns wrong results for the rank-deficient covariances FVD produces")
    feat_a, feat_b = np.asarray(feat_a, np.float64), np.asarray(feat_b, np.float64)
    if feat_a.ndim != 2 or feat_b.ndim != 2 or feat_a.shape[1] != feat_b.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {feat_a.shape} and "
                         f"{feat_b.shape}")
    if min(len(feat_a), len(feat_b)) < 2:
        raise ValueError("each set needs at least 2 videos to estimate a covariance")
    mu_a, mu_b = feat_a.mean(axis=0), feat_b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(feat_a, rowvar=False))  # (D, D), unbiased (N - 1)
    sigma_b = np.atleast_2d(np.cov(feat_b, rowvar=False))
    product = sigma_a @ sigma_b
    if not product.any():
        # A set of identical videos has S = 0; some scipy releases return NaN for sqrtm(0).
        covmean = np.zeros_like(product)
    else:
        with warnings.catch_warnings():
            # With fewer videos than feature dimensions the product is singular by
            # construction; scipy warns, yet >= 1.13 returns the right root (the imaginary
            # residue tells).
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm(product)
    if not np.all(np.isfinite(covmean)):
        raise FloatingPointError(f"sqrtm(S_a S_b) is not finite (scipy {scipy.__version__})")
    imag_residue = float(np.abs(np.imag(covmean)).max()) if np.iscomplexobj(covmean) else 0.0
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    distance = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean)
    return float(distance), imag_residue


def compute_fvd(videos_a, videos_b, batch_size: int = 16, model: I3D | None = None,
                device=None, progress=None, frames=None) -> dict:
    """FVD between two sets of (N, T, H, W, C) videos (uint8, or float in [-1, 1]), on the
    frames with indices ``frames`` (default: all).

    Returns ``{"fvd", "imag_residue", "num_videos_a", "num_videos_b"}``.
    """
    feat_a = i3d_features(videos_a, batch_size, model, device, progress, frames)
    feat_b = i3d_features(videos_b, batch_size, model, device, progress, frames)
    fvd, imag_residue = frechet_distance(feat_a, feat_b)
    return {"fvd": fvd, "imag_residue": imag_residue,
            "num_videos_a": len(feat_a), "num_videos_b": len(feat_b)}
