"""The log dir of a run: which folder, the lock that makes this run its one writer, where the run
starts, and what its checkpoints hold. docs/TRAINING.md ("Resuming") states the rules.

Rank 0 takes the folder's lock (`ramvid.runlock`) and decides where the run starts before
anything in the folder is truncated or deleted, so a refused start (exit code 2) or an unreadable
checkpoint (exit code 1) leaves every file as it was.
"""
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import dist
from ..checkpoint import (CheckpointError, checkpoint_files, complete_steps,
                          delete_checkpoint_files, load_latest_checkpoint,
                          load_training_checkpoint, remove_stale_temp_files, set_files,
                          step_from_model_path)
from ..config import model_and_diffusion_defaults
from ..errors import UsageError
from ..flags import ARGS_JSON, as_json, read_args_json, versions, write_json
from ..runlock import FolderLock

# Flags that say how to start, not what is trained: they differ between a run and its restart.
START_FLAGS = ("resume_checkpoint", "overwrite", "log_dir", "break_lock")


@dataclass
class Start:
    """Where a run starts; decided on rank 0, the same on every rank but `ckpt`."""
    logdir: Path
    step: int = 0  # the step the weights have seen: 0 = fresh start
    folder: Path = None  # folder of the checkpoint resumed from
    foreign: dict = field(default_factory=dict)  # {step: checkpoint files} --overwrite deletes
    messages: list = field(default_factory=list)  # lines for the log
    ckpt: object = None  # this rank's part of the checkpoint (TrainingCheckpoint) or None


@contextmanager
def run_folder(cfg, model_flags, info):
    """`with run_folder(cfg, model_flags, info) as start:` the log dir, locked for this run and
    ready to start in (a `Start`).

    Rank 0 creates the folder, takes its lock, decides where to start and makes the folder ready;
    a refusal raises the same UsageError on every rank. The lock is given back however the block
    ends, before `dist.process_group` ends a job that failed on one rank."""
    logdir = cfg.log_dir or os.environ.get("OPENAI_LOGDIR")
    source = "--log_dir" if cfg.log_dir else "$OPENAI_LOGDIR"
    if not logdir:  # one process on a workstation (command.py refuses this under a launcher)
        logdir = Path("runs", f"{time.strftime('%Y-%m-%d-%H-%M-%S')}-{os.getpid()}")
        source = "default"
    logdir = Path(logdir)
    lock = FolderLock(logdir, what="training run", break_lock=cfg.break_lock)
    ckpt = None

    def take():
        nonlocal ckpt
        try:
            logdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"log dir {logdir} ({source}) cannot be created: "
                             f"{e.strerror}") from None
        with warnings.catch_warnings(record=True) as caught:  # a stale lock taken over
            warnings.simplefilter("always")
            lock.acquire()
        start = plan_start(cfg, model_flags, logdir)
        delete_checkpoint_files(start.foreign)  # what --overwrite True allows
        if start.foreign:
            start.messages.append(f"--overwrite True: deleted {_describe(start.foreign)} from "
                                  f"{logdir}")
        for tmp in remove_stale_temp_files(logdir):  # never raises
            start.messages.append(f"removed {tmp}, left by a run killed while writing it")
        start.messages[:0] = [f"WARNING: {w.message}" for w in caught]
        ckpt, start.ckpt = start.ckpt, None  # stays on rank 0: the others receive the rest
        return start

    try:
        start = dist.run_on_main(take)
        start.ckpt = ckpt
        if start.step and not info.is_main:
            # Ranks > 0 receive rank 0's weights from DDP and keep no EMA (only rank 0 saves):
            # the optimiser state and their own RNG/data position are all they read.
            start.ckpt = load_training_checkpoint(
                start.folder, start.step, (), require_all=cfg.resume_checkpoint in ("", "auto"),
                model=False)
        dist.barrier(long_wait=True)  # rank 0 may wait here for the others' reads
        yield start
    finally:
        lock.release()  # held on rank 0 only


def plan_start(cfg, model_flags, logdir):
    """A Start holding the checkpoint (or None). Reads, never writes."""
    plan = Start(Path(logdir))
    if cfg.resume_checkpoint not in ("", "auto"):
        path = Path(cfg.resume_checkpoint)
        plan.folder, plan.step = path.parent, step_from_model_path(path)
        plan.ckpt = load_training_checkpoint(plan.folder, plan.step, cfg.ema_rate,
                                             require_all=False)
        plan.messages.append(f"resuming from {path} (step {plan.step})")
    else:
        plan.ckpt = load_latest_checkpoint(logdir, cfg.ema_rate)
        if plan.ckpt is not None:
            plan.folder, plan.step = plan.logdir, plan.ckpt.step
            listed = ", ".join(p.name for p in set_files(logdir, plan.step, cfg.ema_rate))
            plan.messages.append(f"resuming from step {plan.step}: {listed}")
        else:
            plan.messages.append(f"no checkpoint in {logdir}: starting at step 1")

    if plan.folder is not None:  # a resume: its model/diffusion flags must be the run's
        try:
            saved = _in_force(read_args_json(plan.folder))
        except FileNotFoundError:
            plan.messages.append(f"{plan.folder} has no args.json: model and diffusion flags not "
                                 f"compared")
        except ValueError as e:
            plan.messages.append(f"WARNING: {e}: model and diffusion flags not compared")
        else:
            differing = _differing_model_flags(model_flags, saved)
            if differing:
                raise UsageError(
                    f"resuming step {plan.step} of {plan.folder} with different model/diffusion "
                    f"flags: {'; '.join(differing)}. Pass the flags of that run (its args.json), "
                    f"or start a new run in another --log_dir")
            current = cfg.to_json()
            changed = [f"--{k} {saved[k]!r} -> {current[k]!r}" for k in current
                       if k not in START_FLAGS and k in saved and as_json(current[k]) != saved[k]]
            if changed:
                plan.messages.append(f"training flags changed since the resumed run: "
                                     f"{', '.join(changed)}")
    same_folder = plan.folder is not None and plan.folder.resolve() == plan.logdir.resolve()
    files = checkpoint_files(logdir)
    # Incomplete sets are this run's interrupted saves (overwritten when saved again) after the
    # step it continues, or, on a fresh start, its interrupted first saves when args.json names
    # the same model/diffusion flags and EMA rates.
    own = same_folder
    if plan.folder is None and files:
        try:
            saved = _in_force(read_args_json(logdir))
        except (FileNotFoundError, ValueError):
            saved = {}
        own = saved.get("ema_rate") == ",".join(cfg.ema_rate) and not _differing_model_flags(
            model_flags, saved)
    complete = complete_steps(logdir, cfg.ema_rate)
    leftovers = {}
    for step, paths in files.items():
        if same_folder and step <= plan.step:
            continue  # the history of the run being continued
        (leftovers if own and step not in complete else plan.foreign)[step] = paths
    if leftovers:
        plan.messages.append(f"ignoring {_describe(leftovers)} after step {plan.step}: not a "
                             f"complete set (left by an interrupted save)")
    if plan.foreign and not cfg.overwrite:
        found = _describe(plan.foreign)
        if same_folder:  # an explicit resume from an older step of this folder
            raise UsageError(f"log dir {plan.logdir} holds checkpoints after step {plan.step} "
                             f"({found}); to continue from the newest use --resume_checkpoint "
                             f"auto, to continue from step {plan.step} and delete them "
                             f"--overwrite True")
        why = ""
        if plan.step == 0:
            newest = max(plan.foreign)
            missing = [p.name for p in set_files(plan.logdir, newest, cfg.ema_rate)
                       if not p.is_file()]
            if missing:
                why = (f"; none is a complete set for --ema_rate {','.join(cfg.ema_rate)} (step "
                       f"{newest} lacks {', '.join(missing)})")
        raise UsageError(f"log dir {plan.logdir} already holds checkpoints of another run "
                         f"({found}{why}); choose another --log_dir, or pass --overwrite True "
                         f"to delete them and start there")
    return plan


def record_start(logdir, step, record):
    """Write args.json (sampling rebuilds the model from it) at a run's first start (`record`:
    flags, world size, classes, ...; library versions are added); a start from step > 0 over an
    args.json appends {"step", "changed": {key: new value}} to its "restarts" list instead, so
    the file tells what trained each step."""
    record = as_json({**record, "versions": versions()})
    try:
        saved = read_args_json(logdir) if step else None
    except (FileNotFoundError, ValueError):
        saved = None
    if saved is None:
        saved = {**record, "resumed_from_step": step}
    else:
        in_force = _in_force(saved)
        changed = {k: v for k, v in record.items() if in_force.get(k) != v}
        saved["restarts"] = [*saved.get("restarts", []), {"step": step, "changed": changed}]
    try:
        write_json(Path(logdir) / ARGS_JSON, saved)
    except OSError as e:
        raise CheckpointError(str(e)) from None


def _in_force(saved):
    """The flags of an args.json as its last restart left them."""
    current = dict(saved)
    for restart in saved.get("restarts", []):
        current.update(restart["changed"])
    return current


def _describe(sets, shown=3):
    names = [p.name for paths in sets.values() for p in paths]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} checkpoint file(s): {', '.join(names[:shown])}{more}"


def _differing_model_flags(model_flags, saved):
    """'--flag now (the run used then)' for each model/diffusion flag that differs."""
    # num_classes comes from the data; a different count fails loading the weights.
    names = [k for k in model_and_diffusion_defaults() if k != "num_classes"]
    return [f"--{k} {as_json(model_flags[k])!r} (the run used {saved[k]!r})"
            for k in names if k in saved and as_json(model_flags[k]) != saved[k]]
