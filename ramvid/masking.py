"""Which frames are given. One representation everywhere: a bool obs_mask (N, T), True = given."""
import torch

from .runtime import to_device


def sample_train_mask(batch, seq_len, uncondition_rate, max_num_mask_frames, mask_range=None,
                      generator=None, device=None):
    """The paper's random masks: per video, with probability `uncondition_rate` no frame is
    given; otherwise r ~ U{1..max_num_mask_frames} distinct frames drawn uniformly from
    `mask_range` = (first, last) (half-open; default all frames) are given.
    """
    problem = train_mask_problem(seq_len, max_num_mask_frames, mask_range)
    if problem:
        setting, reason = problem
        value = mask_range if setting == "mask_range" else max_num_mask_frames
        raise ValueError(f"{setting}={value}: {reason}")
    lo, hi = (0, seq_len) if mask_range is None else (int(mask_range[0]), int(mask_range[1]))
    if not 0.0 <= uncondition_rate <= 1.0:
        raise ValueError(f"uncondition_rate={uncondition_rate} must lie in [0, 1]")
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    if max_num_mask_frames > 0:
        unconditional = torch.rand(batch, generator=generator) < uncondition_rate
        counts = torch.randint(1, max_num_mask_frames + 1, (batch,), generator=generator)
        for i in range(batch):
            chosen = torch.randperm(hi - lo, generator=generator)[: counts[i]] + lo
            if not unconditional[i]:
                mask[i, chosen] = True
    # Drawn on the CPU (the same masks on every device), copied without a host sync.
    return mask if device is None else to_device(mask, device)


def train_mask_problem(seq_len, max_num_mask_frames, mask_range=None):
    """(setting, why it is wrong) for the first of `mask_range` (half-open (a, b); None = all
    frames) and `max_num_mask_frames` that does not fit a seq_len-frame clip, or None. The
    settings are named as the training flags, so the command line reports them as flag errors."""
    lo, hi = (0, seq_len) if mask_range is None else (int(mask_range[0]), int(mask_range[1]))
    if not 0 <= lo < hi <= seq_len:
        return "mask_range", f"needs 0 <= a < b <= seq_len ({seq_len})"
    if not 0 <= max_num_mask_frames <= hi - lo:
        return "max_num_mask_frames", f"exceeds the {hi - lo} frames of mask_range [{lo}, {hi})"
    return None


def frame_indices_problem(frames, seq_len):
    """Why `frames` (e.g. `--cond_frames 0,1,`) cannot be the given frames of a seq_len-frame
    video, or None."""
    frames = list(frames)
    bad = [f for f in frames if not 0 <= f < seq_len]
    if bad:
        return f"frames {bad} outside [0, seq_len={seq_len})"
    if len(set(frames)) != len(frames):
        return "names a frame twice"
    return None


def mask_from_frames(frames, batch, seq_len, device=None):
    """Give the same frame indices (e.g. `--cond_frames 0,1,`) in every video of a batch."""
    frames = list(frames)
    reason = frame_indices_problem(frames, seq_len)
    if reason:
        raise ValueError(f"cond_frames {frames}: {reason}")
    mask = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
    mask[:, frames] = True
    return mask
