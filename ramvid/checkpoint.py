"""Crash-safe writes of any file ramvid writes, and checkpoint files: names, safe loads, and
finding where to resume.

A training checkpoint at step S is a set of files (model, one EMA per --ema_rate, opt: what each
holds is in docs/TRAINING.md#what-a-run-writes). Every file appears under its final name only
once complete, so a set whose files all exist is complete and one lacking a file an interrupted
save; every file is read with `weights_only=True`, so a checkpoint cannot run code.
"""
import os
import pickle
import random
import re
import time
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

# A read that fails is tried again after 1 s and 2 s: network file systems (NFS, Lustre) report
# transient EIO/ESTALE errors.
LOAD_ATTEMPTS, LOAD_BACKOFF_S = 3, 1.0
MODEL_NAME = re.compile(r"^model(\d{6,})\.pt$")
# Any file of a checkpoint set, whatever the EMA rates: group 1 is the step.
CHECKPOINT_NAME = re.compile(r"^(?:model|opt|ema_.+_)(\d{6,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read or written; the message names the file."""


def checkpoint_paths(folder, step, ema_rates):
    """{"model": path, "opt": path, "ema": {rate: path}} for step `step` in `folder`; each rate
    is spelled as given in --ema_rate (e.g. "0.9999")."""
    folder = Path(folder)
    return {"model": folder / f"model{step:06d}.pt", "opt": folder / f"opt{step:06d}.pt",
            "ema": {rate: folder / f"ema_{rate}_{step:06d}.pt" for rate in ema_rates}}


def set_files(folder, step, ema_rates):
    """The files a complete checkpoint set of `step` has: model, one per EMA rate, opt."""
    paths = checkpoint_paths(folder, step, ema_rates)
    return [paths["model"], *paths["ema"].values(), paths["opt"]]


def step_from_model_path(path):
    """The step in a `modelNNNNNN.pt` file name, or ValueError naming the path."""
    match = MODEL_NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{path}: expected a file named modelNNNNNN.pt (NNNNNN = training step)")
    return int(match.group(1))


# --------------------------------------------------------------------------- writing
# A file being written is `.NAME.PID.tmp` beside its final name NAME: hidden, in the same folder
# (so the rename is atomic), apart from another process's (the pid), and never ending in the final
# suffix, so that no `*.pt` or `*.npz` glob (pathlib's match hidden files) takes a half-written
# file for a finished one. Writers that pick a format by suffix (PyAV) are told the format.
TEMP_NAME = ".{name}.{pid}.tmp"
TEMP_GLOB = TEMP_NAME.format(name="*", pid="[0-9]*")


@contextmanager
def atomic_path(path):
    """`with atomic_path(path) as tmp:` write the file `tmp`; when the block ends without an
    exception, `tmp` replaces `path`, so `path` is either the old file or the complete new one.
    On an exception (or a failed rename) `tmp` is removed and the exception propagates."""
    path = Path(path)
    # The writer opens `tmp` itself: open() honours the umask, where mkstemp would make every
    # file owner-only.
    tmp = path.with_name(TEMP_NAME.format(name=path.name, pid=os.getpid()))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temp_files(folder):
    """Delete the files of `atomic_path` that a process killed mid-write left in `folder` (never
    raises); returns their paths."""
    removed = []
    for tmp in Path(folder).glob(TEMP_GLOB):
        with suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def atomic_save(obj, path):
    """torch.save(obj) to `path` through `atomic_path`, the file and its folder fsynced;
    CheckpointError naming `path` when the folder is not writable or the disk is full (the
    temporary file removed, any previous file at `path` untouched)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        # Some file systems neither open nor fsync a folder; the rename is atomic regardless.
        with suppress(OSError):
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except (OSError, RuntimeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise CheckpointError(f"could not write checkpoint {path}: {reason}") from e


def save_checkpoint(folder, step, model_state, ema_states, opt_state):
    """Write the EMA files (ema_states: {rate string: state dict}), the model file and the opt
    file (last) for `step`; returns the paths."""
    paths = checkpoint_paths(folder, step, ema_states.keys())
    for rate, state in ema_states.items():
        atomic_save(state, paths["ema"][rate])
    atomic_save(model_state, paths["model"])
    atomic_save(opt_state, paths["opt"])
    return paths


# --------------------------------------------------------------------------- reading
def load_checkpoint_file(path):
    """torch.load(path, map_location="cpu", weights_only=True) with one-line errors naming the
    file (pickled code is refused without being executed); a failed read is tried LOAD_ATTEMPTS
    times."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    for attempt in range(LOAD_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols it may not read
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            lines = str(e).strip().splitlines() or [""]
            detail = next((line for line in lines
                           if "Unsupported" in line or "global" in line.lower()), lines[0])
            raise CheckpointError(
                f"refusing to load {path}: it is not a plain weights checkpoint (it holds Python "
                f"objects or code; only tensors, numbers, strings and containers are accepted). "
                f"{detail.strip()}"
            ) from None
        except Exception as e:  # EIO, ESTALE, out of memory, truncated zip, bad magic, EOF, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if attempt + 1 == LOAD_ATTEMPTS:
                raise CheckpointError(f"cannot read checkpoint {path} ({LOAD_ATTEMPTS} "
                                      f"attempts): {first.split('. ')[0]}") from None
            time.sleep(LOAD_BACKOFF_S * 2**attempt)


@dataclass
class TrainingCheckpoint:
    """What a resumed run needs (of it, what this rank needs), loaded to the CPU: restoring copies
    each tensor to the device, so a resume never holds a second copy of the model there."""
    step: int
    folder: Path
    model: dict = None  # None when not loaded (ranks > 0 receive rank 0's weights from DDP)
    emas: dict = field(default_factory=dict)  # rate string -> state dict (missing rates absent)
    opt: dict = None  # None when the opt file is missing (explicit resume only)


def load_training_checkpoint(folder, step, ema_rates, require_all=True, model=True):
    """Load the model (unless model=False), the EMAs of `ema_rates` and the opt file of `step`
    from `folder`, to the CPU. require_all=True: any missing or unreadable file raises
    CheckpointError. False (a resume the user asked for explicitly): a missing opt or EMA file is
    a warning, the EMA then starts from the model weights and the optimiser from scratch; an
    unreadable file still raises."""
    paths = checkpoint_paths(folder, step, ema_rates)
    ckpt = TrainingCheckpoint(step=step, folder=Path(folder))
    if model:
        ckpt.model = load_checkpoint_file(paths["model"])
    for rate, path in paths["ema"].items():
        if path.exists() or require_all:
            ckpt.emas[rate] = load_checkpoint_file(path)
        else:
            warnings.warn(f"{path} not found: EMA {rate} restarts from the model weights")
    if paths["opt"].exists() or require_all:
        ckpt.opt = load_checkpoint_file(paths["opt"])
        if not isinstance(ckpt.opt, dict) or "optimizer" not in ckpt.opt:
            raise CheckpointError(f"{paths['opt']} does not hold an optimizer state")
    else:
        warnings.warn(f"{paths['opt']} not found: the optimiser starts from scratch at step {step}")
    return ckpt


def load_latest_checkpoint(folder, ema_rates):
    """The newest complete checkpoint set in `folder`, loaded to the CPU, or None when there is
    none. Sets lacking a file (an interrupted save) are passed over; a complete set that cannot
    be read raises CheckpointError, since resuming from an older set would discard progress."""
    steps = complete_steps(folder, ema_rates)
    if not steps:
        return None
    try:
        return load_training_checkpoint(folder, steps[0], ema_rates)
    except CheckpointError as e:
        raise CheckpointError(
            f"{e}. Nothing was changed. If the file system failed for a moment, run the same "
            f"command again; if the file is damaged, move the files of step {steps[0]} out of "
            f"{folder} to resume from the checkpoint before it") from None


def checkpoint_files(folder):
    """{step: [paths]} of every checkpoint file in `folder` (any EMA rate), steps ascending."""
    folder = Path(folder)
    files = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = CHECKPOINT_NAME.match(path.name)
            if match and path.is_file():
                files.setdefault(int(match.group(1)), []).append(path)
    return dict(sorted(files.items()))


def complete_steps(folder, ema_rates):
    """Steps of `folder` whose model, opt and every EMA file exist (not whether they load),
    newest first."""
    return [step for step, paths in reversed(checkpoint_files(folder).items())
            if set(set_files(folder, step, ema_rates)) <= set(paths)]


def delete_checkpoint_files(sets):
    """Delete {step: paths} sets, every opt file first: a half-deleted set is never complete."""
    paths = [path for paths in sets.values() for path in paths]
    for path in sorted(paths, key=lambda p: not Path(p).name.startswith("opt")):
        Path(path).unlink(missing_ok=True)


def sets_to_prune(folder, ema_rates, keep, keep_every=0):
    """{step: files} of the sets that go when only the newest `keep` complete sets stay (plus
    every step that is a multiple of `keep_every`). Only steps older than the oldest kept
    complete set go, so an incomplete set being written now is never touched. keep=0: nothing
    goes."""
    complete = complete_steps(folder, ema_rates) if keep > 0 else []
    if len(complete) <= keep:
        return {}
    return {step: paths for step, paths in checkpoint_files(folder).items()
            if step < complete[keep - 1] and not (keep_every and step % keep_every == 0)}


# --------------------------------------------------------------------------- RNG state
def rng_state():
    """The global RNG states of torch, CUDA, numpy and python, as weights_only-loadable values."""
    version, mt_words, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": version, "state": list(mt_words), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Inverse of rng_state()."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if torch.cuda.is_available() and len(state.get("cuda", ())) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])

