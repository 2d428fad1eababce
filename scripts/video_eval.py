"""Evaluate predicted videos: PSNR/SSIM (best- and mean-of-N) and FVD.

Inputs are the npz files video_sample.py writes (``arr_0``, uint8, N x T x H x W x C):

    python scripts/video_eval.py --protocol bair --gt gt_256x16x64x64x3.npz \
        --samples seed*/256x16x64x64x3.npz

or sample a checkpoint first and evaluate those samples (chunked, resumable in --work_dir):

    python scripts/video_eval.py --protocol bair --model_path logs/run/ema_0.9999_200000.pt \
        --data_dir data/bair_test --samples_per_clip 4 --timestep_respacing 100

Each samples file holds S samples for every ground-truth clip, clip-major (rows i*S ..
i*S+S-1 belong to clip i; S = 1 for one sampler run per seed). Several files are joined
along the sample axis. Results go to a JSON file (``--output``, default beside the first
samples file) and stdout, followed by a table and the protocol in words.
See docs/EVALUATION.md.
"""

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from ramvid import dist
from ramvid.cli import make_parser
from ramvid.flags import int_list, str2bool
from ramvid.masking import mask_from_frames
from ramvid.metrics.evaluation import PROTOCOLS, describe, evaluate_predictions
from ramvid.metrics.i3d import MIN_FRAMES
from ramvid.metrics.i3d_weights import I3DWeightsError
from ramvid.sample.eval_chunks import UsageError, load_clips, sample_and_load

def build_parser():
    parser = make_parser(__doc__.splitlines()[0], prog="video_eval.py")
    parser.add_argument("--samples", type=Path, nargs="+", default=None,
                        help="npz file(s) of sampled clips (arr_0: N x T x H x W x C uint8)")
    parser.add_argument("--gt", type=Path, default=None,
                        help="npz of the ground-truth clips (arr_0: N_clips x T x H x W x C)")
    sampling = parser.add_argument_group("sampling mode (instead of --samples/--gt)")
    sampling.add_argument("--model_path", type=Path, default=None,
                          help="checkpoint to sample from (flags from args.json beside it)")
    sampling.add_argument("--data_dir", type=Path, default=None,
                          help="test videos: clip i = first seq_len frames of the i-th file")
    sampling.add_argument("--num_clips", type=int, default=None,
                          help="evaluate the first N clips (default: all in --data_dir)")
    sampling.add_argument("--timestep_respacing", default=None,
                          help="sampling steps, e.g. 100 or ddim50 (default: the checkpoint's)")
    sampling.add_argument("--use_ddim", type=str2bool, default=False, help="DDIM sampling")
    sampling.add_argument("--eta", type=float, default=0.0, help="DDIM noise (with --use_ddim)")
    sampling.add_argument("--seed", type=int, default=0,
                          help="sample s of clip c uses a generator seeded by hash(seed, c*S+s)")
    sampling.add_argument("--sample_batch_size", type=int, default=8,
                          help="videos per sampling batch on each rank")
    sampling.add_argument("--chunk_clips", type=int, default=16,
                          help="clips per chunk; finished chunks in --work_dir are reused")
    sampling.add_argument("--work_dir", type=Path, default=None,
                          help="chunk_KKKK/ folders (default: $OPENAI_LOGDIR, else a new temp dir)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="custom",
                        help="benchmark preset: bair (1 -> 15), kinetics600 (5 -> 11), custom")
    parser.add_argument("--samples_per_clip", type=int, default=None,
                        help="samples per clip in each samples file (default: N / N_clips); "
                        "sampling mode: samples drawn per clip (default 1)")
    parser.add_argument("--cond_frames", type=int_list, default=None,
                        help="given frame indices, e.g. 0, (default: the protocol's)")
    parser.add_argument("--fvd_include_given", type=str2bool, default=None,
                        help="FVD on all frames (True) or the predicted frames only (False); "
                        "default: the protocol's (True)")
    parser.add_argument("--fvd", type=str2bool, default=True, help="compute FVD (True/False)")
    parser.add_argument("--batch_size", type=int, default=16, help="I3D batch size")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results (default: <first samples file>_eval.json)")
    return parser


def samples_per_clip(num_rows: int, num_clips: int, requested, path: Path) -> int:
    per_clip = requested if requested is not None else num_rows // max(num_clips, 1)
    if per_clip < 1 or num_rows != num_clips * per_clip:
        hint = ("; pass --samples_per_clip" if requested is None else
                f" (--samples_per_clip {requested})")
        raise UsageError(f"--samples {path}: {num_rows} clips are not {num_clips} ground-truth "
                         f"clips x a whole number of samples{hint}")
    return per_clip


def one_row_per_clip(gt: np.ndarray, num_sample_rows: int, requested_per_clip) -> np.ndarray:
    """video_sample.py --samples_per_clip S --save_gt True writes each ground-truth clip S
    times (clip-major, like the samples); keep one row per clip after checking that."""
    per_clip = requested_per_clip or 1
    if per_clip == 1 or gt.shape[0] != num_sample_rows or gt.shape[0] % per_clip:
        return gt
    grouped = gt.reshape(gt.shape[0] // per_clip, per_clip, *gt.shape[1:])
    if not (grouped == grouped[:, :1]).all():
        raise UsageError(f"--gt has as many rows as --samples but its rows do not repeat in "
                         f"groups of --samples_per_clip {per_clip}; pass one row per clip")
    print(f"--gt repeats each clip {per_clip} times: using one row per clip", file=sys.stderr)
    return grouped[:, 0]


def load_samples(paths, gt: np.ndarray, requested_per_clip, first=None) -> np.ndarray:
    """Files of clip-major samples -> one (N_clips, S, T, H, W, C) array, filled file by file
    so that the peak memory is the result plus one file (``first``: paths[0], loaded)."""
    num_clips = gt.shape[0]
    combined, filled = None, 0
    for i, path in enumerate(paths):
        clips = first if i == 0 and first is not None else load_clips(path, "--samples")
        if clips.shape[1:] != gt.shape[1:]:
            raise UsageError(f"--samples {path}: clips of shape {clips.shape[1:]} (T x H x W x "
                             f"C) differ from --gt {gt.shape[1:]}")
        per_clip = samples_per_clip(clips.shape[0], num_clips, requested_per_clip, path)
        if combined is None:
            # Files after the first are assumed to hold as many samples per clip.
            combined = np.empty((num_clips, per_clip * len(paths), *gt.shape[1:]), np.uint8)
        if filled + per_clip > combined.shape[1]:
            raise UsageError(f"--samples {path}: every file must hold the same number of "
                             "samples per clip")
        combined[:, filled:filled + per_clip] = clips.reshape(num_clips, per_clip,
                                                              *gt.shape[1:])
        filled += per_clip
    if filled != combined.shape[1]:
        raise UsageError("--samples: every file must hold the same number of samples per clip")
    return combined


def resolve(args, num_clips: int, num_frames: int) -> dict:
    """The protocol's settings, overridden by explicit flags, checked against the clips."""
    protocol = PROTOCOLS[args.protocol]
    if protocol.num_frames is not None:
        if num_frames < protocol.num_frames:
            raise UsageError(f"--protocol {protocol.name} needs {protocol.num_frames} frames "
                             f"per clip, the files have {num_frames}")
        num_frames = protocol.num_frames  # longer clips: the protocol's first frames
    cond_frames = args.cond_frames if args.cond_frames is not None else protocol.cond_frames
    if cond_frames is None:
        raise UsageError("--cond_frames is required with --protocol custom (e.g. 0,)")
    try:
        obs_mask = mask_from_frames(cond_frames, num_clips, num_frames).numpy()
    except ValueError as err:
        raise UsageError(f"--cond_frames: {err}") from None
    if obs_mask[0].all():
        raise UsageError(f"--cond_frames {cond_frames} gives every frame: nothing to evaluate")
    include_given = (args.fvd_include_given if args.fvd_include_given is not None
                     else protocol.fvd_include_given)
    return dict(protocol=protocol, num_frames=num_frames, cond_frames=list(cond_frames),
                obs_mask=obs_mask, include_given=include_given)


def fvd_skip_reason(setup: dict) -> str:
    """Why FVD cannot be computed on these clips ("" when it can)."""
    mask = setup["obs_mask"]
    frames = mask.shape[1] if setup["include_given"] else int((~mask[0]).sum())
    if frames >= MIN_FRAMES:
        return ""
    which = "frames per clip" if setup["include_given"] else "predicted frames per clip"
    return f"FVD not computed: {frames} {which}, I3D needs at least {MIN_FRAMES}"


def run_evaluation(samples: np.ndarray, gt: np.ndarray, args, skip_short_fvd=False) -> dict:
    """Evaluate (N_clips, S, T, H, W, C) samples against (N_clips, T, H, W, C) ground truth
    as the flags say; returns JSON-ready results, including the protocol in words.
    skip_short_fvd: clips too short for I3D get PSNR/SSIM and a note instead of an error."""
    setup = resolve(args, gt.shape[0], gt.shape[1])
    t = setup["num_frames"]
    samples, gt = samples[:, :, :t], gt[:, :t]
    with_fvd, skipped = args.fvd, ""
    if with_fvd and skip_short_fvd:
        skipped = fvd_skip_reason(setup)
        with_fvd = not skipped
    if skipped:
        print(skipped, flush=True)
    else:
        print(f"FVD includes the given frames: {setup['include_given']}", file=sys.stderr)
    raw = evaluate_predictions(samples, gt, setup["obs_mask"],
                               fvd_include_given=setup["include_given"], with_fvd=with_fvd,
                               batch_size=args.batch_size, device=args.device)
    num_clips, per_clip = samples.shape[:2]
    results = {
        "protocol": setup["protocol"].name,
        "num_clips": int(num_clips), "samples_per_clip": int(per_clip), "num_frames": t,
        "image_size": int(gt.shape[2]), "cond_frames": setup["cond_frames"],
        "fvd_include_given": setup["include_given"],
        **{k: raw[k] for k in ("psnr_best", "psnr_mean", "ssim_best", "ssim_mean")},
        **{k: raw[k] for k in ("fvd", "fvd_imag_residue", "fvd_num_samples", "fvd_num_real",
                               "fvd_frames") if k in raw},
        "per_clip": {k: v.tolist() for k, v in raw["per_clip"].items()},
    }
    if skipped:
        results["fvd_skipped"] = skipped
    results["protocol_description"] = describe(
        setup["protocol"], num_clips, per_clip, t, gt.shape[2], setup["cond_frames"],
        setup["include_given"], raw.get("fvd_frames"))
    return results


def table(results: dict) -> str:
    rows = [("PSNR best-of-N", results["psnr_best"]), ("PSNR mean-of-N", results["psnr_mean"]),
            ("SSIM best-of-N", results["ssim_best"]), ("SSIM mean-of-N", results["ssim_mean"])]
    if "fvd" in results:
        rows.append(("FVD", results["fvd"]))
        rows.append(("FVD sqrtm imaginary residue", results["fvd_imag_residue"]))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value:.4f}" for name, value in rows]
    if "fvd_skipped" in results:
        lines.append(results["fvd_skipped"])
    return "\n".join(lines)


# ------------------------------------------------------------------ sampling mode

def check_mode(args):
    """Exactly one input mode: --samples/--gt (files) or --model_path/--data_dir (sampling)."""
    files = args.samples is not None or args.gt is not None
    if args.model_path is not None:
        if files:
            raise UsageError("--model_path samples the clips itself: drop --samples/--gt "
                             "(or drop --model_path to evaluate files)")
        if args.data_dir is None:
            raise UsageError("--model_path needs --data_dir (the test videos)")
        for flag in ("num_clips", "sample_batch_size", "chunk_clips", "samples_per_clip"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise UsageError(f"--{flag} {value}: must be >= 1")
        if args.seed < 0:
            raise UsageError(f"--seed {args.seed}: must be >= 0")
        if args.eta != 0 and not args.use_ddim:
            raise UsageError(f"--eta {args.eta}: only DDIM has eta; add --use_ddim True")
        return "model"
    if args.samples is None or args.gt is None:
        raise UsageError("give --samples and --gt (npz files), or --model_path and --data_dir")
    return "files"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        mode = check_mode(args)
        if mode == "model":
            loaded = sample_and_load(args)
            if loaded is None:  # ranks other than 0 only sample
                dist.cleanup()
                return
            samples, gt, work_dir, reused = loaded
            output = args.output or work_dir / "eval.json"
        else:
            output = args.output or args.samples[0].with_name(args.samples[0].stem + "_eval.json")
        if not output.parent.is_dir():
            raise UsageError(f"--output {output}: directory {output.parent} does not exist")
        if mode == "files":
            gt = load_clips(args.gt, "--gt")
            first = load_clips(args.samples[0], "--samples")
            if len(args.samples) == 1:
                gt = one_row_per_clip(gt, first.shape[0], args.samples_per_clip)
            samples = load_samples(args.samples, gt, args.samples_per_clip, first)
            del first
        results = run_evaluation(samples, gt, args, skip_short_fvd=mode == "model")
    except (UsageError, ValueError, I3DWeightsError) as err:
        parser.error(str(err))  # one line, exit code 2
    if mode == "model":
        results.update(model_path=str(args.model_path), data_dir=str(args.data_dir),
                       work_dir=str(work_dir), seed=args.seed, reused_chunks=reused)
        dist.cleanup()
    else:
        results.update(samples=[str(p) for p in args.samples], gt=str(args.gt))
    text = json.dumps(results, indent=2)
    output.write_text(text + "\n")
    print(text)
    print()
    print(table(results))
    print()
    print(results["protocol_description"])
    print(f"\nwrote {output}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
