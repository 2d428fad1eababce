"""The training loop (docs/TRAINING.md): data -> random masks -> masked diffusion loss -> AdamW
-> EMA -> logs and checkpoints. `train` at the bottom reads from top to bottom.

Every random choice of step s on rank r (masks, timesteps, noise) comes from a generator seeded
by (seed, r, s, stream) and is made for the whole batch before it is cut into microbatches, so a
resumed run draws what an uninterrupted run would and any microbatch size gives the same gradient.
"""
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import dist
from ..checkpoint import (CheckpointError, delete_checkpoint_files, rng_state, save_checkpoint,
                          set_rng_state, sets_to_prune)
from ..config import create_model_and_diffusion
from ..data import load_data
from ..diffusion.resample import create_named_schedule_sampler
from ..masking import sample_train_mask
from ..runtime import autocast_dtype, compile_model, configure_tf32, derive_seed, to_device
from .logs import LOSS_TERMS, LossStats, Preview
from .rundir import record_start

# Exit codes. EXIT_STOPPED (EX_TEMPFAIL of sysexits.h): a stop signal ended the run with a
# complete checkpoint of the step it stopped at; rerunning the command continues it (requeue).
EXIT_OK, EXIT_DIVERGED, EXIT_STOPPED = 0, 3, 75
ANNEAL_TYPES = ("none", "linear", "step", "time_based")  # --anneal_type
MASK_STREAM, TIMESTEP_STREAM, NOISE_STREAM = 0, 1, 2
FORMAT_VERSION = 1  # of the opt file


class StopRequest:
    """SIGTERM, SIGINT and SIGUSR1 ask the loop to finish the current step, save and exit with
    EXIT_STOPPED. Repeats change nothing: Slurm signals every process of a step and torchrun
    forwards the signal again, so one stop often arrives twice. (SIGKILL or Ctrl-\\ stop at once.)

    The handler only sets a flag: the loop logs, so a signal never re-enters a log write."""

    def __init__(self):
        self.signal_name = None  # the first stop signal received
        self._previous = {}
        self._pid = os.getpid()

    def __enter__(self):
        for sig in dist.STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a data-loader worker forked with this handler: the
            return  # main process decides when to stop, and its exit ends the workers
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            # Launchers (mpirun, SLURM) signal the data-loader workers too. The loader's SIGCHLD
            # handler would raise in the middle of the step when one dies; this run reads no
            # more batches, so a dying worker no longer matters.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class EMA:
    """Exponential moving averages of the model's parameters, one per rate (kept as written on
    the command line: they name the files): ema <- ema + (1 - rate) (param - ema) after every
    optimiser step. `states`: {rate: a dict saved by `state_dict`}; a rate without one starts
    from the model's weights."""

    def __init__(self, model, rates, states=None):
        self.model = model
        self.rates = list(rates)
        self.names = [name for name, _ in model.named_parameters()]
        self.params = {rate: [p.detach().clone() for p in model.parameters()]
                       for rate in self.rates}
        for rate, state in (states or {}).items():
            missing = [n for n in self.names if n not in state]
            if missing:
                raise KeyError(f"EMA {rate} state lacks parameters: {', '.join(missing[:5])}")
            with torch.no_grad():
                for name, value in zip(self.names, self.params[rate]):
                    value.copy_(state[name])

    @torch.no_grad()
    def update(self):
        current = [p.detach() for p in self.model.parameters()]
        for rate in self.rates:
            torch._foreach_lerp_(self.params[rate], current, 1.0 - float(rate))

    def state_dict(self, rate):
        """A plain model state dict holding the EMA weights (buffers from the live model), on the
        CPU: copied one tensor at a time, never a second full model on the GPU."""
        live = dict(zip(self.names, self.params[rate]))
        return {k: live.get(k, v).detach().to("cpu", copy=True)
                for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def copy_to(self, target, rate):
        """Put the EMA weights of `rate` into `target`, a copy of the live model, on its device
        (buffers from the live model): no trip through the CPU."""
        live = dict(zip(self.names, self.params[rate]))
        target_state = target.state_dict()
        for name, value in self.model.state_dict().items():
            target_state[name].copy_(live.get(name, value))


def lr_at(cfg, step):
    """The learning rate for the update that follows `step` completed steps."""
    if cfg.anneal_type == "linear":
        return cfg.lr * max(0.0, 1.0 - step / cfg.lr_anneal_steps)
    if cfg.anneal_type == "step":
        return cfg.lr * cfg.drop ** (step // cfg.steps_drop)
    if cfg.anneal_type == "time_based":
        return cfg.lr / (1.0 + cfg.decay * step)
    return cfg.lr  # "none" (--anneal_type accepts only ANNEAL_TYPES)


def last_step(cfg):
    """The step after which training ends, or None to run until stopped: --max_steps N ends
    after step N; a linear schedule ends where the rate reaches 0."""
    ends = (cfg.max_steps, cfg.lr_anneal_steps if cfg.anneal_type == "linear" else 0)
    return min((s for s in ends if s > 0), default=None)


@dataclass
class StepInputs:
    obs_mask: torch.Tensor  # (N, T) bool, True = frame given clean
    t: torch.Tensor  # (N,) long timestep indices
    weights: torch.Tensor  # (N,) importance weights of the schedule sampler
    noise: torch.Tensor  # (N, C, T, H, W)


def draw_step_inputs(cfg, schedule_sampler, video, rank, step):
    """Masks, timesteps and noise for the whole batch of step `step` on rank `rank`."""
    n, _, frames = video.shape[:3]
    device = video.device

    def generator(stream, on=torch.device("cpu")):
        return torch.Generator(device=on).manual_seed(derive_seed(cfg.seed, rank, step, stream))

    obs_mask = sample_train_mask(n, frames, cfg.uncondition_rate, cfg.max_num_mask_frames,
                                 cfg.mask_range, generator=generator(MASK_STREAM), device=device)
    t, weights = schedule_sampler.sample(n, "cpu", generator=generator(TIMESTEP_STREAM))
    t, weights = to_device(t, device), to_device(weights, device)  # no wait on the GPU
    noise = torch.randn(video.shape, generator=generator(NOISE_STREAM, device), device=device)
    return StepInputs(obs_mask, t, weights, noise)


def forward_backward(model, diffusion, video, model_kwargs, inputs, microbatch, *,
                     exclude_conditional=True, autocast=None, scaler=None, schedule_sampler=None):
    """Accumulate the gradient of the batch's mean weighted loss into `.grad`, `microbatch`
    videos at a time (a DDP-wrapped `model` all-reduces on the last one only); `model_kwargs`
    ({"y": (N,)} or {}) go to the model. Returns the per-video loss terms, detached: {name: (N,)}.
    """
    n = video.shape[0]
    terms = {}
    for start in range(0, n, microbatch):
        part = slice(start, min(start + microbatch, n))
        last = part.stop == n
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast or nullcontext():
                losses = diffusion.training_losses(
                    model, video[part], inputs.t[part], obs_mask=inputs.obs_mask[part],
                    model_kwargs={k: v[part] for k, v in model_kwargs.items()},
                    noise=inputs.noise[part], exclude_conditional=exclude_conditional)
            # Weighting each microbatch's mean by its share of the batch makes the summed
            # gradients equal the full batch's, also when the last microbatch is smaller.
            loss = (losses["loss"] * inputs.weights[part]).mean() * ((part.stop - part.start) / n)
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if schedule_sampler is not None:  # the loss-aware sampler learns from the losses
            schedule_sampler.update_with_local_losses(inputs.t[part], losses["loss"].detach())
        for name in LOSS_TERMS:
            if name in losses:
                terms.setdefault(name, []).append(losses[name].detach().float())
    return {name: torch.cat(parts) for name, parts in terms.items()}


def train(cfg, model_flags, info, start, log, stop):
    """Train from `start` (`rundir.run_folder`) until --max_steps (or the end of a linear lr
    schedule), a stop signal (`stop`, a StopRequest entered by the caller), or --max_bad_steps
    consecutive non-finite steps. `log` is the run's RunLogger. Returns the exit code."""
    device, logdir = info.device, start.logdir
    for line in start.messages:
        log.info(line)

    # ------------------------------------------------------------------ data, model, optimiser
    data = load_data(data_dir=cfg.data_dir, batch_size=cfg.batch_size,
                     image_size=model_flags["image_size"], seq_len=model_flags["seq_len"],
                     class_cond=model_flags["class_cond"], rgb=model_flags["rgb"], rank=info.rank,
                     world_size=info.world_size, seed=cfg.seed, num_workers=cfg.num_workers)
    if model_flags["class_cond"]:
        model_flags = dict(model_flags, num_classes=data.num_classes)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model, diffusion = create_model_and_diffusion(**model_flags)
    model.to(device)
    configure_tf32(cfg.tf32)  # CUDA only
    # Dropout differs per rank; everything else random is drawn from per-step generators.
    seed_everything(cfg.seed * info.world_size + info.rank)
    schedule_sampler = create_named_schedule_sampler(cfg.schedule_sampler, diffusion)
    # Fused: one kernel per step instead of a dozen full-size temporaries (CPU since torch 2.4).
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.use_fp16)
    dtype = autocast_dtype(cfg.use_fp16, cfg.bf16, device.type)
    autocast = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    # ------------------------------------------------------------------ the state resumed from
    step, ckpt = start.step, start.ckpt
    if ckpt is not None and ckpt.model is not None:  # ranks > 0 get rank 0's weights from DDP
        try:
            model.load_state_dict(ckpt.model)
        except RuntimeError as e:
            reason = str(e).splitlines()[0]
            raise CheckpointError(f"{ckpt.folder}: model checkpoint of step {ckpt.step} does not "
                                  f"fit the model these flags build: {reason}") from None
    if ckpt is not None and ckpt.opt is not None:
        try:
            opt.load_state_dict(ckpt.opt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{ckpt.folder}: optimizer state of step {ckpt.step} does not "
                                  f"fit this model: {e}") from None
        if ckpt.opt.get("scaler"):  # empty when saved without --use_fp16; ignored when disabled
            scaler.load_state_dict(ckpt.opt["scaler"])
        if ckpt.opt.get("schedule_sampler") and hasattr(schedule_sampler, "load_state_dict"):
            schedule_sampler.load_state_dict(ckpt.opt["schedule_sampler"])
        ranks = ckpt.opt.get("ranks", [])  # each rank's RNG and data position
        if len(ranks) == info.world_size:
            set_rng_state(ranks[info.rank]["rng"])
            data.load_state_dict(ranks[info.rank]["data"])
        elif info.is_main:
            log.warn(f"the checkpoint was written by {len(ranks)} ranks, this run has "
                     f"{info.world_size}: random streams and data order restart (not an exact "
                     f"resume)")
    # Only rank 0 saves, so only rank 0 keeps EMAs; a rate without a checkpoint starts from the
    # (restored) model weights.
    ema = EMA(model, cfg.ema_rate if info.is_main else (), ckpt.emas if ckpt else None)
    start.ckpt = ckpt = None  # frees the loaded tensors (the caller still holds `start`)

    # ------------------------------------------------------------------ the model as called
    ddp_model = model
    if info.world_size > 1:
        ddp_model = DDP(model, device_ids=[device] if device.type == "cuda" else None,
                        find_unused_parameters=False)  # also broadcasts rank 0's weights
    net = compile_model(ddp_model, cfg.compile)  # what is called; `model` is what is saved

    # ------------------------------------------------------------------ the run's record
    global_batch = cfg.batch_size * info.world_size
    num_params = sum(p.numel() for p in model.parameters())
    if info.is_main:
        record_start(logdir, step, {**model_flags, **cfg.to_json(), "world_size": info.world_size,
                                    "global_batch": global_batch, "class_names": data.class_names,
                                    "num_params": num_params})
    log.info(f"logdir {logdir}; {num_params / 1e6:.2f}M parameters; {info.world_size} rank(s) on "
             f"{device}; global batch {global_batch} (microbatch {cfg.microbatch}); "
             f"{len(data.paths)} videos on rank 0")
    if cfg.exclude_conditional and cfg.max_num_mask_frames >= model_flags["seq_len"]:
        log.warn(f"--max_num_mask_frames {cfg.max_num_mask_frames} >= --seq_len: some videos get "
                 f"every frame given and contribute no loss")

    # ------------------------------------------------------------------ the loop's state
    end = last_step(cfg)
    log.start_at(step, end)
    if end is not None and step >= end:
        log.info(f"step {step} is already >= the last step {end}: nothing to train")
    stats = LossStats(diffusion.num_timesteps, device)
    all_reduce = torch.distributed.all_reduce if info.world_size > 1 else None
    preview = Preview(cfg, model_flags, model, logdir, log, data.class_names) \
        if cfg.sample_interval and info.is_main else None
    saved_step, bad_in_a_row, stop_now = step, 0, False
    interval_start, interval_steps = time.time(), 0

    def save():
        """Write the checkpoint of `step`, then delete the sets that --keep_checkpoints and
        --keep_every no longer keep. Every rank gathers its RNG and data position; only rank 0
        writes, while the others wait for it without the collective timeout."""
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
            # The model copied to the CPU one tensor at a time (no second copy on the GPU).
            model_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            save_checkpoint(logdir, step, model_state, emas, opt_state)
            pruned = sets_to_prune(logdir, ema.rates, cfg.keep_checkpoints, cfg.keep_every)
            delete_checkpoint_files(pruned)
            return list(pruned)

        pruned = dist.run_on_main(write)
        log.info(f"saved checkpoint of step {step}" + (
            f"; deleted the checkpoints of step {', '.join(map(str, pruned))} "
            f"(--keep_checkpoints {cfg.keep_checkpoints})" if pruned else ""))
        return step

    while end is None or step < end:
        # -------------------------------------------------------------- one step
        try:
            video, model_kwargs = next(data)  # (N, C, T, H, W) in [-1, 1], {"y": (N,)} or {}
        except Exception:
            if stop.signal_name is None:
                raise
            # The stop signal may have killed a loader worker: fresh workers read the same
            # items. Every rank must finish this step and agree to stop in its host sync; one
            # that left for the save's gather would meet the others' gradient all-reduce.
            data.load_state_dict(data.state_dict())
            video, model_kwargs = next(data)
        video = video.to(device, non_blocking=True)
        model_kwargs = {k: v.to(device, non_blocking=True) for k, v in model_kwargs.items()}
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        inputs = draw_step_inputs(cfg, schedule_sampler, video, info.rank, step)
        terms = forward_backward(net, diffusion, video, model_kwargs, inputs, cfg.microbatch,
                                 exclude_conditional=cfg.exclude_conditional, autocast=autocast,
                                 scaler=scaler, schedule_sampler=schedule_sampler)
        scaler.unscale_(opt)  # clip the true gradients, not the loss-scaled ones
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        if cfg.clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.clip, grad_norm, foreach=True)

        # The step's one host sync: every rank agrees whether to apply it and whether to stop.
        flags = torch.stack([~torch.isfinite(grad_norm) | ~torch.isfinite(terms["loss"].sum()),
                             torch.tensor(stop.signal_name is not None, device=device)]).float()
        if all_reduce is not None:
            all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        bad, stop_now = (bool(v) for v in flags.tolist())
        if stop_now:
            log.info(f"received {stop.signal_name or 'a stop signal (on another rank)'}: "
                     f"finishing step {step + 1}, then saving")
        if not bad:
            scaler.step(opt)
        scaler.update()  # with fp16, an overflow lowers the loss scale
        opt.zero_grad(set_to_none=True)
        step += 1
        interval_steps += 1

        # -------------------------------------------------------------- EMA, or a skipped step
        if bad:  # a non-finite loss or gradient never reaches the weights or the EMA
            bad_in_a_row += 1
            stats.skipped += 1
            if not cfg.use_fp16:
                log.warn(f"step {step}: non-finite loss or gradient, update skipped "
                         f"({bad_in_a_row} in a row)")
            if cfg.max_bad_steps and bad_in_a_row >= cfg.max_bad_steps:
                break  # diverged: this step is neither logged nor saved
        else:
            bad_in_a_row = 0
            ema.update()
            stats.add(terms, inputs.t, grad_norm)
        log.advance()

        # -------------------------------------------------------------- log
        if step % cfg.log_interval == 0:
            row = stats.reduce(all_reduce)  # every rank takes part
            elapsed = time.time() - interval_start
            log.write_row({"step": step, "samples": step * global_batch, **row,
                           "lr": opt.param_groups[0]["lr"],
                           "samples_per_s": interval_steps * global_batch / max(elapsed, 1e-9),
                           "loss_scale": scaler.get_scale() if cfg.use_fp16 else None})
            interval_start, interval_steps = time.time(), 0

        # -------------------------------------------------------------- checkpoint
        if step % cfg.save_interval == 0 or stop_now:
            saved_step = save()

        # -------------------------------------------------------------- preview
        if cfg.sample_interval and step % cfg.sample_interval == 0:
            # Rank 0 previews (not training time) while the others wait without the
            # collective timeout.
            interval_start += dist.run_on_main(lambda: preview.run(step, ema))
        if stop_now:
            break

    # ------------------------------------------------------------------ the end
    if cfg.max_bad_steps and bad_in_a_row >= cfg.max_bad_steps:
        code = EXIT_DIVERGED
        message = (f"ERROR: {bad_in_a_row} consecutive steps with a non-finite loss or gradient "
                   f"(--max_bad_steps {cfg.max_bad_steps}); stopping. The last good checkpoint "
                   f"is step {saved_step} in {logdir}")
    else:
        if saved_step != step:  # the caller's StopRequest is still active: no signal cuts it
            saved_step = save()
        code = EXIT_STOPPED if stop_now else EXIT_OK
        message = (f"stopped by signal after step {step}; exit code {EXIT_STOPPED}: run the "
                   f"same command with --resume_checkpoint auto to continue" if stop_now
                   else f"done: step {step}")
    log.info(message)
    return code
