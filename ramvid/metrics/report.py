"""Evaluate loaded clips as a protocol says and report the result: JSON-ready dict and table."""
import sys

from .evaluation import describe, evaluate_predictions
from .i3d import MIN_FRAMES


def fvd_skip_reason(setup: dict) -> str:
    """Why FVD cannot be computed on these clips ("" when it can)."""
    mask = setup["obs_mask"]
    frames = mask.shape[1] if setup["include_given"] else int((~mask[0]).sum())
    if frames >= MIN_FRAMES:
        return ""
    which = "frames per clip" if setup["include_given"] else "predicted frames per clip"
    return f"FVD not computed: {frames} {which}, I3D needs at least {MIN_FRAMES}"


def run_evaluation(samples, gt, setup, cond_frames, origin, *, with_fvd=True, skip_short_fvd=False,
                   batch_size=16, device=None) -> dict:
    """Evaluate (N_clips, S, T, H, W, C) samples against (N_clips, T, H, W, C) ground truth;
    returns JSON-ready results, including the protocol in words and where it came from.
    skip_short_fvd: clips too short for I3D get PSNR/SSIM and a note instead of an error."""
    protocol, t = setup["protocol"], setup["num_frames"]
    samples, gt = samples[:, :, :t], gt[:, :t]
    skipped = fvd_skip_reason(setup) if with_fvd and skip_short_fvd else ""
    with_fvd = with_fvd and not skipped
    if skipped:
        print(skipped, flush=True)
    else:
        print(f"FVD includes the given frames: {setup['include_given']}", file=sys.stderr)
    raw = evaluate_predictions(samples, gt, setup["obs_mask"],
                               fvd_include_given=setup["include_given"], with_fvd=with_fvd,
                               batch_size=batch_size, device=device,
                               with_frame_metrics=protocol.frame_metrics)
    num_clips, per_clip = samples.shape[:2]
    results = {
        "protocol": protocol.name, "settings_from": origin,
        "num_clips": int(num_clips), "samples_per_clip": int(per_clip), "num_frames": t,
        "image_size": int(gt.shape[2]), "cond_frames": list(cond_frames),
        "fvd_include_given": setup["include_given"],
        **{k: raw[k] for k in ("psnr_best", "psnr_mean", "ssim_best", "ssim_mean") if k in raw},
        **{k: raw[k] for k in ("fvd", "fvd_imag_residue", "fvd_num_samples", "fvd_num_real",
                               "fvd_frames") if k in raw},
    }
    if "per_clip" in raw:
        results["per_clip"] = {k: v.tolist() for k, v in raw["per_clip"].items()}
    if skipped:
        results["fvd_skipped"] = skipped
    results["protocol_description"] = (
        describe(protocol, num_clips, per_clip, t, gt.shape[2], cond_frames, setup["include_given"],
                 raw.get("fvd_frames"))
        + f"\nGiven frames and samples per clip taken from {origin}.")
    return results


def table(results: dict) -> str:
    rows = [(name, results[key]) for name, key in (
        ("PSNR best-of-N", "psnr_best"), ("PSNR mean-of-N", "psnr_mean"),
        ("SSIM best-of-N", "ssim_best"), ("SSIM mean-of-N", "ssim_mean"),
        ("FVD", "fvd"), ("FVD sqrtm imaginary residue", "fvd_imag_residue")) if key in results]
    width = max((len(name) for name, _ in rows), default=0)
    lines = [f"{name:<{width}}  {value:.4f}" for name, value in rows]
    if "fvd_skipped" in results:
        lines.append(results["fvd_skipped"])
    return "\n".join(lines)


__all__ = ["fvd_skip_reason", "run_evaluation", "table"]
