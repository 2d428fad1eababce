"""Which frames are given. One representation everywhere: a bool obs_mask (N, T), True = given."""
import torch

from .accel import to_device


def sample_train_mask(batch, seq_len, uncondition_rate, max_num_mask_frames, mask_range=None,
                      generator=None, device=None):
    """The paper's random masks: per video, with probability `uncondition_rate` no frame is
    given; otherwise r ~ U{1..max_num_mask_frames} distinct frames drawn uniformly from
    `mask_range` = (first, last) (half-open; default all frames) are given.
    """
    lo, hi = (0, seq_len) if mask_range is None else (int(mask_range[0]), int(mask_range[1]))
    if not 0 <= lo < hi <= seq_len:
        raise ValueError(f"mask_range=({lo}, {hi}) must lie within [0, seq_len={seq_len}]")
    if not 0 <= max_num_mask_frames <= hi - lo:
        raise ValueError(
            f"max_num_mask_frames={max_num_mask_frames} exceeds the {hi - lo} frames of mask_range"
        )
    if not 0.0 <= uncondition_rate <= 1.0:
        raise ValueError(f"uncondition_rate={uncondition_rate} must lie in [0, 1]")
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    if max_num_mask_frames == 0:
        return _to(mask, device)
    unconditional = torch.rand(batch, generator=generator) < uncondition_rate
    counts = torch.randint(1, max_num_mask_frames + 1, (batch,), generator=generator)
    for i in range(batch):
        chosen = torch.randperm(hi - lo, generator=generator)[: counts[i]] + lo
        if not unconditional[i]:
            mask[i, chosen] = True
    return _to(mask, device)


def _to(mask, device):
    # Drawn on the CPU (the same masks on every device), copied without a host sync.
    return mask if device is None else to_device(mask, device)


def mask_from_frames(frames, batch, seq_len, device=None):
    """Give the same frame indices (e.g. `--cond_frames 0,1,`) in every video of a batch."""
    frames = list(frames)
    bad = [f for f in frames if not 0 <= f < seq_len]
    if bad:
        raise ValueError(f"cond_frames {bad} outside [0, seq_len={seq_len})")
    mask = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
    mask[:, frames] = True
    return mask
