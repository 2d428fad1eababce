"""The log dir of a run: which folder, whether this run may start in it, where it resumes from.

Rank 0 decides before anything in the folder is created, truncated or deleted, so a refused start
(exit code 2) leaves every file as it was:

- `--resume_checkpoint auto` (or empty): the newest complete checkpoint set in the log dir, if any.
- `--resume_checkpoint path/modelNNNNNN.pt`: that step, from that folder.
- Checkpoint files in the log dir that this run does not continue from (another run's, or steps
  after the one resumed from) are an error naming the folder, unless `--overwrite True`, which
  deletes them.
- Resuming with model or diffusion flags that differ from the resumed run's args.json is an error
  naming each flag; training-only flags may change and are listed in the log.
"""
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import dist
from ..checkpoint import (CHECKPOINT_NAME, checkpoint_files, delete_checkpoint_files,
                          is_complete, load_latest_checkpoint, load_training_checkpoint,
                          remove_stale_temp_files, set_files, step_from_model_path)
from ..config import model_and_diffusion_defaults
from ..errors import UsageError
from ..flags import read_args_json

# Flags that say how to start, not what is trained: they differ between a run and its restart.
START_FLAGS = ("resume_checkpoint", "overwrite", "log_dir")


@dataclass
class StartPlan:
    """Where a run starts; the same on every rank."""
    logdir: Path
    step: int = 0  # the step the weights have seen: 0 = fresh start
    folder: Path = None  # folder of the checkpoint resumed from
    require_all: bool = True  # False for an explicit --resume_checkpoint (fine-tuning)
    foreign: list = field(default_factory=list)  # checkpoint files --overwrite deletes
    messages: list = field(default_factory=list)  # lines for the log


@dataclass
class Start:
    plan: StartPlan
    ckpt: object = None  # this rank's part of the checkpoint (TrainingCheckpoint) or None


def resolve_logdir(cfg, info):
    """--log_dir, else $OPENAI_LOGDIR, else a new timestamped folder in the temp dir (chosen by
    rank 0); returns (folder, the name of where it came from)."""
    source = "--log_dir" if cfg.log_dir else "$OPENAI_LOGDIR"
    logdir = cfg.log_dir or os.environ.get("OPENAI_LOGDIR")
    if not logdir:
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S")
        logdir = dist.run_on_main(tempfile.mkdtemp, prefix=f"ramvid-{stamp}-")
    return Path(logdir), source


def prepare_run(cfg, model_flags, logdir, info, source="--log_dir"):
    """Decide where the run starts (rank 0, reading only), then make the log dir ready for it.
    Returns a Start holding this rank's part of the checkpoint; raises UsageError on every rank
    when the run may not start there."""
    loaded = {}

    def decide():
        plan, loaded["ckpt"] = plan_start(cfg, model_flags, logdir, info.device)
        _make_ready(plan, source)
        return plan

    plan = dist.run_on_main(decide)
    ckpt = loaded.get("ckpt")
    if plan.step and not info.is_main:
        # Ranks > 0 receive rank 0's weights from DDP and keep no EMA (only rank 0 saves):
        # the optimiser state and their own RNG/data position are all they read.
        ckpt = load_training_checkpoint(plan.folder, plan.step, (), require_all=plan.require_all,
                                        map_location=info.device, model=False)
    dist.barrier(long_wait=True)  # rank 0 may wait here for the others' reads
    return Start(plan, ckpt)


def plan_start(cfg, model_flags, logdir, map_location="cpu"):
    """(StartPlan, the checkpoint loaded to `map_location` or None). Reads, never writes."""
    logdir = Path(logdir)
    plan = StartPlan(logdir)
    ckpt = None
    if cfg.resume_checkpoint not in ("", "auto"):
        path = Path(cfg.resume_checkpoint)
        plan.folder, plan.step, plan.require_all = path.parent, step_from_model_path(path), False
        ckpt = load_training_checkpoint(plan.folder, plan.step, cfg.ema_rate, require_all=False,
                                        map_location=map_location)
        plan.messages.append(f"resuming from {path} (step {plan.step})")
    else:
        ckpt = load_latest_checkpoint(logdir, cfg.ema_rate, map_location=map_location)
        if ckpt is not None:
            plan.folder, plan.step = logdir, ckpt.step
            listed = ", ".join(p.name for p in set_files(logdir, ckpt.step, cfg.ema_rate))
            plan.messages.append(f"resuming from step {ckpt.step}: {listed}")
        else:
            plan.messages.append(f"no checkpoint in {logdir}: starting at step 1")

    if plan.folder is not None:
        plan.messages += _check_flags_against_args_json(cfg, model_flags, plan)
    same_folder = plan.folder is not None and Path(plan.folder).resolve() == logdir.resolve()
    leftovers = []  # files of this run's interrupted saves: overwritten when saved again
    files = checkpoint_files(logdir)
    # A fresh start over checkpoint files is this run's own first saves when args.json matches.
    own_first_saves = plan.folder is None and bool(files) and _same_run(logdir, cfg, model_flags)
    for step, paths in files.items():
        if same_folder and step <= plan.step:
            continue  # the history of the run being continued
        if same_folder and (cfg.resume_checkpoint in ("", "auto")
                            or not is_complete(logdir, step, cfg.ema_rate)):
            leftovers += paths  # auto skipped them: incomplete or unreadable
        elif own_first_saves:
            leftovers += paths  # killed during its first saves
        else:
            plan.foreign += paths
    if leftovers:
        plan.messages.append(f"ignoring {_describe(leftovers)} after step {plan.step}: not a "
                             f"complete, readable set (left by an interrupted save)")
    if plan.foreign and not cfg.overwrite:
        raise UsageError(_foreign_message(cfg, plan, same_folder))
    return plan, ckpt


def _same_run(logdir, cfg, model_flags):
    """Whether the log dir's args.json was written with these model/diffusion flags and EMA
    rates (then its checkpoint files, none complete, are this run's own)."""
    try:
        saved = read_args_json(logdir)
    except (FileNotFoundError, ValueError):
        return False
    return saved.get("ema_rate") == ",".join(cfg.ema_rate) and not _differing_model_flags(
        model_flags, saved)


def _make_ready(plan, source):
    """Rank 0, after the plan is accepted: create the folder, delete what --overwrite allows,
    remove temporary files of a run killed mid-write."""
    try:
        plan.logdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"log dir {plan.logdir} ({source}) cannot be created: "
                         f"{e.strerror}") from None
    delete_checkpoint_files(plan.foreign)
    if plan.foreign:
        plan.messages.append(f"--overwrite True: deleted {_describe(plan.foreign)} from "
                             f"{plan.logdir}")
    for tmp in remove_stale_temp_files(plan.logdir):
        plan.messages.append(f"removed {tmp}, left by a run killed while writing a checkpoint")


def _step_of(path):
    return int(CHECKPOINT_NAME.match(Path(path).name).group(1))


def _describe(paths, shown=3):
    names = [Path(p).name for p in paths]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} checkpoint file(s): {', '.join(names[:shown])}{more}"


def _foreign_message(cfg, plan, same_folder):
    found = _describe(plan.foreign)
    if same_folder:  # an explicit resume from an older step of this folder
        return (f"log dir {plan.logdir} holds checkpoints after step {plan.step} ({found}); "
                f"to continue from the newest use --resume_checkpoint auto, to continue from "
                f"step {plan.step} and delete them --overwrite True")
    why = ""
    if plan.step == 0:
        newest = max(_step_of(p) for p in plan.foreign)
        missing = [p.name for p in set_files(plan.logdir, newest, cfg.ema_rate)
                   if not p.is_file()]
        if missing:
            why = (f"; none is a complete set for --ema_rate {','.join(cfg.ema_rate)} (step "
                   f"{newest} lacks {', '.join(missing)})")
    return (f"log dir {plan.logdir} already holds checkpoints of another run ({found}{why}); "
            f"choose another --log_dir, or pass --overwrite True to delete them and start there")


def _as_json(value):
    return json.loads(json.dumps(value, default=str))


def _differing_model_flags(model_flags, saved):
    """'--flag now (the run used then)' for each model/diffusion flag that differs."""
    # num_classes comes from the data; a different count fails loading the weights.
    names = [k for k in model_and_diffusion_defaults() if k != "num_classes"]
    return [f"--{k} {_as_json(model_flags[k])!r} (the run used {saved[k]!r})"
            for k in names if k in saved and _as_json(model_flags[k]) != saved[k]]


def _check_flags_against_args_json(cfg, model_flags, plan):
    """UsageError naming every model/diffusion flag that differs from the resumed run's
    args.json; returns log lines listing the training flags that changed."""
    try:
        saved = read_args_json(plan.folder)
    except FileNotFoundError:
        return [f"{plan.folder} has no args.json: model and diffusion flags not compared"]
    except ValueError as e:
        return [f"WARNING: {e}: model and diffusion flags not compared"]
    differing = _differing_model_flags(model_flags, saved)
    if differing:
        raise UsageError(
            f"resuming step {plan.step} of {plan.folder} with different model/diffusion flags: "
            f"{'; '.join(differing)}. Pass the flags of that run (its args.json), or start a new "
            f"run in another --log_dir")
    current = cfg.to_json()
    training_names = [k for k in current if k not in START_FLAGS]
    changed = [f"--{k} {saved[k]!r} -> {current[k]!r}" for k in training_names
               if k in saved and k in current and _as_json(current[k]) != saved[k]]
    if not changed:
        return []
    return [f"training flags changed since the resumed run: {', '.join(changed)}"]
