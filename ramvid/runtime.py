"""Process-level settings shared by training and sampling: TF32 math, torch.compile, copies to
the GPU that do not stall the host, the heap of long CPU runs, and independent random streams.

`compile_model` returns what to call; the module itself stays what is trained, saved and loaded,
so checkpoints are plain state dicts (no `_orig_mod.` prefixes).
"""
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import numpy as np
import torch

# What a failing compiler raises on the first call (Dynamo tracing, Inductor, the C++/Triton
# toolchain); anything else (a wrong input shape, out of memory) is the model's own error.
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException,)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)


def configure_tf32(enabled):
    """TensorFloat-32 for float32 matmuls and cuDNN convolutions on CUDA (CPU arithmetic is
    unchanged). These setters keep both flag APIs readable: since torch 2.9 a flag set through the
    new `fp32_precision` API raises when read through `allow_tf32` /
    `get_float32_matmul_precision()`, as parts of torch and other libraries still do."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def autocast_dtype(use_fp16, bf16, device_type):
    """The dtype the network runs in under --use_fp16 / --bf16 (None: float32); ValueError
    naming the flag when the two are combined or float16 is asked for without a CUDA GPU."""
    if use_fp16 and bf16:
        raise ValueError("bf16=True: cannot be combined with --use_fp16 True; choose one")
    if use_fp16 and device_type != "cuda":
        raise ValueError("use_fp16=True: needs a CUDA GPU (float16 autocast); on CPU use "
                         "--bf16 True")
    return torch.float16 if use_fp16 else torch.bfloat16 if bf16 else None


def compile_model(model, enabled):
    """The callable to run `model` with: a torch.compile'd version when `enabled`, else `model`.
    Compilation happens on the first call for each input shape; if it fails, one line says so and
    `model` runs uncompiled from then on. Attribute access (`.no_sync()`, ...) goes to `model`."""
    if not enabled:
        return model
    try:
        compiled = torch.compile(model, dynamic=False)  # one graph per shape, no symbolic sizes
    except Exception as error:  # e.g. a Python version Dynamo does not support
        _say_fallback(error)
        return model
    return CompiledModel(model, compiled)


class CompiledModel:
    """Calls the compiled module, or the original one after a compilation failure."""

    def __init__(self, module, compiled):
        self.module = module
        self.compiled = compiled

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except COMPILE_ERRORS as error:
                _say_fallback(error)
                self.compiled = None
        return self.module(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)


def to_device(tensor, device):
    """Copy a CPU tensor to `device` without making the host wait for the GPU: a plain copy from
    pageable memory waits until the GPU has finished all queued work; from pinned memory the copy
    is queued like a kernel. Elsewhere this is an ordinary `.to`."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _say_fallback(error):
    reason = (str(error).strip().splitlines() or [""])[0][:200]
    print(f"ramvid: torch.compile failed ({type(error).__name__}: {reason}); "
          "running the model uncompiled", file=sys.stderr, flush=True)


def limit_heap_fragmentation(threshold_bytes=4 * 1024 * 1024):
    """Serve every allocation above `threshold_bytes` with its own mmap (glibc only); True when
    the setting was applied. glibc raises its mmap threshold dynamically up to 32 MiB, after which
    freed activation tensors stay in the heap and fragment it, so a training step's resident size
    grows beyond what it ever holds at once. With a fixed threshold large tensors return their
    pages to the system when freed; docs/PERFORMANCE.md has the measurements behind 4 MiB."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False


def derive_seed(*keys):
    """A well-mixed 63-bit seed (fits torch.Generator.manual_seed) for the stream named by
    `keys`, e.g. (seed, rank, step, stream): nearby keys give unrelated streams."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def cache_home():
    """Where ramvid keeps what it fetches or measures: $RAMVID_CACHE, else ~/.cache/ramvid."""
    root = os.environ.get("RAMVID_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ramvid"
