"""Learning-rate schedules, as a function of the number of optimiser steps already taken."""

ANNEAL_TYPES = ("none", "linear", "step", "time_based")  # --anneal_type


def lr_at(cfg, step):
    """The learning rate for the update that follows `step` completed steps."""
    if cfg.anneal_type == "none":
        return cfg.lr
    if cfg.anneal_type == "linear":
        return cfg.lr * max(0.0, 1.0 - step / cfg.lr_anneal_steps)
    if cfg.anneal_type == "step":
        return cfg.lr * cfg.drop ** (step // cfg.steps_drop)
    if cfg.anneal_type == "time_based":
        return cfg.lr / (1.0 + cfg.decay * step)
    raise ValueError(f"anneal_type={cfg.anneal_type!r} is not one of: {', '.join(ANNEAL_TYPES)}")


def last_step(cfg):
    """The step after which training ends, or None to run until stopped.

    --max_steps N ends after step N; a linear schedule ends where the rate reaches 0.
    """
    ends = [s for s in (cfg.max_steps, cfg.lr_anneal_steps if cfg.anneal_type == "linear" else 0) if s > 0]
    return min(ends) if ends else None
