"""Training flags: names and defaults of the paper's commands, validated into a TrainConfig.

Every bad value ends the program with exit code 2 and one line naming the flag and the value.
"""
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import model_and_diffusion_defaults
from ..config import MODEL_AND_DIFFUSION_FLAGS
from ..checkpoint import step_from_model_path
from ..cli import (add_common_flags, check, check_model_flags, exit_if_dry_run, flag_error,
                   make_parser, parse_flags)
from ..flags import add_flags, select

ANNEAL_TYPES = ("none", "linear", "step", "time_based")
SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment", "harmonic")

HELP = {
    "schedule_sampler": f"how timesteps are drawn: {', '.join(SCHEDULE_SAMPLERS)}",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "lr_anneal_steps": "with --anneal_type linear: lr falls linearly to 0 at this step, where "
                       "training ends",
    "batch_size": "videos per rank per step",
    "microbatch": "videos per forward/backward pass (gradient accumulation); -1 = batch_size",
    "ema_rate": "comma list of EMA decay rates; one ema_RATE_NNNNNN.pt per rate",
    "log_interval": "steps between log lines / progress.csv rows",
    "save_interval": "steps between checkpoints",
    "resume_checkpoint": "path/modelNNNNNN.pt, or 'auto' (newest complete checkpoint in the log "
                         "dir, printed at start; an empty value does the same)",
    "use_fp16": "float16 autocast with a GradScaler (CUDA only)",
    "bf16": "bfloat16 autocast (CPU or CUDA)",
    "fp16_scale_growth": "accepted for compatibility; the GradScaler adapts the loss scale itself",
    "clip": "gradient-norm clipping threshold, applied to unscaled gradients; 0 = off",
    "seed": "seed of every random stream (per rank: model init, masks, timesteps, noise, data)",
    "anneal_type": f"learning-rate schedule: {', '.join(ANNEAL_TYPES)}",
    "steps_drop": "with --anneal_type step: steps between lr drops",
    "drop": "with --anneal_type step: lr factor per drop",
    "decay": "with --anneal_type time_based: lr / (1 + decay * step)",
    "max_num_mask_frames": "K: a conditioned video gets 1..K given frames",
    "mask_range": "'a,b': given frames are drawn from [a, b); empty = all frames",
    "uncondition_rate": "p: probability that a video gets no given frame",
    "exclude_conditional": "average the loss over the frames that are not given only",
    "max_steps": "stop after this total step with a final checkpoint; 0 = until stopped",
    "num_workers": "data-loading worker processes per rank",
    "max_bad_steps": "stop after this many consecutive steps with a non-finite loss or gradient "
                     "(0 = never)",
    "dist_timeout": "seconds a collective may wait for the other ranks before the job fails",
    "sample_interval": "every this many steps rank 0 samples held-out clips of --val_data_dir "
                       "(prediction, infilling; EMA weights) into the log dir; 0 = off",
    "val_data_dir": "held-out videos for --sample_interval previews and a held-out loss",
    "log_dir": "folder for checkpoints and logs (default: $OPENAI_LOGDIR, else a new temp folder)",
    "overwrite": "allow a fresh start in a log dir holding another run's checkpoints (they are "
                 "deleted first)",
    "keep_checkpoints": "keep only the newest N complete checkpoints; 0 = keep all",
    "keep_every": "with --keep_checkpoints: also keep every checkpoint whose step is a multiple "
                  "of K; 0 = none",
    "compile": "torch.compile the UNet (compiled once per input shape; falls back to eager with "
               "a one-line message if compilation fails)",
    "tf32": "TensorFloat-32 for float32 matmuls and convolutions (CUDA only; no effect on CPU)",
}


def training_defaults():
    """Every training flag except --data_dir, with its default."""
    return dict(
        schedule_sampler="uniform",
        lr=1e-4,
        weight_decay=0.0,
        lr_anneal_steps=0,
        batch_size=1,
        microbatch=-1,
        ema_rate="0.9999",
        log_interval=10,
        save_interval=10000,
        resume_checkpoint="",
        use_fp16=False,
        bf16=False,
        fp16_scale_growth=1e-3,
        clip=1.0,
        seed=0,
        anneal_type="none",
        steps_drop=0,
        drop=0.0,
        decay=0.0,
        max_num_mask_frames=4,
        mask_range="",
        uncondition_rate=0.0,
        exclude_conditional=True,
        max_steps=0,
        num_workers=2,
        max_bad_steps=20,
        dist_timeout=600.0,
        sample_interval=0,
        val_data_dir="",
        log_dir="",
        overwrite=False,
        keep_checkpoints=0,
        keep_every=0,
        compile=False,
        tf32=True,
    )


@dataclass(frozen=True)
class TrainConfig:
    """The validated training flags (model and diffusion flags travel as their own dict)."""
    data_dir: str
    schedule_sampler: str = "uniform"
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_anneal_steps: int = 0
    batch_size: int = 1
    microbatch: int = 1  # resolved: 1 <= microbatch <= batch_size
    ema_rate: tuple = ("0.9999",)  # rates as written, e.g. "0.9999" names ema_0.9999_NNNNNN.pt
    log_interval: int = 10
    save_interval: int = 10000
    resume_checkpoint: str = ""
    use_fp16: bool = False
    bf16: bool = False
    fp16_scale_growth: float = 1e-3
    clip: float = 1.0
    seed: int = 0
    anneal_type: str = "none"
    steps_drop: int = 0
    drop: float = 0.0
    decay: float = 0.0
    max_num_mask_frames: int = 4
    mask_range: tuple = None  # (first, last) half-open, or None for all frames
    uncondition_rate: float = 0.0
    exclude_conditional: bool = True
    max_steps: int = 0
    num_workers: int = 2
    max_bad_steps: int = 20
    dist_timeout: float = 600.0
    sample_interval: int = 0
    val_data_dir: str = ""
    log_dir: str = ""
    overwrite: bool = False
    keep_checkpoints: int = 0
    keep_every: int = 0
    compile: bool = False
    tf32: bool = True

    def to_json(self):
        out = asdict(self)
        out["ema_rate"] = ",".join(self.ema_rate)
        out["mask_range"] = "" if self.mask_range is None else ",".join(map(str, self.mask_range))
        return out


def build_parser(prog="video_train.py"):
    parser = make_parser("Train a RaMViD video diffusion model.", prog=prog)
    parser.add_argument("--data_dir", required=True,
                        help="folder searched recursively for .mp4/.avi/.gif videos")
    add_flags(parser, training_defaults(), HELP)
    add_flags(parser, MODEL_AND_DIFFUSION_FLAGS)
    for action in parser._actions:  # fixed vocabularies: argparse names the choices on error
        if action.dest == "anneal_type":
            action.choices = ANNEAL_TYPES
        elif action.dest == "schedule_sampler":
            action.choices = SCHEDULE_SAMPLERS
    add_common_flags(parser)
    return parser


def parse_train_args(argv=None, prog="video_train.py"):
    """argv -> (TrainConfig, model_flags dict, parser). Exits 2 on any bad flag; with --dry_run
    prints the resolved configuration as JSON and exits 0."""
    parser = build_parser(prog)
    args = parse_flags(parser, argv)
    model_flags = select(args, model_and_diffusion_defaults().keys())
    cfg = _validate(parser, args, model_flags)
    exit_if_dry_run(args, {**model_flags, **cfg.to_json()})
    return cfg, model_flags, parser


def _positive(parser, args, *flags, allow_zero=False):
    for flag in flags:
        value = getattr(args, flag)
        ok = value >= 0 if allow_zero else value > 0
        check(parser, ok, flag, value, "must be >= 0" if allow_zero else "must be positive")


def _parse_mask_range(parser, text, seq_len):
    if not text.strip():
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        flag_error(parser, "mask_range", text, "expected two integers 'a,b'")
    check(parser, 0 <= lo < hi <= seq_len, "mask_range", text,
          f"needs 0 <= a < b <= seq_len ({seq_len})")
    return lo, hi


def _parse_ema_rates(parser, text):
    rates = [r.strip() for r in text.split(",") if r.strip()]
    check(parser, bool(rates), "ema_rate", text, "needs at least one rate")
    check(parser, len(set(rates)) == len(rates), "ema_rate", text, "lists a rate twice")
    for rate in rates:
        try:
            value = float(rate)
        except ValueError:
            flag_error(parser, "ema_rate", text, f"{rate!r} is not a number")
        check(parser, 0.0 <= value < 1.0, "ema_rate", text, f"rate {rate} must lie in [0, 1)")
    return tuple(rates)


def _validate(parser, args, model_flags):
    _positive(parser, args, "batch_size", "lr", "log_interval", "save_interval", "dist_timeout")
    _positive(parser, args, "weight_decay", "lr_anneal_steps", "clip", "seed", "max_steps",
              "num_workers", "max_bad_steps", "max_num_mask_frames", "steps_drop", "drop",
              "decay", "sample_interval", "keep_checkpoints", "keep_every", allow_zero=True)
    if args.keep_every:
        check(parser, args.keep_checkpoints > 0, "keep_every", args.keep_every,
              "only applies with --keep_checkpoints N (without it every checkpoint is kept)")
        check(parser, args.keep_every % args.save_interval == 0, "keep_every", args.keep_every,
              f"must be a multiple of --save_interval ({args.save_interval}), or no checkpoint "
              f"is ever kept by it")
    microbatch = args.batch_size if args.microbatch in (-1, 0) else args.microbatch
    check(parser, 1 <= microbatch <= args.batch_size, "microbatch", args.microbatch,
          f"must be -1 (= batch_size) or in 1..batch_size ({args.batch_size})")

    # Schedule parameters that the chosen schedule would not read are an error, not ignored.
    reader = {"lr_anneal_steps": "linear", "steps_drop": "step", "drop": "step",
              "decay": "time_based"}
    for flag, anneal_type in reader.items():
        value = getattr(args, flag)
        if anneal_type == args.anneal_type:
            check(parser, value > 0, flag, value, f"must be positive with --anneal_type {anneal_type}")
        else:
            check(parser, value == 0, flag, value, f"is only read with --anneal_type {anneal_type}")

    check(parser, 0.0 <= args.uncondition_rate <= 1.0, "uncondition_rate", args.uncondition_rate,
          "must lie in [0, 1]")
    seq_len = args.seq_len
    check(parser, seq_len >= 1, "seq_len", seq_len, "must be positive")
    mask_range = _parse_mask_range(parser, args.mask_range, seq_len)
    lo, hi = mask_range or (0, seq_len)
    check(parser, args.max_num_mask_frames <= hi - lo, "max_num_mask_frames",
          args.max_num_mask_frames, f"exceeds the {hi - lo} frames of mask_range [{lo}, {hi})")
    ema_rates = _parse_ema_rates(parser, args.ema_rate)

    check(parser, not (args.use_fp16 and args.bf16), "bf16", args.bf16,
          "cannot be combined with --use_fp16 True; choose one")
    check(parser, not args.use_fp16 or torch.cuda.is_available(), "use_fp16", args.use_fp16,
          "needs a CUDA GPU (float16 autocast with loss scaling); on CPU use --bf16 True")

    if args.class_cond:
        # The class count comes from the data; validate the rest with a stand-in.
        model_flags = dict(model_flags, num_classes=max(1, model_flags["num_classes"]))
    else:
        check(parser, model_flags["num_classes"] == 0, "num_classes", model_flags["num_classes"],
              "is only used with --class_cond True")
    check_model_flags(parser, model_flags)

    data_dir = Path(args.data_dir)
    check(parser, bool(args.data_dir), "data_dir", args.data_dir, "must name a folder of videos")
    check(parser, data_dir.is_dir(), "data_dir", args.data_dir, "is not an existing directory")

    if args.sample_interval:
        check(parser, bool(args.val_data_dir), "sample_interval", args.sample_interval,
              "needs --val_data_dir (the held-out clips to sample)")
    if args.val_data_dir:
        check(parser, args.sample_interval > 0, "val_data_dir", args.val_data_dir,
              "is only read with --sample_interval N > 0")
        check(parser, Path(args.val_data_dir).is_dir(), "val_data_dir", args.val_data_dir,
              "is not an existing directory")

    resume = args.resume_checkpoint
    if resume and resume != "auto":
        try:
            step_from_model_path(resume)
        except ValueError:
            flag_error(parser, "resume_checkpoint", resume,
                       "expected 'auto' or a path to a modelNNNNNN.pt file")
        check(parser, Path(resume).is_file(), "resume_checkpoint", resume, "file not found")

    return TrainConfig(
        data_dir=args.data_dir, schedule_sampler=args.schedule_sampler, lr=args.lr,
        weight_decay=args.weight_decay, lr_anneal_steps=args.lr_anneal_steps,
        batch_size=args.batch_size, microbatch=microbatch, ema_rate=ema_rates,
        log_interval=args.log_interval, save_interval=args.save_interval,
        resume_checkpoint=resume, use_fp16=args.use_fp16, bf16=args.bf16,
        fp16_scale_growth=args.fp16_scale_growth, clip=args.clip, seed=args.seed,
        anneal_type=args.anneal_type, steps_drop=args.steps_drop, drop=args.drop,
        decay=args.decay, max_num_mask_frames=args.max_num_mask_frames, mask_range=mask_range,
        uncondition_rate=args.uncondition_rate, exclude_conditional=args.exclude_conditional,
        max_steps=args.max_steps, num_workers=args.num_workers,
        max_bad_steps=args.max_bad_steps, dist_timeout=args.dist_timeout,
        sample_interval=args.sample_interval, val_data_dir=args.val_data_dir,
        log_dir=args.log_dir, overwrite=args.overwrite, keep_checkpoints=args.keep_checkpoints,
        keep_every=args.keep_every, compile=args.compile, tf32=args.tf32,
    )
