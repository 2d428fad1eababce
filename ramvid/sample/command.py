"""The sampling commands video_sample.py (ramvid-sample) and video_sample_long.py
(ramvid-sample-long): flags -> a SampleJob -> `sample_to_folder` on every rank, every user error
one line before any process group exists. video_eval.py --model_path samples through the same
declarations (`SAMPLING_FLAG`) and helpers.
"""
import json
import math
from contextlib import contextmanager
from dataclasses import fields
from functools import partial
from pathlib import Path

import torch

from .. import dist
from ..checkpoint import CheckpointError
from ..config import (MODEL_AND_DIFFUSION_FLAGS, PRESETS, check_model_flags, create_diffusion,
                      model_and_diffusion_defaults)
from ..diffusion.sampling import SAMPLERS, check_sampler
from ..errors import UsageError
from ..flags import (Flag, add_common_flags, add_flags, as_flag_error, at_least, exit_if_dry_run,
                     flag_values, given_on_command_line, int_tuple, make_parser, one_of,
                     parse_flags, require, unit_interval, user_errors)
from ..masking import frame_indices_problem
from ..runtime import autocast_dtype, compile_model, configure_tf32
from ..video_io import FORMATS
from .batch import AUTOCAST_DTYPES, ClipSource, SamplerOptions
from .loading import checkpoint_flags, flag_sources, model_from_checkpoint
from .long import SCHEMES, LongSettings, check_long_flags
from .run import COLLECTIVE_TIMEOUT_S, SampleJob, cost, sample_to_folder


SAMPLING_FLAGS = (
    Flag("model_path", "", "modelNNNNNN.pt or ema_RATE_NNNNNN.pt; model flags default to "
         "args.json beside it (a checkpoint without one: --preset or the model flags)"),
    Flag("num_samples", 16, "exactly this many videos, over all ranks", check=at_least(1)),
    Flag("batch_size", 8, "videos per batch on each rank", check=at_least(1)),
    Flag("seed", 0, "sample i uses a generator seeded by hash(seed, i): reproducible alone",
         check=at_least(0)),
    Flag("sampler", "", f"{' | '.join(SAMPLERS)} (default: ddim with --use_ddim True, else "
         "ddpm)"),
    Flag("use_ddim", False, "the original code's name for --sampler ddim"),
    Flag("eta", 0.0, "DDIM noise in [0, 1] (0 = deterministic, 1 = ancestral-like); needs "
         "--sampler ddim", check=unit_interval),
    Flag("clip_denoised", True, "clip each predicted clean video to [-1, 1]"),
    Flag("resample_steps", 1, "denoise/re-noise repetitions per step (harmonises given and new "
         "frames)", check=at_least(1)),
    Flag("guidance_scale", 1.0, "frame guidance w: eps_uncond + w (eps_cond - eps_uncond); 1 = "
         "plain conditioning",
         check=lambda w: None if math.isfinite(w) and w >= 0 else "must be a finite number >= 0"),
    Flag("data_dir", "", "videos whose first frames condition the samples: all files in sorted "
         "order, or a seeded uniform draw when fewer are needed (clip_files in sample_args.json)"),
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
    Flag("bf16", False, "run the network under bfloat16 autocast (CPU or CUDA); the sampler's "
         "arithmetic stays float32"),
    Flag("use_fp16", False, "run the network under float16 autocast (CUDA only); the sampler's "
         "arithmetic stays float32"),
    Flag("break_lock", False, "take over the run folder's lock held by a process on another "
         "host (its heartbeat age is shown): only when that run is known to be dead"),
)
SAMPLING_FLAG = {f.name: f for f in SAMPLING_FLAGS}  # for commands that share some of them

SAMPLE_FLAGS = SAMPLING_FLAGS + (
    Flag("cond_frames", "0,", "given frame indices, e.g. 0,1, (prediction) or 0,19, "
         "(infilling)", convert=int_tuple),
)
SAMPLE_DESCRIPTION = ("Sample videos from a trained ramvid model: prediction, infilling or "
                      "unconditional generation.")
LONG_DESCRIPTION = "Sample videos longer than the model's seq_len frames, window by window."
LONG_FLAGS = SAMPLING_FLAGS + (
    Flag("total_length", 60, "frames per output video (any length)"),
    Flag("max_cond_frames", 4, "known frames given to each window"),
    Flag("prediction_step", 0, "new frames kept per autoregressive window (0: seq_len - "
         "max_cond_frames)"),
    Flag("start_frames", -1, "first frames of each --data_dir clip taken as known (-1: "
         "max_cond_frames; 0 or --cond_generation False: unconditional first window)"),
    Flag("scheme", "autoregressive", " or ".join(SCHEMES), check=one_of(SCHEMES)),
)


# --------------------------------------------------------------------------- shared helpers
def add_model_flags(parser):
    """The model and diffusion flags, then --preset and --dry_run."""
    group = parser.add_argument_group("model and diffusion flags (default: args.json beside "
                                      "--model_path)")
    add_flags(group, MODEL_AND_DIFFUSION_FLAGS)
    add_common_flags(parser, PRESETS)


def parse_sampling_flags(parser, argv, flags):
    """Parse with the checkpoint's args.json as the model flags' defaults (explicit flags and
    --preset win); `flags`, the command's own declarations, are checked and converted."""
    args = parser.parse_args(argv)
    if not args.model_path:
        raise UsageError("--model_path is required: a modelNNNNNN.pt or ema_RATE_NNNNNN.pt file")
    if not Path(args.model_path).is_file():
        raise UsageError(f"--model_path {args.model_path!r}: no such file")
    try:
        recorded = checkpoint_flags(args.model_path)
    except (ValueError, OSError) as e:
        raise UsageError(f"--model_path {args.model_path!r}: {e}") from None
    parser.set_defaults(**recorded)
    args = parse_flags(parser, argv, PRESETS)
    vars(args).update(flag_values(flags, vars(args)))
    try:
        args.flag_sources = flag_sources(args.model_path, recorded, args.preset,
                                         given_on_command_line(parser, argv))
    except ValueError as e:
        raise UsageError(f"--model_path {e}") from None
    if not args.sampler:
        args.sampler = "ddim" if args.use_ddim else "ddpm"
    require(not args.use_ddim or args.sampler == "ddim", "use_ddim", args.use_ddim,
            f"contradicts --sampler {args.sampler}")
    try:
        check_sampler(args.sampler, args.eta)
        dtype = autocast_dtype(args.use_fp16, args.bf16,
                               "cuda" if torch.cuda.is_available() else "cpu")
    except ValueError as e:
        raise as_flag_error(e) from None
    args.precision = next(k for k, v in AUTOCAST_DTYPES.items() if v == dtype)
    model_flags = select_model_flags(args)
    if model_flags["class_cond"] and not model_flags["num_classes"]:
        model_flags["num_classes"] = 1  # the checkpoint's count is taken when it is loaded
    check_model_flags(model_flags)
    return args


def select_model_flags(args):
    return {k: getattr(args, k) for k in model_and_diffusion_defaults()}


def sampler_options(args):
    return SamplerOptions(**{f.name: getattr(args, f.name) for f in fields(SamplerOptions)})


def load_checkpoint(args):
    """(model on the CPU in eval mode, resolved flags); a bad checkpoint is a one-line error."""
    try:
        model, flags = model_from_checkpoint(args.model_path, select_model_flags(args),
                                             f"--model_path {args.model_path}")
    except (CheckpointError, ValueError) as e:
        raise UsageError(str(e).splitlines()[0]) from None
    if dist.detect_launch().rank == 0:  # which flags came from where
        by_source = {}
        for flag, source in args.flag_sources.items():
            by_source.setdefault(source, []).append(flag)
        print("model flags: " + "; ".join(
            f"{source} ({len(names)})" if source in ("args.json", "default")
            else f"{source}: {', '.join(names)}" for source, names in by_source.items()),
            flush=True)
    return model, flags


def check_data(data_dir, flags, seq_len, purpose=""):
    """The scanned ClipSource: scanned now, a bad --data_dir is a flag error rather than a failed
    job. `purpose` prefixes the error (e.g. why clips must be this long)."""
    try:
        return ClipSource(data_dir, flags, seq_len)
    except ValueError as e:
        message = str(e).splitlines()[0]
        if not message.startswith("--data_dir"):
            message = f"--data_dir {data_dir!r}: {message}"
        raise UsageError(f"{purpose}: {message}" if purpose else message) from None


@contextmanager
def model_on_every_rank(model, args):
    """`with model_on_every_rank(model, args) as (net, info):` the launcher's process group
    around a block (an error on one rank ends them all), and the model on this rank's device
    with --tf32 and --compile applied."""
    with dist.process_group(timeout_s=COLLECTIVE_TIMEOUT_S) as info:
        configure_tf32(args.tf32)
        yield compile_model(model.to(info.device), args.compile), info


def rate_key(flags, args, batch_size):
    """Where a run remembers its measured seconds per step: the architecture and what sets the
    pace of a step (batch, precision, compile)."""
    shape = {k: flags[k] for k in ("image_size", "num_channels", "num_res_blocks", "num_heads",
                                   "attention_resolutions", "channel_mult", "learn_sigma",
                                   "rgb", "seq_len", "scale_time_dim")}
    return json.dumps({**shape, "batch_size": batch_size, "precision": args.precision,
                       "compile": args.compile}, sort_keys=True)


def dry_run(args, job, extra=None):
    """--dry_run: print the resolved flags and the job's cost as JSON, exit 0 (no data, no
    model, no GPU needed)."""
    flags = select_model_flags(args)
    plan = cost(job, create_diffusion(**flags), flags["seq_len"],
                rate_key(flags, args, job.batch_size))
    exit_if_dry_run(args, {**vars(args), **(extra or {}), "plan": plan})


# --------------------------------------------------------------------------- the commands
def sample_main(argv=None, long_videos=False):
    """video_sample.py; with long_videos, video_sample_long.py."""
    with user_errors():
        declared = LONG_FLAGS if long_videos else SAMPLE_FLAGS
        # prog: the script or installed command that runs
        parser = make_parser(LONG_DESCRIPTION if long_videos else SAMPLE_DESCRIPTION)
        add_flags(parser, declared)
        add_model_flags(parser)
        args = parse_sampling_flags(parser, argv, declared)
        require(not args.save_gt or bool(args.data_dir), "save_gt", args.save_gt,
                "needs --data_dir (the ground truth are its clips)")
        long = None
        if long_videos:  # video_sample_long.py's cross-flag rules
            if args.start_frames < 0:
                args.start_frames = args.max_cond_frames
            if not args.cond_generation:
                args.start_frames = 0
            if args.prediction_step == 0:
                args.prediction_step = args.seq_len - args.max_cond_frames
            try:
                check_long_flags(args.total_length, args.seq_len, args.max_cond_frames,
                                 args.prediction_step, args.start_frames)
            except ValueError as e:
                raise as_flag_error(e) from None
            require(args.start_frames < args.total_length, "start_frames", args.start_frames,
                    f"must be fewer than --total_length {args.total_length}")
            require(not args.start_frames or bool(args.data_dir), "data_dir", "",
                    "is needed for the start frames (or pass --start_frames 0)")
            long = LongSettings(**{f.name: getattr(args, f.name) for f in fields(LongSettings)})
            cond_frames = tuple(range(args.start_frames))
        else:  # video_sample.py's
            frames, seq_len = args.cond_frames, args.seq_len
            shown = ",".join(map(str, frames))
            reason = frame_indices_problem(frames, seq_len)
            require(reason is None, "cond_frames", shown, reason)
            if args.cond_generation:
                require(bool(frames), "cond_frames", "", "is empty; name the given frames or "
                        "pass --cond_generation False")
                require(len(frames) < seq_len, "cond_frames", shown,
                        f"gives all {seq_len} frames; nothing is left to sample")
                require(bool(args.data_dir), "data_dir", "", "is needed for conditional "
                        "sampling (--cond_generation True takes the given frames from its clips)")
            else:
                require(args.guidance_scale == 1.0, "guidance_scale", args.guidance_scale,
                        "frame guidance needs given frames (--cond_generation True)")
            cond_frames = tuple(sorted(frames)) if args.cond_generation else ()
        job = SampleJob(
            model_path=args.model_path, num_samples=args.num_samples, batch_size=args.batch_size,
            seed=args.seed, cond_frames=cond_frames, data_dir=args.data_dir,
            samples_per_clip=args.samples_per_clip, save_gt=args.save_gt,
            chunk_size=args.chunk_size, options=sampler_options(args), long=long,
            save_video=args.save_video, fps=args.fps, progress=args.progress)
        dry_run(args, job)
        model, flags = load_checkpoint(args)
        length = job.clip_frames(flags["seq_len"], flags["class_cond"])  # 0: no clip is read
        purpose = (f"--save_gt True needs videos of >= --total_length {length} frames"
                   if long and job.save_gt else "")
        scanned = check_data(job.data_dir, flags, length, purpose) if length else None
        with model_on_every_rank(model, args) as (net, info):
            paths = sample_to_folder(net, create_diffusion(**flags), flags, job, info,
                                     out_dir=args.out_dir or None, overwrite=args.overwrite,
                                     break_lock=args.break_lock,
                                     rate_key=rate_key(flags, args, job.batch_size),
                                     scanned=scanned)
        if paths is not None:  # rank 0
            for name in ("samples", "gt"):
                if name in paths:
                    print(f"wrote {paths[name]}")
            print(f"evaluate: python scripts/video_eval.py --samples {paths['folder']}")


# video_sample_long.py and the installed ramvid-sample-long
sample_long_main = partial(sample_main, long_videos=True)
