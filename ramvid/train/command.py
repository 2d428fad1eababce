"""video_train.py (ramvid-train, python -m ramvid.train): flags -> distributed set-up -> the log
dir, locked for this run (`rundir.run_folder`) -> `loop.train`. docs/TRAINING.md lists the flags
and the exit codes (0 done, 1 failure, 2 user mistake, 3 diverged, 75 stopped by a signal).

Each training flag is one `Flag` in `TRAIN_FLAGS`: the parser, --help, its own check,
`TrainConfig` and args.json are built from it. A check that reads several flags goes in
`_check_together`. Every bad value ends the program with exit code 2 and one line.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import dist
from ..checkpoint import CheckpointError, step_from_model_path
from ..config import MODEL_AND_DIFFUSION_FLAGS, PRESETS, check_model_flags
from ..data import VIDEO_EXTENSIONS
from ..diffusion.resample import SCHEDULE_SAMPLERS
from ..errors import UsageError
from ..flags import (Flag, add_common_flags, add_flags, as_flag_error, at_least, comma_items,
                     config_class, exit_if_dry_run, flag_values, make_parser, parse_flags,
                     positive, require, unit_interval, user_errors)
from ..masking import train_mask_problem
from ..runtime import autocast_dtype, limit_heap_fragmentation
from .logs import RunLogger
from .loop import ANNEAL_TYPES, StopRequest, train
from .rundir import run_folder


def _ema_rates(text):
    """'0.9999,0.99' -> ('0.9999', '0.99'): rates as written, since they name the
    ema_RATE_NNNNNN.pt files."""
    rates = comma_items(text)
    if not rates:
        raise ValueError("needs at least one rate")
    if len(set(rates)) != len(rates):
        raise ValueError("lists a rate twice")
    for rate in rates:
        try:
            value = float(rate)
        except ValueError:
            raise ValueError(f"{rate!r} is not a number") from None
        if not 0.0 <= value < 1.0:
            raise ValueError(f"rate {rate} must lie in [0, 1)")
    return tuple(rates)


def _mask_range(text):
    """'a,b' -> (a, b), the half-open range given frames are drawn from; '' -> None (all)."""
    parts = comma_items(text)
    if not parts:
        return None
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise ValueError("expected two integers 'a,b'") from None
    return lo, hi


def _resume_source(path):
    if path in ("", "auto"):
        return None
    try:
        step_from_model_path(path)
    except ValueError:
        return "expected 'auto' or a path to a modelNNNNNN.pt file"
    return None if Path(path).is_file() else "file not found"


TRAIN_FLAGS = (
    Flag("data_dir", None, "folder searched recursively for videos "
         f"({' '.join(sorted(VIDEO_EXTENSIONS))})", required=True,
         check=lambda path: None if path else "must name a folder of videos"),
    Flag("schedule_sampler", "uniform", "how training timesteps are drawn",
         choices=SCHEDULE_SAMPLERS),
    Flag("lr", 1e-4, "AdamW learning rate", check=positive),
    Flag("weight_decay", 0.0, "AdamW weight decay", check=at_least(0)),
    Flag("lr_anneal_steps", 0, "with --anneal_type linear: lr falls linearly to 0 at this step, "
         "where training ends", check=at_least(0)),
    Flag("batch_size", 1, "videos per rank per step", check=positive),
    Flag("microbatch", -1, "videos per forward/backward pass (gradient accumulation); -1 = "
         "--batch_size"),
    Flag("ema_rate", "0.9999", "comma list of EMA decay rates; one ema_RATE_NNNNNN.pt per rate",
         convert=_ema_rates),
    Flag("log_interval", 10, "steps between log lines / progress.csv rows", check=positive),
    Flag("save_interval", 10000, "steps between checkpoints", check=positive),
    Flag("resume_checkpoint", "", "path/modelNNNNNN.pt, or 'auto' (newest complete checkpoint "
         "in the log dir, printed at start; an empty value does the same)",
         check=_resume_source),
    Flag("use_fp16", False, "float16 autocast with a GradScaler (CUDA only)"),
    Flag("bf16", False, "bfloat16 autocast (CPU or CUDA)"),
    Flag("fp16_scale_growth", 1e-3, "accepted for compatibility; the GradScaler adapts the loss "
         "scale itself"),
    Flag("clip", 1.0, "gradient-norm clipping threshold, applied to unscaled gradients; 0 = off",
         check=at_least(0)),
    Flag("seed", 0, "seed of every random stream (per rank: model init, masks, timesteps, "
         "noise, data)", check=at_least(0)),
    Flag("anneal_type", "none", "learning-rate schedule", choices=ANNEAL_TYPES),
    Flag("steps_drop", 0, "with --anneal_type step: steps between lr drops", check=at_least(0)),
    Flag("drop", 0.0, "with --anneal_type step: lr factor per drop", check=at_least(0)),
    Flag("decay", 0.0, "with --anneal_type time_based: lr / (1 + decay * step)",
         check=at_least(0)),
    Flag("max_num_mask_frames", 4, "K: a conditioned video gets 1..K given frames",
         check=at_least(0)),
    Flag("mask_range", "", "'a,b': given frames are drawn from [a, b); empty = all frames",
         convert=_mask_range),
    Flag("uncondition_rate", 0.0, "p: probability that a video gets no given frame",
         check=unit_interval),
    Flag("exclude_conditional", True, "average the loss over the frames that are not given only"),
    Flag("max_steps", 0, "stop after this total step with a final checkpoint; 0 = until stopped",
         check=at_least(0)),
    Flag("num_workers", 2, "data-loading worker processes per rank", check=at_least(0)),
    Flag("max_bad_steps", 20, "stop after this many consecutive steps with a non-finite loss or "
         "gradient (0 = never)", check=at_least(0)),
    Flag("dist_timeout", 600.0, "seconds a collective may wait for the other ranks before the "
         "job fails", check=positive),
    Flag("sample_interval", 0, "every this many steps rank 0 samples held-out clips of "
         "--val_data_dir (prediction, infilling; EMA weights) into the log dir; 0 = off",
         check=at_least(0)),
    Flag("val_data_dir", "", "held-out videos for --sample_interval previews and a held-out loss"),
    Flag("log_dir", "", "folder for checkpoints and logs (default: $OPENAI_LOGDIR, else "
         "runs/<date-time>-<pid> for one process; required under a launcher or in Slurm)"),
    Flag("overwrite", False, "allow a fresh start in a log dir holding another run's checkpoints "
         "(they are deleted first)"),
    Flag("break_lock", False, "take over a lock held by a process on another host (its heartbeat "
         "age is shown) — only when that run is known to be dead"),
    Flag("keep_checkpoints", 0, "keep only the newest N complete checkpoints; 0 = keep all",
         check=at_least(0)),
    Flag("keep_every", 0, "with --keep_checkpoints: also keep every checkpoint whose step is a "
         "multiple of K; 0 = none", check=at_least(0)),
    Flag("compile", False, "torch.compile the UNet (compiled once per input shape; falls back to "
         "eager with a one-line message if compilation fails)"),
    Flag("tf32", True, "TensorFloat-32 for float32 matmuls and convolutions (CUDA only; no "
         "effect on CPU)"),
)


@dataclass(frozen=True)
class TrainConfig(config_class("TrainFlags", TRAIN_FLAGS)):
    """The training flags' values, one field per TRAIN_FLAGS entry (model and diffusion flags
    travel as their own dict). ema_rate is a tuple of rates as written, mask_range (a, b) or
    None, microbatch the resolved size."""

    def __post_init__(self):
        if self.microbatch in (-1, 0):  # the command line's -1: the whole batch in one pass
            object.__setattr__(self, "microbatch", self.batch_size)


def build_parser():
    parser = make_parser("Train a RaMViD video diffusion model.")
    add_flags(parser, TRAIN_FLAGS)
    add_flags(parser, MODEL_AND_DIFFUSION_FLAGS)
    add_common_flags(parser, PRESETS)
    return parser


def parse_train_args(argv=None):
    """argv -> (TrainConfig, model_flags dict); UsageError on any bad flag; with --dry_run
    prints the resolved configuration as JSON and exits 0."""
    args = parse_flags(build_parser(), argv, PRESETS)
    model_flags = {f.name: getattr(args, f.name) for f in MODEL_AND_DIFFUSION_FLAGS}
    cfg = TrainConfig(**flag_values(TRAIN_FLAGS, vars(args)))
    flag_values(MODEL_AND_DIFFUSION_FLAGS, model_flags)
    _check_together(cfg, model_flags)
    # With --class_cond the class count comes from the data: a stand-in checks the rest.
    check_model_flags(dict(model_flags, num_classes=max(1, model_flags["num_classes"]))
                      if model_flags["class_cond"] else model_flags)
    exit_if_dry_run(args, {**model_flags, **cfg.to_json()})
    for flag in ("data_dir", "val_data_dir"):  # data, not flags: a dry run needs none
        folder = getattr(cfg, flag)
        require(not folder or Path(folder).is_dir(), flag, folder, "is not an existing directory")
    return cfg, model_flags


def _check_together(cfg, model_flags):
    """The checks that read more than one flag (each flag's own are in its declaration), and
    the one that reads the launch."""
    # A requeued job or a relaunch continues only in the folder of its last start.
    job, launcher = os.environ.get("SLURM_JOB_ID"), dist.detect_launch().launcher
    if not (cfg.log_dir or os.environ.get("OPENAI_LOGDIR")) and (job or launcher != "none"):
        raise UsageError(f"--log_dir (or $OPENAI_LOGDIR) is required "
                         f"{f'in Slurm job {job}' if job else f'under {launcher}'}: a "
                         f"default folder would be new on every start, so a requeued or "
                         f"restarted job would start over; name one folder for all its starts")

    written = {**model_flags, **cfg.to_json()}  # the values as the command line writes them

    def check(condition, flag, reason):
        require(condition, flag, written[flag], reason)

    check(1 <= cfg.microbatch <= cfg.batch_size, "microbatch",
          f"must be -1 (= batch_size) or in 1..batch_size ({cfg.batch_size})")
    if cfg.keep_every:
        check(cfg.keep_checkpoints > 0, "keep_every",
              "only applies with --keep_checkpoints N (without it every checkpoint is kept)")
        check(cfg.keep_every % cfg.save_interval == 0, "keep_every",
              f"must be a multiple of --save_interval ({cfg.save_interval}), or no checkpoint "
              "is ever kept by it")
    # Schedule parameters that the chosen schedule would not read are an error, not ignored.
    for flag, anneal_type in (("lr_anneal_steps", "linear"), ("steps_drop", "step"),
                              ("drop", "step"), ("decay", "time_based")):
        given = getattr(cfg, flag)
        if anneal_type == cfg.anneal_type:
            check(given > 0, flag, f"must be positive with --anneal_type {anneal_type}")
        else:
            check(given == 0, flag, f"is only read with --anneal_type {anneal_type}")

    problem = train_mask_problem(model_flags["seq_len"], cfg.max_num_mask_frames, cfg.mask_range)
    if problem:
        check(False, *problem)

    try:
        autocast_dtype(cfg.use_fp16, cfg.bf16, "cuda" if torch.cuda.is_available() else "cpu")
    except ValueError as e:
        raise as_flag_error(e) from None
    check(model_flags["class_cond"] or model_flags["num_classes"] == 0, "num_classes",
          "is only used with --class_cond True")
    if cfg.sample_interval:
        check(bool(cfg.val_data_dir), "sample_interval",
              "needs --val_data_dir (the held-out clips to sample)")
    if cfg.val_data_dir:
        check(cfg.sample_interval > 0, "val_data_dir", "is only read with --sample_interval N > 0")


def main(argv=None):
    with user_errors():  # a bad flag, or a log dir this run may not start in: one line, exit 2
        cfg, model_flags = parse_train_args(argv)
        limit_heap_fragmentation()
        # A stop signal from before the rendezvous to the process's end ends the run with a
        # checkpoint after its first step; a repeat after the checkpoint changes nothing.
        with StopRequest() as stop, \
                dist.process_group(cfg.dist_timeout, one_line=((CheckpointError, 1),)) as info, \
                run_folder(cfg, model_flags, info) as start, \
                RunLogger(start.logdir, enabled=info.is_main) as log:
            return train(cfg, model_flags, info, start, log, stop)
