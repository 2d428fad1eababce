"""What a sampling run tells its user: the plan, the measured speed, a bar with ETA."""
import time

from tqdm.auto import tqdm


def step_bar(total, enabled, desc="sampling"):
    """A tqdm bar over denoising steps (with ETA) and a callback that advances it."""
    bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
    return bar, (lambda _out: bar.update(1))


class StepTimer:
    """Seconds per denoising step of the first batch, not counting its first step (start-up,
    kernel selection, compilation): `callback` is chained in front of the bar's."""

    def __init__(self, then):
        self.then, self.stamps = then, []

    def __call__(self, out):
        if len(self.stamps) < 1_000_000:
            self.stamps.append(time.perf_counter())
        self.then(out)

    def seconds_per_step(self):
        if len(self.stamps) >= 2:
            return (self.stamps[-1] - self.stamps[0]) / (len(self.stamps) - 1)
        return None


def format_duration(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


__all__ = ["StepTimer", "format_duration", "step_bar"]
