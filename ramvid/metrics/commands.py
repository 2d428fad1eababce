"""ramvid-eval (scripts/video_eval.py): PSNR/SSIM (best- and mean-of-N) and FVD of samples.

Two modes: --samples (npz files or a sample run's folder, whose sample_args.json says which
frames were given and how many samples each clip has), or --model_path with --data_dir, which
samples the checkpoint through the same resumable pipeline as video_sample.py and then
evaluates that run. Flags, reading and printing live here; the evaluation in inputs.py,
report.py and evaluation.py.
"""
import json
from dataclasses import replace
from pathlib import Path

import torch

from ..cli import (UsageError, add_common_flags, entry_point, exit_if_dry_run,
                   given_on_command_line, make_parser)
from ..flags import Flag, add_flags, at_least, flag_values, int_list, str2bool
from ..masking import frame_indices_problem
from ..sample.cli import (SAMPLING_FLAG, add_model_flags, check_data, load_model_or_exit,
                          parse_sampling_flags, resolve_sampler, sampler_options)
from ..sample.commands import sample_under_launcher
from ..sample.jobs import SampleJob
from .evaluation import PROTOCOLS
from .i3d_weights import I3DWeightsError
from .inputs import load_inputs, protocol_setup
from .report import run_evaluation, table

DESCRIPTION = "Evaluate predicted videos: PSNR/SSIM (best- and mean-of-N) and FVD."

# --model_path mode: video_sample.py's flags of the same name mean the same (they are the
# same declarations); --batch_size stays I3D's, so sampling batches are --sample_batch_size.
SAMPLING_MODE_FLAGS = (
    replace(SAMPLING_FLAG["model_path"], help="checkpoint to sample from (model flags from "
            "args.json beside it, or --preset)"),
    replace(SAMPLING_FLAG["data_dir"], help="test videos: clip i = first seq_len frames of the "
            "i-th file"),
    Flag("num_clips", 0, "evaluate the first N clips (0: the protocol's count, else all in "
         "--data_dir)", check=at_least(0)),
    replace(SAMPLING_FLAG["seed"], help="sample s of clip c uses a generator seeded by "
            "hash(seed, c*S+s)"),
    *(SAMPLING_FLAG[name] for name in ("sampler", "use_ddim", "eta", "clip_denoised",
                                       "resample_steps", "guidance_scale")),
    Flag("sample_batch_size", 8, "videos per sampling batch on each rank", check=at_least(1)),
    Flag("chunk_clips", 4, "clips per chunk file; finished chunks are reused by a rerun",
         check=at_least(1)),
    Flag("work_dir", "", "the sample run's folder (default: named as video_sample.py names it)"),
    replace(SAMPLING_FLAG["overwrite"], help="sample again even if the run folder holds a "
            "finished run"),
    SAMPLING_FLAG["compile"],
    SAMPLING_FLAG["tf32"],
)


def build_parser():
    parser = make_parser(DESCRIPTION)
    parser.add_argument("--samples", type=Path, nargs="+", default=None,
                        help="npz file(s) of sampled clips (arr_0: N x T x H x W x C uint8), or "
                        "the folder of a video_sample.py run")
    parser.add_argument("--gt", type=Path, default=None,
                        help="npz of the ground-truth clips (default: the run's own gt_ file)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                        help="benchmark preset: bair (1 -> 15), kinetics600 (5 -> 11), ucf101 "
                        "(unconditional), custom (default: the sample run's record)")
    parser.add_argument("--samples_per_clip", type=int, default=None,
                        help="samples per clip in each samples file (default: the sample run's "
                        "record; required without one); with --model_path: samples drawn per "
                        "clip (default: the protocol's, else 1)")
    parser.add_argument("--cond_frames", type=int_list, default=None,
                        help="given frame indices, e.g. 0, (default: the record's, else the "
                        "protocol's)")
    parser.add_argument("--fvd_include_given", type=str2bool, default=None,
                        help="FVD on all frames (True) or the predicted frames only (False); "
                        "default: the protocol's (True)")
    parser.add_argument("--fvd", type=str2bool, default=True, help="compute FVD (True/False)")
    parser.add_argument("--batch_size", type=int, default=16, help="I3D batch size")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results (default: eval.json in the run folder, else "
                        "<first samples file>_eval.json)")
    sampling = parser.add_argument_group("sampling mode (instead of --samples/--gt)")
    add_flags(sampling, SAMPLING_MODE_FLAGS)
    add_model_flags(parser)
    add_common_flags(parser)
    return parser


def check_mode(args):
    """Exactly one input mode: --samples (files) or --model_path/--data_dir (sampling)."""
    if args.model_path:
        if args.samples is not None or args.gt is not None:
            raise UsageError("--model_path samples the clips itself: drop --samples/--gt "
                             "(or drop --model_path to evaluate files)")
        if not args.data_dir:
            raise UsageError("--model_path needs --data_dir (the test videos)")
        flag_values(SAMPLING_MODE_FLAGS, vars(args))  # each flag's declared check
        if args.samples_per_clip is not None and args.samples_per_clip < 1:
            raise UsageError(f"--samples_per_clip {args.samples_per_clip}: must be >= 1")
        return "model"
    if args.samples is None:
        raise UsageError("give --samples (npz files or a sample run's folder), or --model_path "
                         "and --data_dir")
    return "files"


def sample_for_evaluation(parser, argv, args):
    """Sample the protocol's clips from --model_path (all ranks, resumable); rank 0 returns
    the run's paths, other ranks None."""
    args = parse_sampling_flags(parser, argv)  # args.json beside the checkpoint, --preset
    resolve_sampler(parser, args)
    protocol = PROTOCOLS[args.protocol or "custom"]
    cond_frames = args.cond_frames if args.cond_frames is not None else protocol.cond_frames
    if cond_frames is None:
        raise UsageError("--cond_frames is required with --protocol custom (e.g. 0,)")
    per_clip = args.samples_per_clip or protocol.samples_per_clip or 1
    if (protocol.num_frames and not args.scale_time_dim
            and not given_on_command_line(parser, argv, "seq_len")):
        args.seq_len = protocol.num_frames  # sample the protocol's clip length
    reason = frame_indices_problem(cond_frames, args.seq_len)
    if reason:
        raise UsageError(f"--cond_frames {cond_frames}: {reason} of the model")
    exit_if_dry_run(args, {**vars(args), "cond_frames": list(cond_frames),
                           "samples_per_clip": per_clip})
    model, flags = load_model_or_exit(parser, args)
    available = len(check_data(args.data_dir, flags, flags["seq_len"]))
    num_clips = args.num_clips or min(protocol.num_test_videos or available, available)
    if num_clips > available:
        raise UsageError(f"--num_clips {num_clips}: --data_dir {args.data_dir} has {available} clips")
    job = SampleJob(
        model_path=args.model_path, num_samples=num_clips * per_clip,
        batch_size=args.sample_batch_size, seed=args.seed, cond_frames=tuple(sorted(cond_frames)),
        data_dir=args.data_dir, samples_per_clip=per_clip, save_gt=True,
        chunk_size=args.chunk_clips * per_clip, options=sampler_options(args),
        save_video="none")
    return sample_under_launcher(model, flags, job, args, args.work_dir, reuse_finished=True)


@entry_point
def eval_main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = check_mode(args)
    if mode == "files":
        exit_if_dry_run(args, vars(args))
    if mode == "model":
        paths = sample_for_evaluation(parser, argv, args)
        if paths is None:  # ranks other than 0 only sample
            return None
        sample_paths, gt_path = [paths["samples"]], paths["gt"]
        output = args.output or paths["folder"] / "eval.json"
    else:
        sample_paths, gt_path = args.samples, args.gt
        first = args.samples[0]
        output = args.output or (first / "eval.json" if first.is_dir()
                                 else first.with_name(first.stem + "_eval.json"))
    if not output.parent.is_dir():
        raise UsageError(f"--output {output}: directory {output.parent} does not exist")
    samples, gt, cond_frames, origin, gt_used = load_inputs(
        sample_paths, gt_path, args.protocol, args.cond_frames, args.samples_per_clip)
    setup = protocol_setup(args.protocol, cond_frames, gt.shape[0], gt.shape[1],
                           args.fvd_include_given)
    try:
        with torch.inference_mode():  # not set_grad_enabled: an in-process caller keeps autograd
            results = run_evaluation(samples, gt, setup, cond_frames, origin, with_fvd=args.fvd,
                                     skip_short_fvd=mode == "model", batch_size=args.batch_size,
                                     device=args.device)
    except (ValueError, I3DWeightsError) as err:
        raise UsageError(str(err)) from None
    results.update(samples=[str(p) for p in sample_paths], gt=str(gt_used))
    if mode == "model":
        results.update(model_path=args.model_path, data_dir=args.data_dir, seed=args.seed)
    text = json.dumps(results, indent=2)
    output.write_text(text + "\n")
    print(text)
    print()
    print(table(results))
    print()
    print(results["protocol_description"])
    print(f"\nwrote {output}")
    return results


__all__ = ["build_parser", "eval_main"]
