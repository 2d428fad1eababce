"""Evaluating predicted videos (docs/EVALUATION.md): the benchmark protocols, one function that
applies them to arrays (``evaluate_predictions``: npz files or in-memory samples), and the
report (JSON-ready dict, the protocol in words).
"""
import sys
from dataclasses import dataclass

import numpy as np

from ..masking import frame_indices_problem, mask_from_frames
from .frame_metrics import bool_mask, frame_metrics
from .fvd import compute_fvd
from .i3d import MIN_FRAMES


@dataclass(frozen=True)
class Protocol:
    name: str
    cond_frames: tuple[int, ...] | None     # given frames; None: the user names them
    num_frames: int | None                   # frames per evaluated clip (given + predicted)
    image_size: int | None
    num_test_videos: int | None
    samples_per_clip: int | None
    fvd_include_given: bool
    paper_fvd: float | None                  # RaMViD's reported number
    summary: str
    source: str = ""                         # where the protocol and the paper number come from
    frame_metrics: bool = True               # PSNR/SSIM against the clip (not for generation)


PROTOCOLS = {
    "bair": Protocol(
        "bair", (0,), 16, 64, 256, 100, True, 84.2,
        "BAIR robot pushing: 1 given frame -> 15 predicted frames at 64x64; 256 test videos x "
        "100 samples each; FVD over the 16 frames (given frame included), PSNR/SSIM best of 100",
        "RaMViD (Höppe et al., TMLR 2022) reports BAIR FVD of about 84 with this protocol, "
        "the one of the works it compares with (SAVP, Lee et al. 2018; Video Transformer, "
        "Weissenborn et al. 2020; FitVid, Babaeizadeh et al. 2021)"),
    "kinetics600": Protocol(
        "kinetics600", (0, 1, 2, 3, 4), 16, 64, 50_000, 1, True, 16.5,
        "Kinetics-600: 5 given frames -> 11 predicted frames at 64x64; 50,000 test clips x 1 "
        "sample; FVD over the 16 frames (given frames included)",
        "RaMViD (Höppe et al., TMLR 2022) reports Kinetics-600 FVD of about 16.5 with this "
        "protocol, the one of DVD-GAN (Clark et al., 2019) and Video Transformer (Weissenborn "
        "et al., 2020)"),
    "ucf101": Protocol(
        "ucf101", (), 16, 64, None, 1, True, None,
        "UCF-101: unconditional generation of 16 frames at 64x64; FVD of the samples against "
        "real test clips (no PSNR/SSIM: nothing is given)",
        "RaMViD (Höppe et al., TMLR 2022) evaluates UCF-101 unconditionally with the Inception "
        "Score and FVD; ramvid computes FVD only", frame_metrics=False),
    "custom": Protocol("custom", None, None, None, None, None, True, None,
                       "given frames and clip sizes as recorded by the sample run or passed "
                       "on the command line"),
}


def describe(protocol: Protocol, num_clips, samples_per_clip, num_frames, image_size,
             cond_frames, fvd_include_given, fvd_frames) -> str:
    """The protocol actually applied, in words, with any departure from the preset
    (``fvd_frames`` None: FVD was not computed)."""
    predicted = num_frames - len(cond_frames)
    lines = [
        f"Protocol {protocol.name}: {protocol.summary}."
        + (f" Source: {protocol.source}." if protocol.source else ""),
        f"Applied: {num_clips} test clips x {samples_per_clip} samples, {num_frames} frames of "
        f"{image_size}x{image_size}; given frames {list(cond_frames)} -> {predicted} predicted.",
    ]
    if protocol.frame_metrics:
        lines.append(
            f"PSNR/SSIM: per generated frame (given frames excluded), averaged over a sample's "
            f"generated frames; per clip the best and the mean of its {samples_per_clip} "
            "samples; then averaged over clips.")
    if fvd_frames is None:
        lines.append("FVD: not computed.")
    else:
        lines.append(
            f"FVD: I3D (Kinetics-400) on frames {fvd_frames} "
            f"({'given frames included' if fvd_include_given else 'given frames excluded'}), "
            f"all {num_clips * samples_per_clip} samples against the {num_clips} ground-truth "
            "clips.")
    # (the preset's value or None where it sets none, the applied one, how to say it)
    departures = [f"{form.format(applied)} instead of {form.format(preset)}"
                  for preset, applied, form in (
                      (protocol.num_test_videos, num_clips, "{} clips"),
                      (protocol.samples_per_clip, samples_per_clip, "{} samples per clip"),
                      (protocol.image_size, image_size, "{0}x{0} frames"),
                      (None if protocol.cond_frames is None else list(protocol.cond_frames),
                       list(cond_frames), "given frames {}"))
                  if preset is not None and applied != preset]
    if fvd_include_given != protocol.fvd_include_given:
        departures.append("FVD given-frame setting differs from the preset")
    if departures:
        lines.append("NOT comparable to the paper's numbers: " + "; ".join(departures) + ".")
    elif protocol.paper_fvd is not None:
        lines.append(f"Comparable to RaMViD's reported FVD of about {protocol.paper_fvd}.")
    return "\n".join(lines)


def fvd_frames(mask: np.ndarray, include_given: bool) -> tuple[list[int], str]:
    """The frame indices FVD looks at in clips with given frames `mask` (N_clips, T), and why
    I3D cannot use them ("" when it can)."""
    if include_given:
        frames, which = list(range(mask.shape[1])), "frames per clip"
    elif (mask == mask[:1]).all():
        frames, which = np.flatnonzero(~mask[0]).tolist(), "predicted frames per clip"
    else:
        raise ValueError("FVD without the given frames needs the same given frames in every clip")
    if len(frames) < MIN_FRAMES:
        return frames, f"{len(frames)} {which}, I3D needs at least {MIN_FRAMES}"
    return frames, ""


def evaluate_predictions(samples, gt, obs_mask, fvd_include_given: bool = True,
                         with_fvd: bool = True, batch_size: int = 16, device=None,
                         i3d=None, progress=None, with_frame_metrics: bool = True) -> dict:
    """PSNR/SSIM (best- and mean-of-N) and FVD of sampled clips against ground truth.

    samples: (N_clips, N_samples, T, H, W, C), gt: (N_clips, T, H, W, C), uint8 or float in
    [-1, 1]; obs_mask: bool (N_clips, T), True = given frame. FVD on every frame
    (``fvd_include_given``) or on the predicted frames only (then the given frames must be the
    same in every clip); with_frame_metrics False: FVD only (unconditional samples).
    """
    mask = bool_mask(obs_mask)
    if with_fvd:  # before the slow frame metrics, so that a doomed run fails at once
        if min(samples.shape[0] * samples.shape[1], len(mask)) < 2:
            raise ValueError(f"FVD needs at least 2 sampled and 2 ground-truth clips, got "
                             f"{samples.shape[0] * samples.shape[1]} and {len(mask)}")
        frames, short = fvd_frames(mask, fvd_include_given)
        if short:
            raise ValueError(f"FVD on {short}; include the given frames or skip FVD")
    results = frame_metrics(samples, gt, mask, device=device, progress=progress) \
        if with_frame_metrics else {}
    if not with_fvd:
        return results
    flat_samples = samples.reshape(-1, *samples.shape[2:])   # clip-major (N_clips * S, T, ...)
    fvd = compute_fvd(flat_samples, gt, batch_size, i3d, device, progress, frames)
    results.update(fvd=fvd["fvd"], fvd_imag_residue=fvd["imag_residue"], fvd_frames=frames,
                   fvd_include_given=bool(fvd_include_given),
                   fvd_num_samples=fvd["num_videos_a"], fvd_num_real=fvd["num_videos_b"])
    return results


def run_evaluation(samples, gt, protocol, cond_frames, origin, fvd_include_given=None, *,
                   with_fvd=True, skip_short_fvd=False, batch_size=16, device=None) -> dict:
    """Evaluate (N_clips, S, T, H, W, C) samples against (N_clips, T, H, W, C) ground truth by
    `protocol` (its clip length; its FVD setting unless `fvd_include_given` is given); returns
    JSON-ready results, including the protocol in words and where it came from.
    skip_short_fvd: clips too short for I3D get PSNR/SSIM and a note instead of an error."""
    t = gt.shape[1]
    if protocol.num_frames is not None:
        if t < protocol.num_frames:
            raise ValueError(f"--protocol {protocol.name} needs {protocol.num_frames} frames "
                             f"per clip, the files have {t}")
        t = protocol.num_frames  # longer clips: the protocol's first frames
    reason = frame_indices_problem(cond_frames, t)
    if reason:
        raise ValueError(f"--cond_frames {cond_frames}: {reason}")
    obs_mask = mask_from_frames(cond_frames, gt.shape[0], t).numpy()  # (N_clips, T)
    if obs_mask[0].all():
        raise ValueError(f"--cond_frames {cond_frames} gives every frame: nothing to evaluate")
    include_given = (fvd_include_given if fvd_include_given is not None
                     else protocol.fvd_include_given)
    samples, gt = samples[:, :, :t], gt[:, :t]
    short = with_fvd and skip_short_fvd and fvd_frames(obs_mask, include_given)[1]
    skipped = f"FVD not computed: {short}" if short else ""
    if skipped:
        with_fvd = False
        print(skipped, flush=True)
    else:
        print(f"FVD includes the given frames: {include_given}", file=sys.stderr)
    raw = evaluate_predictions(samples, gt, obs_mask,
                               fvd_include_given=include_given, with_fvd=with_fvd,
                               batch_size=batch_size, device=device,
                               with_frame_metrics=protocol.frame_metrics)
    num_clips, per_clip = samples.shape[:2]
    results = {
        "protocol": protocol.name, "settings_from": origin,
        "num_clips": int(num_clips), "samples_per_clip": int(per_clip), "num_frames": t,
        "image_size": int(gt.shape[2]), "cond_frames": list(cond_frames),
        "fvd_include_given": include_given,
        **{k: raw[k] for k in ("psnr_best", "psnr_mean", "ssim_best", "ssim_mean", "fvd",
                               "fvd_imag_residue", "fvd_num_samples", "fvd_num_real",
                               "fvd_frames") if k in raw},
    }
    if "per_clip" in raw:
        results["per_clip"] = {k: v.tolist() for k, v in raw["per_clip"].items()}
    if skipped:
        results["fvd_skipped"] = skipped
    results["protocol_description"] = (
        describe(protocol, num_clips, per_clip, t, gt.shape[2], cond_frames, include_given,
                 raw.get("fvd_frames"))
        + f"\nGiven frames and samples per clip taken from {origin}.")
    return results
