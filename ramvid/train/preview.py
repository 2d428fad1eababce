"""Held-out previews while training (`--sample_interval N --val_data_dir DIR`).

Every N steps rank 0 takes the EMA weights (the first `--ema_rate`) and, on the same fixed
held-out clips each time (the first files of DIR, sorted):

- samples *prediction* (frames 0 and 1 given) and *infilling* (first and last frame given)
  with a fast sampler (DDIM, `PREVIEW_RESPACING` steps, eta 1, fixed seed), and scores the
  generated frames by PSNR against the truth, beside the copy-last-given baseline;
- computes the held-out denoising loss: the training loss with fixed timesteps, noise and
  random masks, so successive values differ only by the weights.

It writes `preview/step_NNNNNN.gif` (per task: a row of truth, a row of samples; given frames
outlined), one row per preview in `preview/preview.csv`, and the same scalars and a frame strip
per task to TensorBoard when it is installed (`pip install -e .[tb]`).
"""
import copy
import csv
import time
from pathlib import Path

import numpy as np
import torch

from ..config import create_diffusion
from ..data import VideoClipDataset
from ..metrics.frame_metrics import copy_last_given
from ..masking import mask_from_frames, sample_train_mask
from ..metrics import frame_metrics
from ..sample.batch import to_uint8
from ..video_io import filmstrip, grid_obs_mask, save_video_grid

PREVIEW_CLIPS = 8  # few enough that a preview costs seconds on a CPU
PREVIEW_RESPACING = "ddim10"
PREVIEW_SEED = 0
COLUMNS = ("step", "val_loss", "psnr_prediction", "psnr_prediction_copy_last",
           "psnr_infilling", "psnr_infilling_copy_last", "seconds")


def preview_tasks(seq_len):
    """{task: given frame indices}: the tasks a preview samples."""
    tasks = {"prediction": [0, 1], "infilling": [0, seq_len - 1]}
    return {name: frames for name, frames in tasks.items() if len(set(frames)) < seq_len}


class Preview:
    """Build once on rank 0 before training; call `run(step, ema)` every --sample_interval."""

    def __init__(self, cfg, model_flags, model, logdir, log):
        self.cfg, self.log = cfg, log
        self.out_dir = Path(logdir) / "preview"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seq_len = model_flags["seq_len"]
        self.device = next(model.parameters()).device
        dataset = VideoClipDataset(cfg.val_data_dir, model_flags["image_size"], self.seq_len,
                                   class_cond=model_flags["class_cond"], rgb=model_flags["rgb"])
        count = min(PREVIEW_CLIPS, len(dataset))
        items = [dataset[i] for i in range(count)]
        self.video = torch.stack([v for v, _ in items]).to(self.device)  # (N, C, T, H, W)
        self.model_kwargs = {}
        if model_flags["class_cond"]:
            self.model_kwargs["y"] = torch.tensor([y for _, y in items], device=self.device)
        self.truth = to_uint8(self.video)  # (N, T, H, W, C)
        self.train_diffusion = create_diffusion(**model_flags)
        self.fast_diffusion = create_diffusion(**{**model_flags,
                                                  "timestep_respacing": PREVIEW_RESPACING})
        self.ema_model = copy.deepcopy(model).eval()  # holds the EMA weights while previewing
        self.ema_rate = cfg.ema_rate[0]
        self.tb = log.tb
        log.info(f"preview every {cfg.sample_interval} steps: {count} clips of "
                 f"{cfg.val_data_dir}, {PREVIEW_RESPACING} (eta 1), EMA {self.ema_rate} -> "
                 f"{self.out_dir}" + ("" if self.tb is not None else
                                      "; TensorBoard is off (pip install -e .[tb] turns it on)"))

    def _generator(self, stream):
        return torch.Generator(device=self.device).manual_seed(PREVIEW_SEED * 1000 + stream)

    @torch.no_grad()
    def val_loss(self):
        """The training loss on the held-out clips with fixed timesteps, noise and masks."""
        n = self.video.shape[0]
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
        return float(losses["loss"].mean())

    @torch.no_grad()
    def sample(self, cond_frames, stream):
        """uint8 (N, T, H, W, C) samples with frames `cond_frames` taken from the held-out clips."""
        n = self.video.shape[0]
        obs_mask = mask_from_frames(cond_frames, n, self.seq_len, device=self.device)
        out = self.fast_diffusion.ddim_sample_loop(
            self.ema_model, tuple(self.video.shape), obs=self.video, obs_mask=obs_mask, eta=1.0,
            model_kwargs=self.model_kwargs, generator=self._generator(stream))
        return to_uint8(out)

    def run(self, step, ema):
        """Preview the EMA weights after `step`; returns the seconds it took."""
        start = time.time()
        ema.copy_to(self.ema_model, self.ema_rate)
        row = {"step": step, "val_loss": self.val_loss()}
        videos, masks, strips = [], [], {}
        for stream, (task, cond_frames) in enumerate(preview_tasks(self.seq_len).items()):
            samples = self.sample(cond_frames, stream)  # (N, T, H, W, C)
            mask = np.zeros(self.seq_len, dtype=bool)
            mask[cond_frames] = True
            row[f"psnr_{task}"] = frame_metrics(samples[:, None], self.truth, mask)["psnr_mean"]
            row[f"psnr_{task}_copy_last"] = frame_metrics(
                copy_last_given(self.truth, mask)[:, None], self.truth, mask)["psnr_mean"]
            videos += [self.truth, samples]  # grid rows: truth, then samples
            masks += [grid_obs_mask(2 * len(samples), self.seq_len, cond_frames=cond_frames)]
            # TensorBoard image: truth and sample of the first two clips, one row per video.
            pairs = np.stack([v for i in range(min(2, len(samples)))
                              for v in (self.truth[i], samples[i])])
            strips[task] = filmstrip(pairs, grid_obs_mask(len(pairs), self.seq_len,
                                                          cond_frames=cond_frames), scale=4)
        save_video_grid(self.out_dir / f"step_{step:06d}.gif", np.concatenate(videos),
                        obs_mask=np.concatenate(masks), columns=len(self.truth))
        row["seconds"] = time.time() - start
        self._write(row, strips)
        return time.time() - start

    def _write(self, row, strips):
        path = self.out_dir / "preview.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(f"preview/{key}", value, row["step"])
            for task, image in strips.items():
                self.tb.add_image(f"preview/{task}", image, row["step"], dataformats="HWC")
            self.tb.flush()
        scores = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step")
        self.log.info(f"preview step {row['step']}: {scores}")


def make_preview(cfg, model_flags, model, logdir, log, info):
    """A Preview on rank 0 when --sample_interval is set; None otherwise."""
    if not cfg.sample_interval or not info.is_main:
        return None
    return Preview(cfg, model_flags, model, logdir, log)


__all__ = ["COLUMNS", "PREVIEW_CLIPS", "PREVIEW_RESPACING", "Preview", "copy_last_given",
           "make_preview", "preview_tasks"]
