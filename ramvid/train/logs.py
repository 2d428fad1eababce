"""What a training run writes for people: log.txt, progress.csv, TensorBoard events, a tqdm bar.

Only rank 0 writes; on other ranks every method is a no-op (their warnings still reach stderr).
"""
import csv
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

PROGRESS_COLUMNS = (
    "step", "samples", "loss", "mse", "vb", "loss_q0", "loss_q1", "loss_q2", "loss_q3",
    "grad_norm", "lr", "samples_per_s", "skipped_steps", "loss_scale",
)


def _tensorboard_writer(logdir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(logdir))


class RunLogger:
    def __init__(self, logdir, enabled=True):
        self.logdir = Path(logdir)
        self.enabled = enabled
        self.bar = None
        self.tb = None
        if not enabled:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.logdir / "log.txt", "a", buffering=1)
        self._previous_showwarning = warnings.showwarning
        warnings.showwarning = self._showwarning
        self.tb = _tensorboard_writer(self.logdir)

    # ------------------------------------------------------------------ text
    def info(self, message):
        if not self.enabled:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        self._log_file.write(line + "\n")
        if self.bar is not None:
            self.bar.write(message, file=sys.stdout)
        else:
            print(message, flush=True)

    def warn(self, message):
        self.info(f"WARNING: {message}")

    def _showwarning(self, message, category, filename, lineno, file=None, line=None):
        self.warn(f"{message}")

    # ------------------------------------------------------------------ progress.csv
    @property
    def progress_path(self):
        return self.logdir / "progress.csv"

    def keep_rows_up_to(self, step):
        """Drop progress.csv rows after `step` (written after the checkpoint a run resumes from)."""
        if not self.enabled or not self.progress_path.exists():
            return
        with open(self.progress_path, newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
        if len(kept) == len(rows):
            return
        tmp = self.progress_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, PROGRESS_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        tmp.replace(self.progress_path)

    def write_row(self, row):
        """Append one row to progress.csv (and TensorBoard); missing or None values stay empty."""
        if not self.enabled:
            return
        new = not self.progress_path.exists() or self.progress_path.stat().st_size == 0
        with open(self.progress_path, "a", newline="") as f:
            writer = csv.DictWriter(f, PROGRESS_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()
        summary = " ".join(f"{k}={_fmt(v)}" for k, v in row.items() if v is not None)
        self.info(summary)

    # ------------------------------------------------------------------ tqdm
    def start_bar(self, start_step, last_step):
        """A progress bar with ETA when the run has a known last step."""
        if self.enabled and last_step is not None:
            self.bar = tqdm(total=last_step, initial=start_step, unit="step", dynamic_ncols=True, disable=None,
                            file=sys.stderr)

    def advance(self, loss=None):
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

    def close(self):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
        warnings.showwarning = self._previous_showwarning
        self._log_file.close()


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
