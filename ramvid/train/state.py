"""Saving and restoring everything a training run needs to continue exactly where it stopped.

Besides model, EMA and optimiser, the opt file holds each rank's RNG states and data-loader
position (gathered to rank 0), the GradScaler and the schedule sampler's loss history.
"""
from pathlib import Path

from .. import dist
from ..checkpoint import (CheckpointError, load_latest_checkpoint, load_training_checkpoint,
                          rng_state, save_checkpoint, set_rng_state, step_from_model_path)

FORMAT_VERSION = 1


def _cpu(state):
    return {k: v.detach().cpu() for k, v in state.items()}


def save_training_state(logdir, step, model, ema, opt, scaler, schedule_sampler, data, info):
    """Write the checkpoint of `step`. Every rank must call this (it gathers per-rank state);
    only rank 0 writes."""
    per_rank = dist.all_gather_object({"rng": rng_state(), "data": data.state_dict()})
    if not info.is_main:
        return None
    opt_state = {
        "format": FORMAT_VERSION,
        "step": step,
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "schedule_sampler": (schedule_sampler.state_dict()
                             if hasattr(schedule_sampler, "state_dict") else {}),
        "world_size": info.world_size,
        "ranks": per_rank,
    }
    emas = {rate: _cpu(ema.state_dict(rate)) for rate in ema.rates}
    return save_checkpoint(logdir, step, _cpu(model.state_dict()), emas, opt_state)


def find_checkpoint_to_resume(resume_checkpoint, logdir, ema_rates, info, log):
    """Which checkpoint this run continues from, decided by rank 0 and shared with all ranks.

    "path/modelNNNNNN.pt": that step in that folder (a missing opt or EMA file is a warning).
    "" or "auto": the newest complete checkpoint in the log dir, if any.
    Returns a TrainingCheckpoint (loaded on every rank) or None.
    """
    choice, ckpt = None, None
    if info.is_main:
        if resume_checkpoint not in ("", "auto"):
            path = Path(resume_checkpoint)
            choice = (str(path.parent), step_from_model_path(path), False)
        else:
            ckpt = load_latest_checkpoint(logdir, ema_rates)
            if ckpt is not None:
                choice = (str(ckpt.folder), ckpt.step, True)
                log.info(f"resuming from step {ckpt.step}: the log dir {logdir} already holds "
                         f"checkpoints (--resume_checkpoint auto)")
    choice = dist.broadcast_object(choice)
    if choice is None:
        return None
    folder, step, complete = choice
    if ckpt is None:
        ckpt = load_training_checkpoint(folder, step, ema_rates, require_all=complete)
        if info.is_main and not complete:
            log.info(f"resuming from {resume_checkpoint} (step {step})")
    return ckpt


def restore_training_state(ckpt, model, opt, scaler, schedule_sampler, data, info, log):
    """Load model, optimiser, scaler, sampler, this rank's RNG and data position from `ckpt`."""
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        raise CheckpointError(f"{ckpt.folder}: model checkpoint of step {ckpt.step} does not fit "
                              f"the model these flags build: {str(e).splitlines()[0]}") from None
    if ckpt.opt is None:
        return
    try:
        opt.load_state_dict(ckpt.opt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{ckpt.folder}: optimizer state of step {ckpt.step} does not fit "
                              f"this model: {e}") from None
    if ckpt.opt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt.opt["scaler"])
    if ckpt.opt.get("schedule_sampler") and hasattr(schedule_sampler, "load_state_dict"):
        schedule_sampler.load_state_dict(ckpt.opt["schedule_sampler"])
    ranks = ckpt.opt.get("ranks", [])
    if len(ranks) == info.world_size:
        set_rng_state(ranks[info.rank]["rng"])
        data.load_state_dict(ranks[info.rank]["data"])
    elif info.is_main:
        log.warn(f"the checkpoint was written by {len(ranks)} ranks, this run has "
                 f"{info.world_size}: random streams and data order restart (not an exact resume)")
