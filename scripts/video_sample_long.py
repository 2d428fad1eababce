"""Sample videos longer than the model's seq_len frames, window by window.

    python scripts/video_sample_long.py --model_path logs/run/ema_0.9999_200000.pt \
        --data_dir data/test --start_frames 2 --total_length 60 \
        --max_cond_frames 4 --prediction_step 12 --scheme autoregressive

--scheme autoregressive: each window of seq_len frames gives the last --max_cond_frames known
frames and keeps --prediction_step new ones. --scheme hierarchical: keyframes over the whole
length first, then windows that fill in between them. --start_frames K takes the first K frames
of each --data_dir clip as known (0: the first window is unconditional). Output as
video_sample.py: <N>x<total_length>x<H>x<W>x<C>.npz in $OPENAI_LOGDIR. See docs/SAMPLING.md.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid import create_diffusion, dist
from ramvid.cli import check
from ramvid.sample.cli import (build_parser, check_data_or_exit, check_sampling_flags, dry_run,
                               load_model_or_exit, parse_sampling_flags, print_outputs,
                               sampler_options, write_sample_args)
from ramvid.sample.long import SCHEMES, check_long_flags, plan_long_video
from ramvid.sample.output import sample_logdir
from ramvid.sample.run import LongJob, long_video_run

GATHER_TIMEOUT_S = 6 * 3600  # see video_sample.py

LONG_DEFAULTS = dict(total_length=60, max_cond_frames=4, prediction_step=0, start_frames=-1,
                     scheme="autoregressive")
LONG_HELP = {
    "total_length": "frames per output video (any length)",
    "max_cond_frames": "known frames given to each window",
    "prediction_step": "new frames kept per autoregressive window (0: seq_len - max_cond_frames)",
    "start_frames": "first frames of each --data_dir clip taken as known (-1: max_cond_frames; "
                    "0 or --cond_generation False: unconditional first window)",
    "scheme": " or ".join(SCHEMES),
}


def parse_args(argv=None):
    parser = build_parser(__doc__.splitlines()[0], LONG_DEFAULTS, LONG_HELP, prog=Path(__file__).name)
    args = parse_sampling_flags(parser, argv)
    check_sampling_flags(parser, args)
    check(parser, args.scheme in SCHEMES, "scheme", args.scheme, f"must be one of {', '.join(SCHEMES)}")
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
        flag, _, reason = str(e).partition("=")
        parser.error(f"--{flag} {reason}")
    check(parser, args.start_frames < args.total_length, "start_frames", args.start_frames,
          f"must be fewer than --total_length {args.total_length}")
    check(parser, not args.start_frames or bool(args.data_dir), "data_dir", "",
          "is needed for the start frames (or pass --start_frames 0)")
    check(parser, not args.save_gt or bool(args.data_dir), "save_gt", args.save_gt,
          "needs --data_dir (the ground truth are its clips)")
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    dry_run(args, {})
    model, flags = load_model_or_exit(parser, args)
    if args.start_frames:
        check_data_or_exit(parser, args.data_dir, flags, flags["seq_len"])
    if args.save_gt:
        check_data_or_exit(parser, args.data_dir, flags, args.total_length,
                           f"--save_gt True needs videos of >= --total_length {args.total_length} frames")
    job = LongJob(
        num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
        data_dir=args.data_dir, samples_per_clip=args.samples_per_clip, save_gt=args.save_gt,
        save_video=args.save_video, fps=args.fps,
        options=sampler_options(args), progress=args.progress, total_length=args.total_length,
        scheme=args.scheme, max_cond_frames=args.max_cond_frames,
        prediction_step=args.prediction_step, start_frames=args.start_frames,
    )
    plan = plan_long_video(args.scheme, args.total_length, args.seq_len, args.max_cond_frames,
                           args.prediction_step, args.start_frames)

    info = dist.setup_dist(timeout_s=GATHER_TIMEOUT_S)
    logdir = None
    if info.is_main:
        logdir = sample_logdir()
        print(f"sampling {args.num_samples} videos of {args.total_length} frames ({args.scheme}, "
              f"{len(plan)} windows of {args.seq_len}) on {info.world_size} rank(s) into {logdir}",
              flush=True)
        write_sample_args(logdir, args, flags)
    model.to(info.device)
    paths = dist.run_or_abort(long_video_run, model, create_diffusion(**flags), job, logdir,
                              rank=info.rank, world_size=info.world_size, device=info.device)
    if info.is_main:
        print_outputs(paths)
    dist.cleanup()


if __name__ == "__main__":
    main()
