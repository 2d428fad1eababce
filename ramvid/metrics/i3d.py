"""The Kinetics-400 Inflated 3D ConvNet (I3D, Carreira & Zisserman 2017) in PyTorch.

This is the network behind the Fréchet Video Distance: the TF-Hub ``i3d-kinetics-400`` model,
whose weights ``ramvid.metrics.i3d_weights`` loads. Submodule names spell the TensorFlow
variable scopes (``Mixed_4b.Branch_1.Conv3d_0b_3x3``) so that the weight mapping is a plain
``/`` -> ``.`` substitution a reader can check by eye.

Layout is PyTorch's: videos are (N, C, T, H, W) float32 in [-1, 1], 224 x 224 pixels.
Every convolution and pooling uses TensorFlow "SAME" padding, which pads more at the end than
at the start when the total is odd (the first 7x7x7 stride-2 convolution pads 2 before and
3 after); symmetric PyTorch padding would shift every feature map by one pixel.
"""

import contextlib
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

BATCH_NORM_EPSILON = 1e-3
NUM_CLASSES = 400
# The head averages a (2, 7, 7) window, so the trunk must leave at least 2 frames: a clip of
# T frames keeps ceil(ceil(ceil(T / 2) / 2) / 2) of them.
MIN_FRAMES = 9


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one axis: (before, after), the extra pixel at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    """Pad (N, C, T, H, W) for a "SAME" convolution or pooling with the given kernel/stride."""
    pads = []
    # F.pad lists the last axis first.
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):
        pads.extend(same_padding(size, k, s))
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


@contextlib.contextmanager
def full_fp32_convolutions():
    """cuDNN runs float32 convolutions in TF32 (10-bit mantissas) by default on recent GPUs;
    FVD is defined with the float32 network, so I3D turns that off while it runs."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):  # torch < 2.9: the legacy flag
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                         deterministic=cudnn.deterministic, allow_tf32=False):
            yield
        return
    previous = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = previous


class MaxPool3dSame(nn.Module):
    """Max pooling with "SAME" padding; padded cells never win (they are -inf, as in TF)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        x = pad_same(x, self.kernel, self.stride, value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d ("SAME") -> batch norm without scale (a learned shift only) -> optional ReLU."""

    def __init__(self, in_channels, out_channels, kernel=(1, 1, 1), stride=(1, 1, 1),
                 batch_norm=True, relu=True, bias=False):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=bias)
        self.batch_norm, self.relu = batch_norm, relu
        if batch_norm:
            # Frozen statistics of the Kinetics training run: this network is only evaluated.
            self.register_buffer("bn_mean", torch.zeros(out_channels))
            self.register_buffer("bn_var", torch.ones(out_channels))
            self.bn_offset = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x):
        x = self.conv(pad_same(x, self.kernel, self.stride))
        if self.batch_norm:
            x = F.batch_norm(x, self.bn_mean, self.bn_var, weight=None, bias=self.bn_offset,
                             training=False, eps=BATCH_NORM_EPSILON)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->3x3; pool->1x1) concatenated on channels."""

    def __init__(self, in_channels, widths):
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3 = widths
        self.out_channels = b0 + b1b + b2b + b3
        self.Branch_0 = nn.Sequential(OrderedDict(
            Conv3d_0a_1x1=Unit3D(in_channels, b0)))
        self.Branch_1 = nn.Sequential(OrderedDict(
            Conv3d_0a_1x1=Unit3D(in_channels, b1a),
            Conv3d_0b_3x3=Unit3D(b1a, b1b, kernel=(3, 3, 3))))
        self.Branch_2 = nn.Sequential(OrderedDict(
            Conv3d_0a_1x1=Unit3D(in_channels, b2a),
            Conv3d_0b_3x3=Unit3D(b2a, b2b, kernel=(3, 3, 3))))
        self.Branch_3 = nn.Sequential(OrderedDict(
            MaxPool3d_0a_3x3=MaxPool3dSame((3, 3, 3), (1, 1, 1)),
            Conv3d_0b_1x1=Unit3D(in_channels, b3)))

    def forward(self, x):
        branches = (self.Branch_0, self.Branch_1, self.Branch_2, self.Branch_3)
        return torch.cat([branch(x) for branch in branches], dim=1)


# (end point, output widths of the six convolutions: b0, b1 reduce, b1, b2 reduce, b2, b3)
INCEPTION_WIDTHS = OrderedDict(
    Mixed_3b=(64, 96, 128, 16, 32, 32),
    Mixed_3c=(128, 128, 192, 32, 96, 64),
    Mixed_4b=(192, 96, 208, 16, 48, 64),
    Mixed_4c=(160, 112, 224, 24, 64, 64),
    Mixed_4d=(128, 128, 256, 24, 64, 64),
    Mixed_4e=(112, 144, 288, 32, 64, 64),
    Mixed_4f=(256, 160, 320, 32, 128, 128),
    Mixed_5b=(256, 160, 320, 32, 128, 128),
    Mixed_5c=(384, 192, 384, 48, 128, 128),
)
# Pools that come right before the named inception module: (kernel, stride).
POOL_BEFORE = {
    "Mixed_3b": ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
}


class I3D(nn.Module):
    """Kinetics-400 I3D: (N, 3, T, 224, 224) in [-1, 1] -> (N, 400) logits averaged over time."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel=(3, 3, 3))
        channels = 192
        for name, widths in INCEPTION_WIDTHS.items():
            if name in POOL_BEFORE:
                pool_name, kernel, stride = POOL_BEFORE[name]
                self.add_module(pool_name, MaxPool3dSame(kernel, stride))
            module = InceptionModule(channels, widths)
            self.add_module(name, module)
            channels = module.out_channels
        self.Logits = nn.Sequential(OrderedDict(
            Conv3d_0c_1x1=Unit3D(channels, num_classes, batch_norm=False, relu=False,
                                 bias=True)))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, 224, 224) -> (N, 1024, ceil(T / 8), 7, 7) features of Mixed_5c."""
        for module in self.children():
            if module is self.Logits:
                break
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (N, 3, T, H, W) videos, got shape {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {x.shape[2]}")
        with full_fp32_convolutions():
            x = self.trunk(x)                               # (N, 1024, T', 7, 7)
            # Unpadded average over 2 frames x 7 x 7 pixels, sliding over time with stride 1.
            x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # (N, 1024, T'-1, 1, 1)
            x = self.Logits(x)                              # (N, 400, T'-1, 1, 1)
        return x.mean(dim=(2, 3, 4))                        # (N, 400)
