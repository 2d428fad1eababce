"""Flags of the sampling commands (ramvid-sample, ramvid-sample-long, ramvid-eval --model_path).

Model flags default to the checkpoint's args.json, so naming the checkpoint is enough; flags
written on the command line (or a --preset) win. A checkpoint without args.json (for instance
one the original RaMViD code saved) takes --preset or explicit flags. Every user error ends
with one line naming the flag and exit code 2, before any process group exists.
"""
import math
from pathlib import Path

from ..accel import compile_model, configure_tf32
from ..checkpoint import CheckpointError
from ..cli import (UsageError, add_common_flags, check, check_model_flags, make_parser,
                   parse_flags)
from ..config import MODEL_AND_DIFFUSION_FLAGS, model_and_diffusion_defaults
from ..flags import Flag, add_flags, at_least, flag_values, one_of, select, unit_interval
from ..video_grid import FORMATS
from .batch import SAMPLERS, SamplerOptions
from .clips import ClipSource
from .compat import ModelFlagsMismatch
from .loading import checkpoint_flags, load_state_dict, model_from_state_dict

def _finite_non_negative(value):
    return None if math.isfinite(value) and value >= 0 else "must be a finite number >= 0"


SAMPLING_FLAGS = (
    Flag("model_path", "", "modelNNNNNN.pt or ema_RATE_NNNNNN.pt; model flags default to "
         "args.json beside it (a checkpoint without one: --preset or the model flags)"),
    Flag("num_samples", 16, "exactly this many videos, over all ranks", check=at_least(1)),
    Flag("batch_size", 8, "videos per batch on each rank", check=at_least(1)),
    Flag("seed", 0, "sample i uses a generator seeded by hash(seed, i): reproducible alone",
         check=at_least(0)),
    Flag("sampler", "", f"{' | '.join(SAMPLERS)} (default: ddim with --use_ddim True, else "
         "ddpm)"),
    Flag("use_ddim", False, "the seed's name for --sampler ddim"),
    Flag("eta", 0.0, "DDIM noise in [0, 1] (0 = deterministic, 1 = ancestral-like); needs "
         "--sampler ddim", check=unit_interval),
    Flag("clip_denoised", True, "clip each predicted clean video to [-1, 1]"),
    Flag("resample_steps", 1, "denoise/re-noise repetitions per step (harmonises given and new "
         "frames)", check=at_least(1)),
    Flag("guidance_scale", 1.0, "frame guidance w: eps_uncond + w (eps_cond - eps_uncond); 1 = "
         "plain conditioning", check=_finite_non_negative),
    Flag("data_dir", "", "videos whose clips give the conditioning frames (clip i = i-th file, "
         "sorted)"),
    Flag("samples_per_clip", 1, "S: samples i*S .. i*S+S-1 share clip i (1: the samples loop "
         "over the clips)", check=at_least(1)),
    Flag("cond_generation", True, "condition on frames of --data_dir clips (False: "
         "unconditional)"),
    Flag("save_gt", False, "also save the ground-truth clips as gt_<shape>.npz"),
    Flag("chunk_size", 256, "samples per chunk file; finished chunks survive a preemption and a "
         "rerun of the same command skips them (a multiple of --batch_size x ranks keeps every "
         "rank busy)", check=at_least(1)),
    Flag("out_dir", "", "write exactly here (default: <$OPENAI_LOGDIR, else samples/ beside the "
         "checkpoint>/<task>_c<given frames>_<N>x<T>_<sampler><steps>_seed<seed>_<checkpoint>)"),
    Flag("overwrite", False, "replace a finished run (its npz files) or an unfinished one with "
         "other settings"),
    Flag("save_video", "gif", "grid per batch beside the npz: " + ", ".join(FORMATS) + " or none",
         check=one_of(FORMATS + ("none",))),
    Flag("fps", 4, "frames per second of gif/mp4 grids", check=at_least(1)),
    Flag("progress", True, "progress bar over denoising steps (rank 0)"),
    Flag("compile", False, "torch.compile the UNet (once per batch shape; falls back to eager "
         "with one line)"),
    Flag("tf32", True, "TensorFloat-32 for float32 matmuls and convolutions (CUDA only; no "
         "effect on CPU)"),
)
SAMPLING_FLAG = {f.name: f for f in SAMPLING_FLAGS}  # for commands that share some of them


def build_parser(description, extra_flags=()):
    parser = make_parser(description)  # prog: the script or installed command that runs
    add_flags(parser, SAMPLING_FLAGS + tuple(extra_flags))
    add_model_flags(parser)
    add_common_flags(parser)
    return parser


def add_model_flags(parser):
    group = parser.add_argument_group("model and diffusion flags (default: args.json beside "
                                      "--model_path)")
    add_flags(group, MODEL_AND_DIFFUSION_FLAGS)


def parse_sampling_flags(parser, argv=None):
    """Parse with the checkpoint's args.json as the model flags' defaults (explicit flags win)."""
    args = parser.parse_args(argv)
    if not args.model_path:
        parser.error("--model_path is required: a modelNNNNNN.pt or ema_RATE_NNNNNN.pt file")
    if not Path(args.model_path).is_file():
        parser.error(f"--model_path {args.model_path!r}: no such file")
    try:
        recorded = checkpoint_flags(args.model_path)
    except (ValueError, OSError) as e:
        parser.error(f"--model_path {args.model_path!r}: {e}")
    parser.set_defaults(**recorded)
    args = parse_flags(parser, argv)
    args.flags_from_args_json = sorted(recorded)
    return args


def model_flags(args):
    return select(args, model_and_diffusion_defaults())


def resolve_sampler(parser, args):
    """--sampler, or the seed's --use_ddim; the two must agree, and only DDIM takes --eta."""
    if not args.sampler:
        args.sampler = "ddim" if args.use_ddim else "ddpm"
    check(parser, args.sampler in SAMPLERS, "sampler", args.sampler,
          f"must be one of {', '.join(SAMPLERS)}")
    check(parser, not args.use_ddim or args.sampler == "ddim", "use_ddim", args.use_ddim,
          f"contradicts --sampler {args.sampler}")
    check(parser, args.eta == 0 or args.sampler == "ddim", "eta", args.eta,
          "only DDIM has eta; add --sampler ddim")


def check_declared(parser, flags, args):
    """Each flag's own check (its declaration), as a one-line flag error."""
    try:
        flag_values(flags, vars(args))
    except UsageError as e:
        parser.error(str(e))


def check_sampling_flags(parser, args, extra_flags=()):
    """The declared checks, then those that read more than one flag."""
    check_declared(parser, SAMPLING_FLAGS + tuple(extra_flags), args)
    resolve_sampler(parser, args)
    check(parser, not args.save_gt or bool(args.data_dir), "save_gt", args.save_gt,
          "needs --data_dir (the ground truth are its clips)")
    flags = model_flags(args)
    if flags["class_cond"] and not flags["num_classes"]:
        flags["num_classes"] = 1  # the checkpoint's count is taken when it is loaded
    check_model_flags(parser, flags)


def sampler_options(args):
    return SamplerOptions(sampler=args.sampler, eta=args.eta, clip_denoised=args.clip_denoised,
                          resample_steps=args.resample_steps, guidance_scale=args.guidance_scale)


def prepare_model(model, info, args):
    """The model on this rank's device, with --tf32 set and --compile applied: what to call."""
    configure_tf32(args.tf32)
    return compile_model(model.to(info.device), args.compile)


def load_model_or_exit(parser, args):
    """(model on the CPU in eval mode, resolved flags); a bad checkpoint is a one-line error."""
    try:
        state_dict = load_state_dict(args.model_path)
        model, flags = model_from_state_dict(state_dict, model_flags(args),
                                             f"--model_path {args.model_path}")
    except (CheckpointError, ModelFlagsMismatch, ValueError) as e:
        parser.error(str(e).splitlines()[0])
    return model.eval(), flags


def check_data(data_dir, flags, seq_len, purpose=""):
    """Scan --data_dir now, so a bad directory is a flag error rather than a failed job.
    `purpose` prefixes the error (e.g. why clips must be this long). Returns the scanned
    ClipSource."""
    try:
        return ClipSource(data_dir, flags, seq_len)
    except (UsageError, ValueError) as e:
        message = str(e).splitlines()[0]
        if not message.startswith("--data_dir"):
            message = f"--data_dir {data_dir!r}: {message}"
        raise UsageError(f"{purpose}: {message}" if purpose else message) from None


__all__ = [
    "SAMPLING_FLAG", "SAMPLING_FLAGS", "add_model_flags", "build_parser", "check_data",
    "check_declared", "check_sampling_flags", "load_model_or_exit", "model_flags",
    "parse_sampling_flags", "prepare_model", "resolve_sampler", "sampler_options",
]
