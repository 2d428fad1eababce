"""Evaluate predicted videos: PSNR/SSIM (best- and mean-of-N) and FVD.

Inputs are the npz files the sampler writes (``arr_0``, uint8, N x T x H x W x C):

    python scripts/video_eval.py --samples samples.npz --gt gt.npz \
        --protocol bair --samples_per_clip 100

Samples are clip-major: with S samples per clip, rows i*S .. i*S+S-1 belong to ground-truth
clip i. Results go to a JSON file (``--output``, default beside the samples) and stdout,
followed by a table and the protocol in words. See docs/EVALUATION.md.
"""

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from ramvid.cli import make_parser
from ramvid.flags import int_list, str2bool
from ramvid.masking import mask_from_frames
from ramvid.metrics.evaluation import PROTOCOLS, describe, evaluate_predictions
from ramvid.metrics.i3d_weights import I3DWeightsError


class UsageError(Exception):
    """Bad input: reported as one line naming the flag or file."""


def build_parser():
    parser = make_parser(__doc__.splitlines()[0], prog="video_eval.py")
    parser.add_argument("--samples", type=Path, required=True,
                        help="npz of sampled clips (arr_0: N x T x H x W x C uint8)")
    parser.add_argument("--gt", type=Path, required=True,
                        help="npz of the ground-truth clips (arr_0: N_clips x T x H x W x C)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="custom",
                        help="benchmark preset: bair (1 -> 15), kinetics600 (5 -> 11), custom")
    parser.add_argument("--samples_per_clip", type=int, default=None,
                        help="samples per ground-truth clip (default: N_samples / N_clips)")
    parser.add_argument("--cond_frames", type=int_list, default=None,
                        help="given frame indices, e.g. 0, (default: the protocol's)")
    parser.add_argument("--fvd_include_given", type=str2bool, default=None,
                        help="FVD on all frames (True) or predicted frames only (False); "
                        "default: the protocol's (True)")
    parser.add_argument("--fvd", type=str2bool, default=True, help="compute FVD (True/False)")
    parser.add_argument("--batch_size", type=int, default=16, help="I3D batch size")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results (default: <samples>_eval.json beside the samples)")
    return parser


def load_clips(path: Path, flag: str) -> np.ndarray:
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    try:
        with np.load(path) as data:
            if "arr_0" not in data:
                raise UsageError(f"{flag} {path}: no arr_0 in the npz (has {list(data.keys())})")
            clips = data["arr_0"]
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise UsageError(f"{flag} {path}: not a readable npz file ({err})") from None
    if clips.ndim != 5 or clips.shape[-1] not in (1, 3):
        raise UsageError(f"{flag} {path}: arr_0 must be N x T x H x W x C with C = 1 or 3, got "
                         f"shape {clips.shape}")
    if clips.dtype != np.uint8:
        raise UsageError(f"{flag} {path}: arr_0 must be uint8, got {clips.dtype}")
    return clips


def resolve(args, samples: np.ndarray, gt: np.ndarray) -> dict:
    """Check the arrays against each other and the protocol; return the evaluation setup."""
    protocol = PROTOCOLS[args.protocol]
    if samples.shape[1:] != gt.shape[1:] and samples.shape[2:] == gt.shape[2:]:
        raise UsageError(f"--samples has {samples.shape[1]} frames per clip, --gt has "
                         f"{gt.shape[1]}")
    if samples.shape[2:] != gt.shape[2:]:
        raise UsageError(f"--samples frames {samples.shape[2:]} differ from --gt frames "
                         f"{gt.shape[2:]} (H x W x C)")
    num_clips = gt.shape[0]
    per_clip = args.samples_per_clip
    if per_clip is None:
        if samples.shape[0] % num_clips:
            raise UsageError(f"--samples holds {samples.shape[0]} clips, not a multiple of the "
                             f"{num_clips} ground-truth clips; pass --samples_per_clip")
        per_clip = samples.shape[0] // num_clips
    if per_clip < 1 or samples.shape[0] != num_clips * per_clip:
        raise UsageError(f"--samples_per_clip {per_clip}: --samples holds {samples.shape[0]} "
                         f"clips, expected {num_clips} ground-truth clips x {per_clip}")
    num_frames = gt.shape[1]
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
    return dict(protocol=protocol, per_clip=per_clip, num_frames=num_frames,
                cond_frames=list(cond_frames), obs_mask=obs_mask, include_given=include_given)


def run_evaluation(samples: np.ndarray, gt: np.ndarray, args) -> dict:
    """Evaluate (N_clips * S, T, H, W, C) samples against (N_clips, T, H, W, C) ground truth
    as the flags say; returns the JSON-ready results, including the protocol in words."""
    setup = resolve(args, samples, gt)
    t, per_clip = setup["num_frames"], setup["per_clip"]
    samples = samples[:, :t].reshape(gt.shape[0], per_clip, t, *samples.shape[2:])
    gt = gt[:, :t]
    print(f"FVD includes the given frames: {setup['include_given']}", file=sys.stderr)
    raw = evaluate_predictions(samples, gt, setup["obs_mask"],
                               fvd_include_given=setup["include_given"], with_fvd=args.fvd,
                               batch_size=args.batch_size, device=args.device)
    fvd_frames = raw.get("fvd_frames", "not computed")
    results = {
        "protocol": setup["protocol"].name,
        "num_clips": int(gt.shape[0]), "samples_per_clip": per_clip, "num_frames": t,
        "image_size": int(gt.shape[2]), "cond_frames": setup["cond_frames"],
        "fvd_include_given": setup["include_given"],
        **{k: raw[k] for k in ("psnr_best", "psnr_mean", "ssim_best", "ssim_mean")},
        **{k: raw[k] for k in ("fvd", "fvd_imag_residue", "fvd_num_samples", "fvd_num_real",
                               "fvd_frames") if k in raw},
        "per_clip": {k: v.tolist() for k, v in raw["per_clip"].items()},
        "samples": str(args.samples), "gt": str(args.gt),
    }
    results["protocol_description"] = describe(
        setup["protocol"], gt.shape[0], per_clip, t, gt.shape[2], setup["cond_frames"],
        setup["include_given"], fvd_frames)
    return results


def table(results: dict) -> str:
    rows = [("PSNR best-of-N", results["psnr_best"]), ("PSNR mean-of-N", results["psnr_mean"]),
            ("SSIM best-of-N", results["ssim_best"]), ("SSIM mean-of-N", results["ssim_mean"])]
    if "fvd" in results:
        rows.append(("FVD", results["fvd"]))
        rows.append(("FVD sqrtm imaginary residue", results["fvd_imag_residue"]))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value:.4f}" for name, value in rows)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        samples = load_clips(args.samples, "--samples")
        gt = load_clips(args.gt, "--gt")
        output = args.output or args.samples.with_name(args.samples.stem + "_eval.json")
        if not output.parent.is_dir():
            raise UsageError(f"--output {output}: directory {output.parent} does not exist")
        results = run_evaluation(samples, gt, args)
    except (UsageError, ValueError, I3DWeightsError) as err:
        parser.error(str(err))  # one line, exit code 2
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
