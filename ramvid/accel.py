"""GPU speed settings shared by training and sampling: TF32 math, torch.compile, and copies to
the GPU that do not stall the host.

`compile_model` returns what to call; the module itself stays what is trained, saved and loaded,
so checkpoints are plain state dicts (no `_orig_mod.` prefixes).
"""
import sys

import torch

# What a failing compiler raises on the first call (Dynamo tracing, Inductor, the C++/Triton
# toolchain); anything else (a wrong input shape, out of memory) is the model's own error.
COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException,)


def configure_tf32(enabled):
    """TensorFloat-32 for float32 matmuls and cuDNN convolutions on CUDA.

    Only the CUDA backends are set: CPU arithmetic is unchanged either way. These setters keep
    both flag APIs readable; since torch 2.9, a flag set through the new `fp32_precision`
    API raises when read through `allow_tf32` / `get_float32_matmul_precision()`, as parts of
    torch and other libraries still do.
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def compile_model(model, enabled):
    """The callable to run `model` with: a torch.compile'd version when `enabled`, else `model`.

    Compilation happens on the first call for each input shape. If it fails, one line says so
    and `model` runs uncompiled from then on. Attribute access (`.parameters()`, `.no_sync()`,
    `.state_dict()`, ...) goes to `model` itself.
    """
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
    """Copy a CPU tensor to `device` without making the host wait for the GPU.

    A plain copy from pageable memory waits until the GPU has finished all queued work; from
    pinned memory the copy is queued like a kernel. Elsewhere this is an ordinary `.to`.
    """
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _say_fallback(error):
    reason = (str(error).strip().splitlines() or [""])[0][:200]
    print(f"ramvid: torch.compile failed ({type(error).__name__}: {reason}); "
          "running the model uncompiled", file=sys.stderr, flush=True)
