"""Sample videos from a trained ramvid model: prediction, infilling or unconditional generation.

    python scripts/video_sample.py --model_path logs/run/ema_0.9999_200000.pt \
        --data_dir data/test --cond_frames 0,1, --num_samples 16 --timestep_respacing 100
    mpirun -n 2 python scripts/video_sample.py ...       # same samples, split over 2 ranks

Writes into $OPENAI_LOGDIR (else a new temp folder): <N>x<T>x<H>x<W>x<C>.npz (`arr_0`, uint8,
channels last; `arr_1` = labels for class-conditional models), gt_<shape>.npz with
--save_gt True, a grid per batch (samples_BBB.gif, given frames outlined in red) and
sample_args.json. See docs/SAMPLING.md.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid import create_diffusion, dist
from ramvid.cli import check
from ramvid.flags import int_list
from ramvid.sample.cli import (build_parser, check_data_or_exit, check_sampling_flags, dry_run,
                               load_model_or_exit, parse_sampling_flags, print_outputs,
                               sampler_options, write_sample_args)
from ramvid.sample.output import sample_logdir
from ramvid.sample.run import SampleJob, sample_run

# One rank may wait for another's whole batch at the last gather; batches of 1000 steps on
# large models take long, so the collective timeout is generous.
GATHER_TIMEOUT_S = 6 * 3600


def parse_args(argv=None):
    parser = build_parser(__doc__.splitlines()[0], {}, prog=Path(__file__).name)
    parser.add_argument("--cond_frames", type=int_list, default="0,",
                        help="given frame indices, e.g. 0,1, (prediction) or 0,19, (infilling)")
    args = parse_sampling_flags(parser, argv)
    check_sampling_flags(parser, args)
    seq_len = args.seq_len
    bad = [f for f in args.cond_frames if not 0 <= f < seq_len]
    check(parser, not bad, "cond_frames", ",".join(map(str, args.cond_frames)),
          f"frames {bad} outside [0, seq_len={seq_len})")
    if args.cond_generation:
        check(parser, bool(args.cond_frames), "cond_frames", "", "is empty; name the given frames "
              "or pass --cond_generation False")
        check(parser, len(set(args.cond_frames)) < seq_len, "cond_frames", args.cond_frames,
              f"gives all {seq_len} frames; nothing is left to sample")
        check(parser, bool(args.data_dir), "data_dir", "", "is needed for conditional sampling "
              "(--cond_generation True takes the given frames from its clips)")
    else:
        check(parser, args.guidance_scale == 1.0, "guidance_scale", args.guidance_scale,
              "frame guidance needs given frames (--cond_generation True)")
    check(parser, not args.save_gt or bool(args.data_dir), "save_gt", args.save_gt,
          "needs --data_dir (the ground truth are its clips)")
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    dry_run(args, {})
    model, flags = load_model_or_exit(parser, args)
    if args.data_dir and (args.cond_generation or args.save_gt or flags["class_cond"]):
        check_data_or_exit(parser, args.data_dir, flags, flags["seq_len"])
    job = SampleJob(
        num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
        cond_frames=args.cond_frames if args.cond_generation else None,
        data_dir=args.data_dir, samples_per_clip=args.samples_per_clip, save_gt=args.save_gt,
        save_video=args.save_video, fps=args.fps,
        options=sampler_options(args), progress=args.progress,
    )

    info = dist.setup_dist(timeout_s=GATHER_TIMEOUT_S)
    logdir = None
    if info.is_main:
        logdir = sample_logdir()
        print(f"sampling {args.num_samples} videos on {info.world_size} rank(s) into {logdir}", flush=True)
        write_sample_args(logdir, args, flags)
    model.to(info.device)
    paths = dist.run_or_abort(sample_run, model, create_diffusion(**flags), job, logdir, rank=info.rank,
                              world_size=info.world_size, device=info.device)
    if info.is_main:
        print_outputs(paths)
    dist.cleanup()


if __name__ == "__main__":
    main()
