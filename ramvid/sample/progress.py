"""What a sampling run shows its user: a bar with ETA over the denoising steps, durations."""

from tqdm.auto import tqdm


def step_bar(total, enabled, desc="sampling"):
    """A tqdm bar over denoising steps (with ETA) and a callback that advances it."""
    bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
    return bar, (lambda _out: bar.update(1))


def format_duration(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["format_duration", "step_bar"]
