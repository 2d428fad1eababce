"""video_eval.py (ramvid-eval): PSNR/SSIM (best- and mean-of-N) and FVD of samples, from
--samples (npz files or a sample run's folder) or sampled from --model_path through
`sample_to_folder`. docs/EVALUATION.md#video_evalpy: a run's record decides, flags that
contradict it are errors.
"""
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..config import create_diffusion
from ..data import list_videos
from ..errors import UsageError
from ..flags import (Flag, add_flags, at_least, config_json, exit_if_dry_run, flag_values,
                     given_on_command_line, int_list, make_parser, str2bool, user_errors,
                     write_json)
from ..masking import frame_indices_problem
from ..sample.command import (SAMPLING_FLAG, add_model_flags, check_data, dry_run,
                              load_checkpoint, model_on_every_rank, parse_sampling_flags,
                              rate_key, sampler_options)
from ..sample.files import GT_PREFIX, map_npz_array, npz_shape
from ..sample.run import RECORD_JSON, SampleJob, read_record, sample_to_folder
from .evaluation import PROTOCOLS, run_evaluation
from .i3d import I3DWeightsError

DESCRIPTION = "Evaluate predicted videos: PSNR/SSIM (best- and mean-of-N) and FVD."

# --model_path mode: video_sample.py's flags of the same name mean the same (they are the
# same declarations); --batch_size stays I3D's, so sampling batches are --sample_batch_size.
SAMPLING_MODE_FLAGS = (
    replace(SAMPLING_FLAG["model_path"], help="checkpoint to sample from (model flags from "
            "args.json beside it, or --preset)"),
    replace(SAMPLING_FLAG["data_dir"], help="test videos: a clip is the first seq_len frames of "
            "a file; all files, or a seeded uniform draw of --num_clips of them"),
    Flag("num_clips", 0, "evaluate N clips, a uniform draw from --data_dir (0: the protocol's "
         "count, else all)", check=at_least(0)),
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
    *(SAMPLING_FLAG[name] for name in ("compile", "tf32", "bf16", "use_fp16", "break_lock")),
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
    return parser


def sample_for_evaluation(parser, argv, args, protocol):
    """Sample the protocol's clips from --model_path (all ranks, resumable); rank 0 returns
    the run's paths, other ranks None."""
    if args.samples is not None or args.gt is not None:
        raise UsageError("--model_path samples the clips itself: drop --samples/--gt "
                         "(or drop --model_path to evaluate files)")
    if not args.data_dir:
        raise UsageError("--model_path needs --data_dir (the test videos)")
    flag_values(SAMPLING_MODE_FLAGS, vars(args))  # each flag's declared check
    if args.samples_per_clip is not None and args.samples_per_clip < 1:
        raise UsageError(f"--samples_per_clip {args.samples_per_clip}: must be >= 1")
    args = parse_sampling_flags(parser, argv, SAMPLING_MODE_FLAGS)  # args.json, --preset
    cond_frames = args.cond_frames if args.cond_frames is not None else protocol.cond_frames
    if cond_frames is None:
        raise UsageError("--cond_frames is required with --protocol custom (e.g. 0,)")
    if protocol.cond_frames is not None and tuple(cond_frames) != protocol.cond_frames:
        raise UsageError(f"--cond_frames {_frames_flag(cond_frames)} contradicts --protocol "
                         f"{protocol.name}, which gives frames {list(protocol.cond_frames)}; "
                         "drop one of them")
    per_clip = args.samples_per_clip or protocol.samples_per_clip or 1
    if (protocol.num_frames and not args.scale_time_dim
            and "seq_len" not in given_on_command_line(parser, argv)):
        args.seq_len = protocol.num_frames  # sample the protocol's clip length
    reason = frame_indices_problem(cond_frames, args.seq_len)
    if reason:
        raise UsageError(f"--cond_frames {cond_frames}: {reason} of the model")
    # The count without probing a video (none needs to exist for a dry run).
    listed = len(list_videos(args.data_dir)) if Path(args.data_dir).is_dir() else 0
    planned = args.num_clips or protocol.num_test_videos or listed
    job = SampleJob(
        model_path=args.model_path, num_samples=(planned or 1) * per_clip,
        batch_size=args.sample_batch_size, seed=args.seed, cond_frames=tuple(sorted(cond_frames)),
        data_dir=args.data_dir, samples_per_clip=per_clip, save_gt=True,
        chunk_size=args.chunk_clips * per_clip, options=sampler_options(args), save_video="none")
    dry_run(args, job, {
        "cond_frames": list(cond_frames), "samples_per_clip": per_clip,
        "num_clips": planned or "all clips of --data_dir (not found here: count unknown; the "
        "plan is for one clip)"})
    model, flags = load_checkpoint(args)
    scanned = check_data(args.data_dir, flags, flags["seq_len"])
    available = len(scanned)
    num_clips = args.num_clips or min(protocol.num_test_videos or available, available)
    if num_clips > available:
        raise UsageError(f"--num_clips {num_clips}: --data_dir {args.data_dir} has {available} "
                         "clips")
    job = replace(job, num_samples=num_clips * per_clip)
    with model_on_every_rank(model, args) as (net, info):
        return sample_to_folder(net, create_diffusion(**flags), flags, job, info,
                                out_dir=args.work_dir or None, overwrite=args.overwrite,
                                reuse_finished=True, break_lock=args.break_lock,
                                rate_key=rate_key(flags, args, job.batch_size), scanned=scanned)


def eval_main(argv=None):
    with user_errors():
        parser = build_parser()
        args = parser.parse_args(argv)
        protocol = PROTOCOLS[args.protocol or "custom"]
        sampling = bool(args.model_path)  # else evaluate --samples
        if sampling:
            paths = sample_for_evaluation(parser, argv, args, protocol)
            if paths is None:  # ranks other than 0 only sample
                return None
            sample_paths, gt_path = [paths["samples"]], None  # the run's own gt_ file
            output = args.output or paths["folder"] / "eval.json"
        else:
            if args.samples is None:
                raise UsageError("give --samples (npz files or a sample run's folder), or "
                                 "--model_path and --data_dir")
            exit_if_dry_run(args, vars(args))
            sample_paths, gt_path = args.samples, args.gt
            first = args.samples[0]
            output = args.output or (first / "eval.json" if first.is_dir()
                                     else first.with_name(first.stem + "_eval.json"))
        if not output.parent.is_dir():
            raise UsageError(f"--output {output}: directory {output.parent} does not exist")
        files = [find_sample_file(Path(p)) for p in sample_paths]  # [(npz, its record or None)]
        cond_frames, per_clip, origin = resolve_settings(files, protocol, args.cond_frames,
                                                         args.samples_per_clip)
        samples, gt, gt_path = load_samples(files, gt_path, per_clip)
        try:
            with torch.inference_mode():  # not set_grad_enabled: an in-process caller keeps autograd
                results = run_evaluation(samples, gt, protocol, cond_frames, origin,
                                         args.fvd_include_given, with_fvd=args.fvd,
                                         skip_short_fvd=sampling, batch_size=args.batch_size,
                                         device=args.device)
        except (ValueError, I3DWeightsError) as err:
            raise UsageError(str(err)) from None
        results.update(samples=[str(p) for p in sample_paths], gt=str(gt_path))
        selection = clip_selection(files[0][1], protocol)
        if selection:
            results["clips"] = selection
            results["protocol_description"] += f"\nClips: {selection}."
        if sampling:
            results.update(model_path=args.model_path, data_dir=args.data_dir, seed=args.seed)
        write_json(output, results)  # atomic: a crash leaves the old eval.json or the new one
        text = config_json(results)
        rows = [(name, results[key]) for name, key in (
            ("PSNR best-of-N", "psnr_best"), ("PSNR mean-of-N", "psnr_mean"),
            ("SSIM best-of-N", "ssim_best"), ("SSIM mean-of-N", "ssim_mean"),
            ("FVD", "fvd"), ("FVD sqrtm imaginary residue", "fvd_imag_residue")) if key in results]
        width = max((len(name) for name, _ in rows), default=0)
        table = [f"{name:<{width}}  {value:.4f}" for name, value in rows]
        if "fvd_skipped" in results:
            table.append(results["fvd_skipped"])
        print(f"{text}\n\n" + "\n".join(table) + f"\n\n{results['protocol_description']}\n\n"
              f"wrote {output}")


# --------------------------------------------------------------------------- what to evaluate
def load_clips(path: Path, flag: str) -> np.ndarray:
    """arr_0 of an npz: uint8 N x T x H x W x C, C = 1 or 3; mapped from disk when the file
    stores it uncompressed (every file ramvid writes), else read whole."""
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    try:
        clips = map_npz_array(path)
        if clips is None:
            with np.load(path) as data:
                if "arr_0" not in data:
                    raise UsageError(f"{flag} {path}: no arr_0 in the npz (has "
                                     f"{list(data.keys())})")
                clips = data["arr_0"]
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise UsageError(f"{flag} {path}: not a readable npz file ({err})") from None
    if clips.ndim != 5 or clips.shape[-1] not in (1, 3):
        raise UsageError(f"{flag} {path}: arr_0 must be N x T x H x W x C with C = 1 or 3, got "
                         f"shape {clips.shape}")
    if clips.dtype != np.uint8:
        raise UsageError(f"{flag} {path}: arr_0 must be uint8, got {clips.dtype}")
    return clips


def find_sample_file(path: Path):
    """(npz path, the record beside it or None): --samples names an npz or a sample run's folder
    (its one samples npz)."""
    if path.is_dir():
        found = [p for p in sorted(path.glob("*.npz")) if not p.name.startswith(GT_PREFIX)]
        if len(found) != 1:
            raise UsageError(f"--samples {path}: a run folder holds one samples npz, found "
                             f"{len(found)} (an unfinished run? rerun its sampling command)")
        path = found[0]
    elif not path.is_file():
        raise UsageError(f"--samples {path}: no such file")
    record = read_record(path.parent)
    if record is not None:
        try:
            shape = npz_shape(path)
        except (zipfile.BadZipFile, ValueError, OSError) as err:
            raise UsageError(f"--samples {path}: not a readable npz file ({err})") from None
        if shape is None or shape[:2] != (record["num_samples"], record["seq_len"]):
            raise UsageError(f"--samples {path}: {path.parent / RECORD_JSON} beside it records "
                             f"{record['num_samples']} samples of {record['seq_len']} frames, the "
                             f"file holds shape {shape}; move the file or the record")
    return path, record


def _frames_flag(frames):
    return ",".join(map(str, frames)) + ","


def resolve_settings(files, protocol, cond_frames, samples_per_clip):
    """(given frames, samples per clip, origin) from the records, checked against the flags
    (None = not given)."""
    records = [(path.parent / RECORD_JSON, record) for path, record in files if record]
    if not records:
        frames = cond_frames if cond_frames is not None else protocol.cond_frames
        if frames is None:
            raise UsageError("--cond_frames is required without a sample record "
                             f"({RECORD_JSON} beside the samples) and with --protocol custom "
                             "(e.g. 0,)")
        if samples_per_clip is None:
            raise UsageError("--samples_per_clip is required without a sample record "
                             f"({RECORD_JSON} beside the samples): how many samples of each clip "
                             "one file holds (rows i*S .. i*S+S-1 belong to clip i)")
        return list(frames), samples_per_clip, "the command line (no sample_args.json beside the samples)"
    if len(records) != len(files):
        raise UsageError(f"--samples: {RECORD_JSON} beside some files but not beside "
                         f"{next(path for path, record in files if not record)}")
    path, first = records[0]
    for other_path, other in records[1:]:
        for key in ("cond_frames", "seq_len", "samples_per_clip", "data_dir"):
            if other[key] != first[key]:
                raise UsageError(f"--samples: {path} records {key}={first[key]!r}, {other_path} "
                                 f"{other[key]!r}; evaluate them separately")
    frames = list(first["cond_frames"])
    if cond_frames is not None and list(cond_frames) != frames:
        raise UsageError(f"--cond_frames {_frames_flag(cond_frames)} contradicts {path}: the "
                         f"samples were drawn with given frames {frames} (--cond_frames "
                         f"{_frames_flag(frames)}); drop --cond_frames")
    if protocol.cond_frames is not None and list(protocol.cond_frames) != frames:
        raise UsageError(f"--protocol {protocol.name} gives frames {list(protocol.cond_frames)} "
                         f"but {path} records given frames {frames}; drop --protocol (the "
                         f"record decides) or sample with --cond_frames "
                         f"{_frames_flag(protocol.cond_frames) if protocol.cond_frames else '(none)'}")
    recorded = first["samples_per_clip"]
    if samples_per_clip is not None and samples_per_clip != recorded:
        raise UsageError(f"--samples_per_clip {samples_per_clip} contradicts {path}: the run "
                         f"drew {recorded} samples per clip; drop --samples_per_clip")
    return frames, recorded, str(path)


def one_row_per_clip(gt: np.ndarray, num_sample_rows: int, per_clip, path, note) -> np.ndarray:
    """video_sample.py --samples_per_clip S --save_gt True writes each ground-truth clip S
    times (clip-major, like the samples); keep one row per clip after checking that, saying so
    with `note` (a run's own gt_ file repeats its clips by design, a --gt file may not)."""
    per_clip = per_clip or 1
    if per_clip == 1 or gt.shape[0] != num_sample_rows or gt.shape[0] % per_clip:
        return gt
    grouped = gt.reshape(gt.shape[0] // per_clip, per_clip, *gt.shape[1:])
    if not all((clip == clip[:1]).all() for clip in grouped):  # clip by clip: gt may be mapped
        raise UsageError(f"--gt {path}: as many rows as --samples but they do not repeat in "
                         f"groups of --samples_per_clip {per_clip} (clip-major); pass one per clip")
    if note:
        print(f"--gt repeats each clip {per_clip} times: using one row per clip", file=sys.stderr)
    return np.ascontiguousarray(grouped[:, 0])


def load_samples(files, gt_path, per_clip):
    """Clip-major samples ([(npz, its record or None)], as find_sample_file gives them) and their
    ground truth (`gt_path`; None: the first run's own gt_ file) -> (samples (N_clips, S, T, H,
    W, C), a view of the one file when there is one; gt (N_clips, T, H, W, C), one row per clip;
    the ground truth's path). `per_clip`: samples of each clip in every file."""
    (first_path, record), paths = files[0], [path for path, _ in files]
    named = gt_path is not None
    if not named and record and record.get("save_gt"):
        gt_path = first_path.with_name(GT_PREFIX + first_path.name)
    if gt_path is None:
        raise UsageError("--gt is required: the samples' run did not save its ground truth "
                         "(--save_gt True)")
    gt = load_clips(Path(gt_path), "--gt")
    first = load_clips(paths[0], "--samples")
    if len(paths) == 1:
        gt = one_row_per_clip(gt, first.shape[0], per_clip, gt_path, note=named)
    num_clips, item, combined = gt.shape[0], gt.shape[1:], None
    for i, path in enumerate(paths):
        clips = first if i == 0 else load_clips(path, "--samples")
        if clips.shape[1:] != item:
            raise UsageError(f"--samples {path}: clips of shape {clips.shape[1:]} (T x H x W x "
                             f"C) differ from --gt {item}")
        if per_clip < 1 or clips.shape[0] != num_clips * per_clip:
            raise UsageError(f"--samples {path}: {clips.shape[0]} clips are not {num_clips} "
                             f"ground-truth clips x a whole number of samples (--samples_per_clip "
                             f"{per_clip})")
        clips = clips.reshape(num_clips, per_clip, *item)
        if len(paths) == 1:
            return clips, gt, gt_path  # a view of the one file
        if combined is None:  # files are copied in one by one, never all in memory at once
            combined = np.empty((num_clips, per_clip * len(paths), *item), np.uint8)
        combined[:, i * per_clip:(i + 1) * per_clip] = clips
    return combined, gt, gt_path


def clip_selection(record, protocol):
    """Which test clips a sample run used, in words (None without a record of its data)."""
    if not record or not record.get("data_clips"):
        return None
    n, k, where = record["num_clips"], record["data_clips"], record["data_dir"]
    if "clip_files" not in record and n < k:  # sampled by a version that took the first files
        text = (f"the first {n} of the {k} usable videos of {where} in sorted path order (not a "
                "uniform draw: with files named by class this subset is biased)")
    elif n < k:
        text = (f"{n} of the {k} usable videos of {where}, a uniform draw (listed in "
                f"{RECORD_JSON})")
    else:
        text = f"all {k} usable videos of {where}"
    if protocol.num_test_videos and k != protocol.num_test_videos:
        text += (f"; the {protocol.name} protocol's test set has {protocol.num_test_videos} "
                 f"videos, this folder {k}")
    return text
