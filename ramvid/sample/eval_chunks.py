"""Evaluation inputs: npz sample files, or a checkpoint sampled in resumable chunks.

`sample_and_load` (scripts/video_eval.py --model_path ... --data_dir ...) samples S videos for
each test clip in chunks of clips under --work_dir. A chunk folder is renamed into place only
when complete, so a rerun reuses finished chunks; sample s of clip c is global sample c*S + s,
seeded by (seed, c*S + s), so chunk size and number of ranks change no sample.
"""
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from .. import dist
from ..checkpoint import CheckpointError
from ..data import DataError
from ..masking import mask_from_frames
from ..metrics.evaluation import PROTOCOLS
from .clips import ClipSource
from .core import SamplerOptions, denoise, is_class_conditional, labels_for, model_video_shape, step_bar
from .compat import ModelFlagsMismatch
from .loading import load_model
from .ordered import BatchSpec, num_rounds, run_in_order
from .output import GT_PREFIX, sample_logdir, save_npz, to_uint8
from .seeds import sample_generators

SETTINGS_JSON = "eval_sampling.json"  # what the chunks in --work_dir were sampled with


class UsageError(Exception):
    """Bad input: reported as one line naming the flag or file."""


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


def load_for_sampling(args):
    """(model, diffusion, flags, clip source, number of clips, given frames)."""
    if not args.model_path.is_file():
        raise UsageError(f"--model_path {args.model_path}: no such file")
    overrides = {} if args.timestep_respacing is None else {
        "timestep_respacing": args.timestep_respacing}
    try:
        model, diffusion, flags = load_model(args.model_path, device="cpu", **overrides)
    except (CheckpointError, ModelFlagsMismatch, ValueError, OSError) as err:
        raise UsageError(f"--model_path {args.model_path}: {str(err).splitlines()[0]}") from None
    seq_len = model_video_shape(model)[1]
    try:
        source = ClipSource(args.data_dir, flags, seq_len, args.samples_per_clip)
    except DataError as err:
        message = str(err).splitlines()[0]
        raise UsageError(message if message.startswith("--data_dir")
                         else f"--data_dir {args.data_dir}: {message}") from None
    num_clips = args.num_clips or len(source)
    if num_clips > len(source):
        raise UsageError(f"--num_clips {num_clips}: --data_dir {args.data_dir} has "
                         f"{len(source)} clips")
    protocol = PROTOCOLS[args.protocol]
    cond_frames = args.cond_frames if args.cond_frames is not None else protocol.cond_frames
    if cond_frames is None:
        raise UsageError("--cond_frames is required with --protocol custom (e.g. 0,)")
    bad = [f for f in cond_frames if not 0 <= f < seq_len]
    if bad:
        raise UsageError(f"--cond_frames {cond_frames}: frames {bad} outside [0, "
                         f"seq_len={seq_len}) of the model")
    return model, diffusion, flags, source, num_clips, list(cond_frames)


def sampling_settings(args, flags, num_clips, cond_frames):
    """Everything the chunk files depend on; a rerun must match to reuse them."""
    return {"model_path": str(args.model_path.resolve()), "data_dir": str(args.data_dir.resolve()),
            "num_clips": num_clips, "chunk_clips": args.chunk_clips,
            "samples_per_clip": args.samples_per_clip, "cond_frames": cond_frames,
            "seed": args.seed, "timestep_respacing": flags["timestep_respacing"],
            "use_ddim": args.use_ddim, "eta": args.eta}


def prepare_work_dir(args, settings) -> Path:
    """Rank 0: the work dir, holding the settings of its chunks (a mismatch is an error)."""
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        work_dir = args.work_dir
    else:
        work_dir = sample_logdir()
    print(f"work dir: {work_dir}", flush=True)
    path = work_dir / SETTINGS_JSON
    if path.is_file():
        recorded = json.loads(path.read_text())
        changed = [k for k in settings if recorded.get(k) != settings[k]]
        if changed:
            k = changed[0]
            raise UsageError(f"--work_dir {work_dir} holds chunks sampled with {k}="
                             f"{recorded.get(k)!r}, not {settings[k]!r}; use a new --work_dir")
    else:
        path.write_text(json.dumps(settings, indent=2) + "\n")
    return work_dir


def chunk_dir(work_dir: Path, k: int) -> Path:
    return work_dir / f"chunk_{k:04d}"


def sample_chunk(model, diffusion, source, args, cond_frames, clips, rank, world_size, device):
    """Sample S videos for each clip in `clips` (a range); rank 0 gets
    {"samples": uint8 (n*S, T, H, W, C), "gt": ...}. Sample s of clip c is global sample
    c*S + s, seeded by (seed, c*S + s): chunking does not change any sample."""
    per_clip = args.samples_per_clip
    first, count = clips.start * per_clip, len(clips) * per_clip
    channels, seq_len, height, width = model_video_shape(model)
    options = SamplerOptions(use_ddim=args.use_ddim, eta=args.eta)
    item = (seq_len, height, width, channels)
    spec = BatchSpec(samples=(item, torch.uint8), gt=(item, torch.uint8))

    def work(local, callback):
        indices = [first + i for i in local]
        videos, clip_labels = source.clips(indices)  # (n, C, T, H, W) in [-1, 1]
        labels = labels_for(model, args.seed, indices, clip_labels) \
            if is_class_conditional(model) else None
        obs_mask = mask_from_frames(cond_frames, len(indices), seq_len)
        samples = denoise(model, diffusion, sample_generators(args.seed, indices), obs=videos,
                          obs_mask=obs_mask, labels=labels, options=options, callback=callback)
        return {"samples": to_uint8(samples), "gt": to_uint8(videos)}

    parts = {"samples": [], "gt": []}

    def collect(_b, _indices, result):
        for name in parts:
            parts[name].append(np.asarray(result[name]))

    rounds = num_rounds(count, args.sample_batch_size, world_size)
    bar, callback = step_bar(rounds * diffusion.num_timesteps, rank == 0,
                             desc=f"chunk {clips.start // args.chunk_clips}")
    with bar:
        run_in_order(count, args.sample_batch_size, lambda idx: work(idx, callback), spec,
                     collect, rank=rank, world_size=world_size, device=device)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()} if rank == 0 else None


def save_chunk(folder: Path, arrays, per_clip):
    """Write into a temporary folder, then rename it: a chunk folder is always complete."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_npz(partial, arrays["samples"])
    save_npz(partial, arrays["gt"][::per_clip], prefix=GT_PREFIX)  # one row per clip
    partial.rename(folder)


def load_chunk(folder: Path):
    samples = [p for p in folder.glob("*.npz") if not p.name.startswith(GT_PREFIX)]
    gt = list(folder.glob(GT_PREFIX + "*.npz"))
    if len(samples) != 1 or len(gt) != 1:
        raise UsageError(f"--work_dir: {folder} should hold one samples and one gt_ npz file")
    return load_clips(samples[0], "--work_dir"), load_clips(gt[0], "--work_dir")


def sample_and_load(args):
    """Sample (all ranks) or reuse every chunk; on rank 0 returns (samples (N_clips, S, T, H,
    W, C), gt (N_clips, T, H, W, C), work dir, reused chunk numbers); None elsewhere."""
    if args.samples_per_clip is None:
        args.samples_per_clip = 1
    model, diffusion, flags, source, num_clips, cond_frames = load_for_sampling(args)
    info = dist.setup_dist()
    work_dir, todo, error = None, None, ""
    chunks = [range(c, min(c + args.chunk_clips, num_clips))
              for c in range(0, num_clips, args.chunk_clips)]
    if info.is_main:
        try:
            work_dir = prepare_work_dir(args, sampling_settings(args, flags, num_clips,
                                                                cond_frames))
        except UsageError as err:
            error = str(err)
        else:
            todo = [k for k in range(len(chunks)) if not chunk_dir(work_dir, k).is_dir()]
            for k in range(len(chunks)):
                if k not in todo:
                    print(f"reusing chunk {k}", flush=True)
    todo, error = dist.broadcast_object((todo, error))  # every rank stops on rank 0's error
    if error:
        raise UsageError(error)
    model.to(info.device)
    for k in todo:
        arrays = dist.run_or_abort(sample_chunk, model, diffusion, source, args, cond_frames,
                                   chunks[k], info.rank, info.world_size, info.device)
        if info.is_main:
            save_chunk(chunk_dir(work_dir, k), arrays, args.samples_per_clip)
    if not info.is_main:
        return None
    parts = [load_chunk(chunk_dir(work_dir, k)) for k in range(len(chunks))]
    samples = np.concatenate([p[0] for p in parts])
    gt = np.concatenate([p[1] for p in parts])
    samples = samples.reshape(num_clips, args.samples_per_clip, *samples.shape[1:])
    reused = [k for k in range(len(chunks)) if k not in todo]
    return samples, gt, work_dir, reused
