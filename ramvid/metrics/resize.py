"""Bilinear resizing with TensorFlow 1 ``resize_bilinear`` semantics (the FVD convention).

FVD resizes every frame to 224 x 224 with TF1's default mapping: output pixel i samples the
input at ``i * in_size / out_size`` (no half-pixel centres), between the neighbours
``floor`` and ``ceil`` of that position, clamped to the image. PyTorch's
``interpolate(mode="bilinear", align_corners=False)`` uses half-pixel centres instead
(``(i + 0.5) * in / out - 0.5``); on 64 x 64 frames that moves every sample by about 0.36
pixels and changes FVD by several percent, so ramvid spells the TF1 mapping out.
"""

import torch


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
