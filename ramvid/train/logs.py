"""What a training run writes for people: log.txt, progress.csv and its loss statistics,
TensorBoard events, a tqdm bar, and held-out previews (`Preview`: `--sample_interval N
--val_data_dir DIR`, described in docs/DEMO.md). Only rank 0 writes; on other ranks every
RunLogger method is a no-op (their warnings still reach stderr).
"""
import copy
import csv
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import atomic_path
from ..config import create_diffusion
from ..data import VideoClipDataset
from ..errors import UsageError
from ..masking import mask_from_frames, sample_train_mask
from ..metrics import frame_metrics
from ..metrics.frame_metrics import copy_last_given
from ..sample.batch import to_uint8
from ..video_io import filmstrip, grid_obs_mask, save_video_grid

PROGRESS_COLUMNS = (
    "step", "samples", "loss", "mse", "vb", "loss_q0", "loss_q1", "loss_q2", "loss_q3",
    "grad_norm", "lr", "samples_per_s", "skipped_steps", "loss_scale",
)
LOSS_TERMS = ("loss", "mse", "vb")  # the per-video terms a step reports
PREVIEW_CLIPS = 8  # few enough that a preview costs seconds on a CPU
PREVIEW_RESPACING = "ddim10"
PREVIEW_SEED = 0
PROGRESS_CSV = "progress.csv"  # in the log dir
PREVIEW_CSV = Path("preview", "preview.csv")  # in the log dir
PREVIEW_COLUMNS = ("step", "val_loss", "psnr_prediction", "psnr_prediction_copy_last",
                   "psnr_infilling", "psnr_infilling_copy_last", "seconds")


class RunLogger:
    """`with RunLogger(logdir, enabled=rank == 0) as log:` log.txt (every line also printed, every
    Python warning too), and from `start_at` on progress.csv, TensorBoard and the progress bar of
    one run."""

    def __init__(self, logdir, enabled=True):
        self.logdir = Path(logdir)
        self.progress_path = self.logdir / PROGRESS_CSV
        self.enabled = enabled
        self.bar = self.tb = None
        if not enabled:
            return
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.logdir / "log.txt", "a", buffering=1)
        self._previous_showwarning = warnings.showwarning
        warnings.showwarning = lambda message, *details, **more: self.warn(f"{message}")

    def info(self, message):
        if not self.enabled:
            return
        self._log_file.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")
        if self.bar is not None:
            self.bar.write(message, file=sys.stdout)
        else:
            print(message, flush=True)

    def warn(self, message):
        self.info(f"WARNING: {message}")

    def start_at(self, step, last_step):
        """Forget what was logged after `step`, where this run starts (a resumed run logs those
        steps again): rows of progress.csv and preview.csv, and TensorBoard's events. Shows a
        progress bar with ETA when the run has a `last_step`."""
        if not self.enabled:
            return
        if last_step is not None:
            self.bar = tqdm(total=last_step, initial=step, unit="step", dynamic_ncols=True,
                            disable=None, file=sys.stderr)
        _keep_rows_up_to(self.progress_path, PROGRESS_COLUMNS, step)
        _keep_rows_up_to(self.logdir / PREVIEW_CSV, PREVIEW_COLUMNS, step)
        try:
            from torch.utils.tensorboard import SummaryWriter
            # TensorBoard hides the events of steps >= purge_step in the older event files.
            self.tb = SummaryWriter(log_dir=str(self.logdir), purge_step=step + 1)
        except ImportError:  # tensorboard is optional
            pass

    def write_row(self, row):
        """Append one row to progress.csv (and TensorBoard); missing or None values stay empty."""
        if not self.enabled:
            return
        _append_row(self.progress_path, PROGRESS_COLUMNS, row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()
        self.info(" ".join(f"{k}={_fmt(v)}" for k, v in row.items() if v is not None))

    def advance(self):
        if self.bar is not None:
            self.bar.update(1)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        """An error that ends the run is the log's last line; then the files are closed."""
        if not self.enabled:
            return
        if isinstance(error, Exception):
            text = str(error).strip()
            self.info(f"ERROR: {text.splitlines()[0] if text else type(error).__name__}")
        for output in (self.bar, self.tb):
            if output is not None:
                output.close()
        warnings.showwarning = self._previous_showwarning
        self._log_file.close()


def _keep_rows_up_to(path, columns, step):
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step]
    if len(kept) == len(rows):
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)


def _append_row(path, columns, row):
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class LossStats:
    """Sums of the logged quantities over a log interval, kept on the device (no host sync)
    until `reduce`, which averages them over steps and ranks."""

    # Layout of the packed sum vector.
    TERMS = len(LOSS_TERMS)  # 0..2: sum of each loss term over videos
    QUARTILE_SUM, QUARTILE_COUNT = TERMS, TERMS + 4  # 3..6: loss sum per t-quartile, 7..10: count
    VIDEOS, GRAD_NORM, STEPS = TERMS + 8, TERMS + 9, TERMS + 10

    def __init__(self, num_timesteps, device):
        self.num_timesteps = num_timesteps
        self.device = device
        self.present = set()  # the LOSS_TERMS this diffusion reports
        self.reset()

    def reset(self):
        self.sums = torch.zeros(self.TERMS + 11, dtype=torch.float64, device=self.device)
        self.skipped = 0

    def add(self, terms, t, grad_norm):
        s = self.sums
        for i, name in enumerate(LOSS_TERMS):
            if name in terms:
                self.present.add(name)
                s[i] += terms[name].sum()
        quartile = (4 * t // self.num_timesteps).clamp(max=3)
        s[self.QUARTILE_SUM:self.QUARTILE_SUM + 4].index_add_(0, quartile, terms["loss"].double())
        s[self.QUARTILE_COUNT:self.QUARTILE_COUNT + 4].index_add_(
            0, quartile, torch.ones_like(terms["loss"], dtype=torch.float64))
        s[self.VIDEOS] += t.numel()
        s[self.GRAD_NORM] += grad_norm.double()
        s[self.STEPS] += 1

    def reduce(self, all_reduce=None):
        """Means over the interval (and over ranks when `all_reduce` sums across them)."""
        packed = self.sums.clone()
        if all_reduce is not None:
            all_reduce(packed)
        values = packed.tolist()  # the one host sync of a log interval
        videos, steps = values[self.VIDEOS], values[self.STEPS]
        out = {name: values[i] / videos if name in self.present and videos else None
               for i, name in enumerate(LOSS_TERMS)}
        for q in range(4):
            count = values[self.QUARTILE_COUNT + q]
            out[f"loss_q{q}"] = values[self.QUARTILE_SUM + q] / count if count else None
        out["grad_norm"] = values[self.GRAD_NORM] / steps if steps else None
        out["skipped_steps"] = self.skipped  # every rank skips the same steps
        self.reset()
        return out


# -------------------------------------------------------------------------- previews
def preview_tasks(seq_len):
    """{task: given frame indices}: the tasks a preview samples."""
    tasks = {"prediction": [0, 1], "infilling": [0, seq_len - 1]}
    return {name: frames for name, frames in tasks.items() if len(set(frames)) < seq_len}


class Preview:
    """Previews of the EMA weights of the first --ema_rate on the same held-out clips (the first
    files of --val_data_dir, sorted) with fixed draws, so successive values differ only by the
    weights. Build once on rank 0 before training; call `run(step, ema)` every --sample_interval."""

    def __init__(self, cfg, model_flags, model, logdir, log, class_names=()):
        self.cfg, self.log = cfg, log
        self.csv_path = Path(logdir) / PREVIEW_CSV
        self.out_dir = self.csv_path.parent
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seq_len = model_flags["seq_len"]
        self.device = next(model.parameters()).device
        dataset = VideoClipDataset(cfg.val_data_dir, model_flags["image_size"], self.seq_len,
                                   class_cond=model_flags["class_cond"], rgb=model_flags["rgb"])
        count = min(PREVIEW_CLIPS, len(dataset))
        items = [dataset[i] for i in range(count)]
        self.video = torch.stack([v for v, _ in items]).to(self.device)  # (N, C, T, H, W)
        self.model_kwargs = {}
        if model_flags["class_cond"]:  # the training run's class numbers, by class name
            names = [dataset.class_names[y] for _, y in items]
            unknown = sorted(set(names) - set(class_names))
            if unknown:
                raise UsageError(f"--val_data_dir {cfg.val_data_dir}: classes {unknown} are not "
                                 "among the training data's")
            self.model_kwargs["y"] = torch.tensor([list(class_names).index(n) for n in names],
                                                  device=self.device)
        self.truth = to_uint8(self.video)  # (N, T, H, W, C)
        self.train_diffusion = create_diffusion(**model_flags)
        self.fast_diffusion = create_diffusion(**{**model_flags,
                                                  "timestep_respacing": PREVIEW_RESPACING})
        self.ema_model = copy.deepcopy(model).eval()  # holds the EMA weights while previewing
        self.ema_rate = cfg.ema_rate[0]
        log.info(f"preview every {cfg.sample_interval} steps: {count} clips of "
                 f"{cfg.val_data_dir}, {PREVIEW_RESPACING} (eta 1), EMA {self.ema_rate} -> "
                 f"{self.out_dir}" + ("" if log.tb is not None else
                                      "; TensorBoard is off (pip install -e .[tb] turns it on)"))

    @torch.no_grad()
    def run(self, step, ema):
        """Preview the EMA weights after `step`; returns the seconds it took."""
        start, n = time.time(), self.video.shape[0]
        ema.copy_to(self.ema_model, self.ema_rate)
        # The training loss on the held-out clips with fixed timesteps, noise and masks.
        cpu = torch.Generator().manual_seed(PREVIEW_SEED)
        obs_mask = sample_train_mask(n, self.seq_len, self.cfg.uncondition_rate,
                                     self.cfg.max_num_mask_frames, self.cfg.mask_range,
                                     generator=cpu, device=self.device)
        t = torch.randint(0, self.train_diffusion.num_timesteps, (n,), generator=cpu)
        noise = torch.randn(self.video.shape, generator=cpu).to(self.device)
        losses = self.train_diffusion.training_losses(
            self.ema_model, self.video, t.to(self.device), obs_mask=obs_mask,
            model_kwargs=self.model_kwargs, noise=noise,
            exclude_conditional=self.cfg.exclude_conditional)
        row = {"step": step, "val_loss": float(losses["loss"].mean())}
        videos, masks, strips = [], [], {}
        for stream, (task, cond_frames) in enumerate(preview_tasks(self.seq_len).items()):
            seed = PREVIEW_SEED * 1000 + stream
            generator = torch.Generator(device=self.device).manual_seed(seed)
            samples = to_uint8(self.fast_diffusion.ddim_sample_loop(
                self.ema_model, tuple(self.video.shape), obs=self.video, eta=1.0,
                obs_mask=mask_from_frames(cond_frames, n, self.seq_len, device=self.device),
                model_kwargs=self.model_kwargs, generator=generator))  # (N, T, H, W, C)
            mask = np.isin(np.arange(self.seq_len), cond_frames)
            row[f"psnr_{task}"] = frame_metrics(samples[:, None], self.truth, mask)["psnr_mean"]
            row[f"psnr_{task}_copy_last"] = frame_metrics(
                copy_last_given(self.truth, mask)[:, None], self.truth, mask)["psnr_mean"]
            videos += [self.truth, samples]  # grid rows: truth, then samples
            masks += [grid_obs_mask(2 * len(samples), self.seq_len, cond_frames=cond_frames)]
            # TensorBoard image: truth and sample of the first two clips, one row per video.
            pairs = np.stack([v for i in range(min(2, len(samples)))
                              for v in (self.truth[i], samples[i])])
            strips[task] = filmstrip(pairs, np.broadcast_to(mask, pairs.shape[:2]), scale=4)
        save_video_grid(self.out_dir / f"step_{step:06d}.gif", np.concatenate(videos),
                        obs_mask=np.concatenate(masks), columns=len(self.truth))
        row["seconds"] = time.time() - start
        _append_row(self.csv_path, PREVIEW_COLUMNS, row)
        if self.log.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.log.tb.add_scalar(f"preview/{key}", value, step)
            for task, image in strips.items():
                self.log.tb.add_image(f"preview/{task}", image, step, dataformats="HWC")
            self.log.tb.flush()
        scores = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step")
        self.log.info(f"preview step {step}: {scores}")
        return time.time() - start
