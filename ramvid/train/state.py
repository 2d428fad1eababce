"""Saving and restoring everything a training run needs to continue exactly where it stopped.

Besides model, EMA and optimiser, the opt file holds each rank's RNG states and data-loader
position (gathered to rank 0), the GradScaler and the schedule sampler's loss history.
Where a run starts (which checkpoint, which folder) is decided in `rundir`.
"""
from .. import dist
from ..checkpoint import (CheckpointError, delete_checkpoint_files, rng_state, save_checkpoint,
                          set_rng_state, sets_to_prune)

FORMAT_VERSION = 1


def _cpu(state):
    """A state dict copied to the CPU one tensor at a time (no second copy on the GPU)."""
    return {k: v.detach().cpu() for k, v in state.items()}


def save_training_state(logdir, step, model, ema, opt, scaler, schedule_sampler, data, info,
                        keep=0, keep_every=0):
    """Write the checkpoint of `step`, then delete the sets that --keep_checkpoints `keep` and
    --keep_every `keep_every` no longer keep. Every rank must call this (it gathers per-rank
    state); only rank 0 writes, while the others wait for it without the collective timeout.
    Returns the deleted steps."""
    per_rank = dist.all_gather_object({"rng": rng_state(), "data": data.state_dict()})

    def write():
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
        emas = {rate: ema.state_dict(rate) for rate in ema.rates}  # CPU copies
        save_checkpoint(logdir, step, _cpu(model.state_dict()), emas, opt_state)
        pruned = sets_to_prune(logdir, ema.rates, keep, keep_every)
        delete_checkpoint_files([path for paths in pruned.values() for path in paths])
        return list(pruned)

    return dist.run_on_main(write)


def restore_training_state(ckpt, model, opt, scaler, schedule_sampler, data, info, log):
    """Load model (when this rank loaded it), optimiser, scaler, sampler, this rank's RNG and
    data position from `ckpt`."""
    if ckpt.model is not None:
        try:
            model.load_state_dict(ckpt.model)
        except RuntimeError as e:
            reason = str(e).splitlines()[0]
            raise CheckpointError(f"{ckpt.folder}: model checkpoint of step {ckpt.step} does not "
                                  f"fit the model these flags build: {reason}") from None
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
        history = ckpt.opt["schedule_sampler"]
        schedule_sampler.load_state_dict({k: v.cpu() for k, v in history.items()})
    ranks = ckpt.opt.get("ranks", [])
    if len(ranks) == info.world_size:
        set_rng_state(ranks[info.rank]["rng"])
        data.load_state_dict(ranks[info.rank]["data"])
    elif info.is_main:
        log.warn(f"the checkpoint was written by {len(ranks)} ranks, this run has "
                 f"{info.world_size}: random streams and data order restart (not an exact resume)")
