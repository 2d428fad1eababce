"""A trained model from its checkpoint file: weights, plus the flags recorded beside them in
args.json (in rising priority: the library defaults, that args.json, a preset, the caller's
overrides). A checkpoint without args.json (the published RaMViD files) needs a preset or the
caller for every flag its weights cannot reveal (`HIDDEN_FLAGS`): the defaults are the original
code's, not the paper's runs' (--scale_time_dim 20 against their 0), and would sample garbage.

A state dict's parameter shapes determine most architecture flags: `architecture_of` reads them
back (from the checkpoint, and from a model built from the flags, by the same code), so a
mismatch is reported as "num_channels: flags give 64, the checkpoint has 32" instead of a list
of tensor shapes.
"""
import re
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint_file
from ..config import (CHANNEL_MULT_BY_SIZE, PRESETS, create_diffusion, create_model,
                      model_and_diffusion_defaults)
from ..flags import ARGS_JSON, read_args_json

_BLOCK_KEY = re.compile(r"^input_blocks\.(\d+)\.")
# Flags sampling depends on that no parameter shape reveals (the others fail the shape check
# below, or only matter for training: dropout, use_kl, rescale_learned_sigmas, use_checkpoint;
# timestep_respacing is the sampler's choice).
HIDDEN_FLAGS = ("image_size", "seq_len", "scale_time_dim", "num_heads", "num_heads_upsample",
                "diffusion_steps", "noise_schedule", "predict_xstart", "rescale_timesteps",
                "sigma_small")


def checkpoint_flags(checkpoint_path):
    """The model/diffusion flags in args.json beside the checkpoint ({} when there is none)."""
    path = Path(checkpoint_path).parent / ARGS_JSON
    if not path.is_file():
        return {}
    recorded = read_args_json(path)
    if not isinstance(recorded, dict):
        raise ValueError(f"{path} does not hold a JSON object of flags")
    return {k: v for k, v in recorded.items() if k in model_and_diffusion_defaults()}


def flag_sources(checkpoint_path, recorded, preset, given):
    """{flag: where its value comes from} for every model/diffusion flag: "args.json",
    "--preset NAME", "the command line" (the flags in `given`) or "default". ValueError listing
    the flags the weights cannot reveal when there is neither args.json nor a preset for them."""
    defaults = model_and_diffusion_defaults()
    missing = [f"--{k}" for k in HIDDEN_FLAGS if not recorded and not preset and k not in given]
    if missing:
        raise ValueError(
            f"{checkpoint_path} has no args.json beside it, and its weights do not reveal "
            f"{', '.join(missing)}: pass --preset (bair64, kinetics600 or ucf101 for the paper's "
            "checkpoints) or these flags")
    preset_flags = PRESETS[preset] if preset else {}
    return {k: "the command line" if k in given else f"--preset {preset}" if k in preset_flags
            else "args.json" if k in recorded else "default" for k in defaults}


def resolve_flags(checkpoint_path, overrides=None, preset=None):
    """defaults < args.json beside the checkpoint < preset < overrides; unknown overrides are an
    error, and so is a checkpoint without args.json and preset whose hidden flags are not
    all in `overrides` (see HIDDEN_FLAGS)."""
    defaults = model_and_diffusion_defaults()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise TypeError(f"unknown model/diffusion flags: {', '.join(unknown)}")
    recorded = checkpoint_flags(checkpoint_path)
    flag_sources(checkpoint_path, recorded, preset, overrides)  # the check alone
    from_preset = {k: v for k, v in (PRESETS[preset] if preset else {}).items() if k in defaults}
    return {**defaults, **recorded, **from_preset, **overrides}


def model_from_checkpoint(checkpoint_path, flags, source):
    """(the UNet of `flags` with the weights of a modelNNNNNN.pt / ema_RATE_NNNNNN.pt file, in
    eval mode to sample, the flags it was built from); a ValueError names the flags that differ
    (`source`: how the file is named there) when they do not fit. A class-conditional model
    without num_classes takes the checkpoint's."""
    state_dict = load_checkpoint_file(checkpoint_path)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor)
                                                   for v in state_dict.values()):
        raise ValueError(f"{checkpoint_path} is not a model state dict (expected modelNNNNNN.pt "
                         "or ema_RATE_NNNNNN.pt, not optNNNNNN.pt)")
    if flags.get("class_cond") and not flags.get("num_classes"):
        # Any count builds the model; without a label embedding the check names class_cond.
        found = architecture_of(state_dict)["num_classes"]
        flags = {**flags, "num_classes": found or 1}
    model = create_model(**flags)
    expected = model.state_dict()
    if set(expected) != set(state_dict) or any(
            tuple(expected[k].shape) != tuple(state_dict[k].shape) for k in expected):
        want, have = architecture_of(expected), architecture_of(state_dict)
        differing = [k for k in want if want[k] != have.get(k)]
        if "class_cond" in differing and "num_classes" in differing:
            differing.remove("num_classes")
        if differing:
            reasons = "; ".join(_explain(k, want[k], have[k], flags) for k in differing)
        else:
            reasons = "parameters differ: " + _shape_differences(expected, state_dict)
        raise ValueError(f"{source} does not fit the model flags: {reasons}. Give the flags the "
                         "checkpoint was trained with (or keep its args.json beside it)")
    model.load_state_dict(state_dict)
    return model.eval(), flags


def load_model(checkpoint_path, device=None, preset=None, **overrides):
    """(model, diffusion, flags) from a checkpoint in one call, ready to sample (eval mode).

    `overrides` are model/diffusion flags (e.g. timestep_respacing="ddim50"); the rest come
    from args.json beside the checkpoint, or from `preset` (e.g. "bair64" for the published
    BAIR checkpoint, which has no args.json). `device` defaults to CUDA when available.
    """
    flags = resolve_flags(checkpoint_path, overrides, preset)
    model, flags = model_from_checkpoint(checkpoint_path, flags, str(checkpoint_path))
    diffusion = create_diffusion(**flags)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), diffusion, flags


# --------------------------------------------------------------------------- does it fit?
def architecture_of(state_dict):
    """The architecture flags a UNet state dict implies (keys as the flag names).

    `attention_levels` lists the levels (downsampling rate 2^level) whose input ResBlocks carry
    attention; which `attention_resolutions` that is depends on image_size.
    """
    required = ("time_embed.0.weight", "input_blocks.0.0.weight", "out.2.weight")
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"not a ramvid UNet state dict (no {', '.join(missing)}); its first keys "
                         f"are {', '.join(list(state_dict)[:3])}")
    width = state_dict["time_embed.0.weight"].shape[1]
    in_channels = state_dict["input_blocks.0.0.weight"].shape[1]
    out_channels = state_dict["out.2.weight"].shape[0]
    arch = {"num_channels": width, "rgb": in_channels == 3,
            "learn_sigma": out_channels == 2 * in_channels,
            "class_cond": "label_emb.weight" in state_dict,
            "num_classes": len(state_dict.get("label_emb.weight", ()))}
    # Input blocks after the first conv: per level some ResBlocks, then a Downsample ("op").
    levels = [[]]  # per level: [(resblock out channels, has attention)]
    count = 1 + max((int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.match(k))), default=0)
    for i in range(1, count):
        if f"input_blocks.{i}.0.op.weight" in state_dict:
            levels.append([])
        elif f"input_blocks.{i}.0.in_layers.2.weight" in state_dict:
            channels = state_dict[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]
            levels[-1].append((channels, f"input_blocks.{i}.1.qkv.weight" in state_dict))
    arch["num_res_blocks"] = len(levels[0])
    arch["channel_mult"] = tuple(blocks[0][0] // width for blocks in levels if blocks)
    arch["attention_levels"] = tuple(level for level, blocks in enumerate(levels)
                                     if any(attn for _, attn in blocks))
    emb = state_dict.get("input_blocks.1.0.emb_layers.1.weight")
    conv = state_dict.get("input_blocks.1.0.in_layers.2.weight")
    if emb is not None and conv is not None:
        arch["use_scale_shift_norm"] = emb.shape[0] == 2 * conv.shape[0]
    return arch


def _shape_differences(expected, found):
    lines = []
    for key, value in expected.items():
        if key not in found:
            lines.append(f"{key} missing")
        elif tuple(value.shape) != tuple(found[key].shape):
            lines.append(f"{key} {tuple(found[key].shape)} (flags need {tuple(value.shape)})")
    lines += [f"{key} unexpected" for key in found if key not in expected]
    return "; ".join(lines[:3]) + (f", ... {len(lines) - 3} more" if len(lines) > 3 else "")


def _fmt(value):
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _explain(flag, flag_value, ckpt_value, flags):
    if flag == "attention_levels":
        size = int(flags["image_size"])
        implied = ",".join(str(size // 2 ** level) for level in ckpt_value) or "(none)"
        return (f"attention_resolutions: flags give {flags['attention_resolutions']!r} with "
                f"image_size {size}, the checkpoint has attention at feature maps of "
                f"{implied} px (attention_resolutions {implied} with image_size {size}, "
                "or another --image_size)")
    if flag == "channel_mult" and not flags.get("channel_mult"):
        guess = [s for s, mult in CHANNEL_MULT_BY_SIZE.items() if mult == ckpt_value]
        hint = f"; image_size {guess[0]} implies it" if guess else ""
        return (f"channel_mult: flags give {_fmt(flag_value)} (chosen by image_size "
                f"{flags['image_size']}), the checkpoint has {_fmt(ckpt_value)} "
                f"(pass --channel_mult {_fmt(ckpt_value)}{hint})")
    return f"{flag}: flags give {_fmt(flag_value)}, the checkpoint has {_fmt(ckpt_value)}"
