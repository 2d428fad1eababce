"""Sample files: float videos -> uint8 arrays -> npz files named by their shape.

A file holds `arr_0`, uint8 N x T x H x W x C (channels last), and, for class-conditional
models, the labels as `arr_1`. Samples and ground truth go through the same `to_uint8`, so
given frames (equal in float) are equal on disk too.
"""
from pathlib import Path

import numpy as np
import torch

from .npzfile import write_npz

GT_PREFIX = "gt_"


def to_uint8(videos):
    """float (N, C, T, H, W) in [-1, 1] -> uint8 numpy (N, T, H, W, C).

    ((x + 1) * 127.5) rounded to the nearest level and clamped. Rounding (not truncation) makes
    uint8 -> [-1, 1] -> uint8 exact, so saved ground truth equals the video's bytes, and it
    removes the half-level downward bias that truncation puts on every sample.
    """
    videos = torch.as_tensor(videos)
    pixels = ((videos.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 4, 1).contiguous().cpu().numpy()


def from_uint8(videos):
    """uint8 (N, T, H, W, C) -> float32 (N, C, T, H, W) in [-1, 1] (as the data loader maps)."""
    videos = torch.as_tensor(np.asarray(videos))
    if videos.dtype != torch.uint8 or videos.ndim != 5:
        raise ValueError("expected uint8 videos N x T x H x W x C, "
                         f"got {videos.dtype} {tuple(videos.shape)}")
    return videos.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def npz_name(shape, prefix=""):
    """'16x20x64x64x3.npz' for shape (16, 20, 64, 64, 3)."""
    return prefix + "x".join(str(s) for s in shape) + ".npz"


def save_npz(folder, videos, labels=None, prefix=""):
    """folder / <shape>.npz holding videos (arr_0) [and labels (arr_1)]; returns the path."""
    path = Path(folder) / npz_name(videos.shape, prefix)
    return write_npz(path, [videos] if labels is None else [videos, np.asarray(labels)])


__all__ = ["GT_PREFIX", "from_uint8", "npz_name", "save_npz", "to_uint8"]
