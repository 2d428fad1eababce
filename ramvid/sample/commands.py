"""The sampling commands: ramvid-sample (scripts/video_sample.py) and ramvid-sample-long
(scripts/video_sample_long.py). Flags -> a SampleJob -> sample_to_folder on every rank."""
from .. import create_diffusion, dist
from ..cli import check, entry_point, exit_if_dry_run
from ..flags import Flag, int_list, one_of
from ..masking import frame_indices_problem
from .cli import (build_parser, check_data, check_sampling_flags, load_model_or_exit,
                  parse_sampling_flags, prepare_model, sampler_options)
from .jobs import LongSettings, SampleJob, sample_to_folder
from .long import SCHEMES, check_long_flags
from .runner import COLLECTIVE_TIMEOUT_S

SAMPLE_DESCRIPTION = "Sample videos from a trained ramvid model: prediction, infilling or " \
                     "unconditional generation."
LONG_DESCRIPTION = "Sample videos longer than the model's seq_len frames, window by window."

LONG_FLAGS = (
    Flag("total_length", 60, "frames per output video (any length)"),
    Flag("max_cond_frames", 4, "known frames given to each window"),
    Flag("prediction_step", 0, "new frames kept per autoregressive window (0: seq_len - "
         "max_cond_frames)"),
    Flag("start_frames", -1, "first frames of each --data_dir clip taken as known (-1: "
         "max_cond_frames; 0 or --cond_generation False: unconditional first window)"),
    Flag("scheme", "autoregressive", " or ".join(SCHEMES), check=one_of(SCHEMES)),
)


def _job(args, **extra):
    return SampleJob(
        model_path=args.model_path, num_samples=args.num_samples, batch_size=args.batch_size,
        seed=args.seed, data_dir=args.data_dir, samples_per_clip=args.samples_per_clip,
        save_gt=args.save_gt, chunk_size=args.chunk_size, options=sampler_options(args),
        save_video=args.save_video, fps=args.fps, progress=args.progress, **extra)


def sample_under_launcher(model, flags, job, args, out_dir, reuse_finished=False):
    """sample_to_folder on every rank of the launcher's job (the long collective timeout); the
    process group is closed however it ends, so a user mistake exits cleanly on every rank."""
    info = dist.setup_dist(timeout_s=COLLECTIVE_TIMEOUT_S)
    try:
        return sample_to_folder(prepare_model(model, info, args), create_diffusion(**flags),
                                flags, job, info, out_dir=out_dir or None,
                                overwrite=args.overwrite, reuse_finished=reuse_finished,
                                announce=lambda text: print(text, flush=True))
    finally:
        dist.cleanup()


def run_job(model, flags, job, args):
    """Sample `job`; rank 0 prints what it wrote and how to evaluate it."""
    paths = sample_under_launcher(model, flags, job, args, args.out_dir)
    if paths is not None:
        for name in ("samples", "gt"):
            if name in paths:
                print(f"wrote {paths[name]}")
        print(f"evaluate: python scripts/video_eval.py --samples {paths['folder']}")
    return paths


def parse_sample_args(argv=None):
    parser = build_parser(SAMPLE_DESCRIPTION)
    parser.add_argument("--cond_frames", type=int_list, default="0,",
                        help="given frame indices, e.g. 0,1, (prediction) or 0,19, (infilling)")
    args = parse_sampling_flags(parser, argv)
    check_sampling_flags(parser, args)
    seq_len = args.seq_len
    frames = ",".join(map(str, args.cond_frames))
    reason = frame_indices_problem(args.cond_frames, seq_len)
    check(parser, reason is None, "cond_frames", frames, reason)
    if args.cond_generation:
        check(parser, bool(args.cond_frames), "cond_frames", "", "is empty; name the given frames "
              "or pass --cond_generation False")
        check(parser, len(args.cond_frames) < seq_len, "cond_frames", frames,
              f"gives all {seq_len} frames; nothing is left to sample")
        check(parser, bool(args.data_dir), "data_dir", "", "is needed for conditional sampling "
              "(--cond_generation True takes the given frames from its clips)")
    else:
        check(parser, args.guidance_scale == 1.0, "guidance_scale", args.guidance_scale,
              "frame guidance needs given frames (--cond_generation True)")
    return parser, args


def _load(parse, argv):
    """Flags checked (--dry_run prints them and exits), then the checkpoint loaded."""
    parser, args = parse(argv)
    exit_if_dry_run(args, vars(args))
    model, flags = load_model_or_exit(parser, args)
    return args, model, flags


@entry_point
def sample_main(argv=None):
    args, model, flags = _load(parse_sample_args, argv)
    if args.data_dir and (args.cond_generation or args.save_gt or flags["class_cond"]):
        check_data(args.data_dir, flags, flags["seq_len"])
    cond_frames = tuple(sorted(args.cond_frames)) if args.cond_generation else ()
    return run_job(model, flags, _job(args, cond_frames=cond_frames), args)


def parse_long_args(argv=None):
    parser = build_parser(LONG_DESCRIPTION, LONG_FLAGS)
    args = parse_sampling_flags(parser, argv)
    check_sampling_flags(parser, args, LONG_FLAGS)
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
    return parser, args


@entry_point
def sample_long_main(argv=None):
    args, model, flags = _load(parse_long_args, argv)
    if args.start_frames:
        check_data(args.data_dir, flags, flags["seq_len"])
    if args.save_gt:
        check_data(args.data_dir, flags, args.total_length,
                   f"--save_gt True needs videos of >= --total_length {args.total_length} frames")
    settings = LongSettings(args.total_length, args.scheme, args.max_cond_frames,
                            args.prediction_step, args.start_frames)
    job = _job(args, cond_frames=tuple(range(args.start_frames)), long=settings)
    return run_job(model, flags, job, args)


__all__ = ["parse_long_args", "parse_sample_args", "run_job", "sample_long_main", "sample_main",
           "sample_under_launcher"]
