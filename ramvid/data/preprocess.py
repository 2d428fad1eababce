"""Frame preprocessing: downscale to `image_size`, centre crop, map to [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def resize_and_crop(image: Image.Image, image_size: int) -> Image.Image:
    """Short side -> image_size, then the central image_size x image_size square.

    Halving with a 2x2 box filter (`Image.reduce(2)`; an odd last row/column is averaged
    alone) while the image is at least twice too large averages every source pixel (no
    aliasing) and is cheap; the final bicubic step covers the remaining factor in [1, 2).
    """
    while min(image.size) >= 2 * image_size:
        image = image.reduce(2)
    scale = image_size / min(image.size)
    image = image.resize(
        (round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC
    )
    left = (image.width - image_size) // 2
    top = (image.height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def preprocess_frame(image: Image.Image, image_size: int, rgb: bool = True) -> np.ndarray:
    """uint8 (H, W, C) with C = 3 (rgb) or 1 (Pillow "L" grayscale)."""
    image = resize_and_crop(image, image_size).convert("RGB" if rgb else "L")
    array = np.asarray(image, dtype=np.uint8)
    return array if rgb else array[:, :, None]


def frames_to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 frames [(H, W, C)] * T -> float32 (C, T, H, W) in [-1, 1]."""
    video = torch.from_numpy(np.stack(frames))  # (T, H, W, C)
    return video.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)
