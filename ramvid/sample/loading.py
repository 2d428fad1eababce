"""A trained model from its checkpoint file: weights, plus the flags recorded beside them.

Training writes `args.json` (every resolved flag) into the run directory next to
`modelNNNNNN.pt` / `ema_RATE_NNNNNN.pt`. The flags used to rebuild the model are, in rising
priority: the library defaults, that args.json, and the caller's overrides.
"""
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint_file
from ..cli import ARGS_JSON, read_args_json
from ..config import create_diffusion, create_model, model_and_diffusion_defaults
from .compat import ModelFlagsMismatch, architecture_of, check_state_dict


def checkpoint_flags(checkpoint_path):
    """The model/diffusion flags in args.json beside the checkpoint ({} when there is none)."""
    path = Path(checkpoint_path).parent / ARGS_JSON
    if not path.is_file():
        return {}
    recorded = read_args_json(path)
    if not isinstance(recorded, dict):
        raise ValueError(f"{path} does not hold a JSON object of flags")
    return {k: v for k, v in recorded.items() if k in model_and_diffusion_defaults()}


def resolve_flags(checkpoint_path, overrides=None):
    """defaults < args.json beside the checkpoint < overrides; unknown overrides are an error."""
    defaults = model_and_diffusion_defaults()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"unknown model/diffusion flags: {', '.join(unknown)}")
    return {**defaults, **checkpoint_flags(checkpoint_path), **overrides}


def load_state_dict(checkpoint_path):
    """The plain state dict in a modelNNNNNN.pt / ema_RATE_NNNNNN.pt file (weights only)."""
    state = load_checkpoint_file(checkpoint_path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFlagsMismatch(
            f"{checkpoint_path} is not a model state dict (expected modelNNNNNN.pt or "
            "ema_RATE_NNNNNN.pt, not optNNNNNN.pt)"
        )
    return state


def model_from_state_dict(state_dict, flags, source="checkpoint"):
    """Build the UNet of `flags` and load `state_dict` into it; ModelFlagsMismatch names the
    flags that differ. A class-conditional model without num_classes takes the checkpoint's."""
    if flags.get("class_cond") and not flags.get("num_classes"):
        # Any count builds the model; without a label embedding the check names class_cond.
        found = architecture_of(state_dict)["num_classes"]
        flags = {**flags, "num_classes": found or 1}
    model = create_model(**flags)
    check_state_dict(model, state_dict, flags, source)
    model.load_state_dict(state_dict)
    return model, flags


def load_model(checkpoint_path, device=None, **overrides):
    """(model, diffusion, flags) from a checkpoint in one call, ready to sample (eval mode).

    `overrides` are model/diffusion flags (e.g. timestep_respacing="ddim50"); the rest come
    from args.json beside the checkpoint. `device` defaults to CUDA when available.
    """
    flags = resolve_flags(checkpoint_path, overrides)
    model, flags = model_from_state_dict(load_state_dict(checkpoint_path), flags, str(checkpoint_path))
    diffusion = create_diffusion(**flags)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), diffusion, flags


__all__ = ["checkpoint_flags", "load_model", "load_state_dict",
           "model_from_state_dict", "resolve_flags"]
