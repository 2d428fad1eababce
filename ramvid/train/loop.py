"""The training loop: data -> random masks -> masked diffusion loss -> AdamW -> EMA -> logs and
checkpoints, from top to bottom in `train`."""
import os
import random
import signal
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import dist
from ..runtime import compile_model, configure_tf32
from ..checkpoint import CheckpointError
from ..config import create_model_and_diffusion
from ..flags import write_args_json
from ..data import load_data
from ..diffusion.resample import create_named_schedule_sampler
from .ema import EMA
from .preview import make_preview
from .rundir import prepare_run
from .schedules import last_step, lr_at
from .state import restore_training_state, save_training_state
from .step import LossStats, draw_step_inputs, forward_backward, gradient_norm

# Exit codes. EXIT_STOPPED (EX_TEMPFAIL of sysexits.h): a stop signal ended the run with a
# complete checkpoint of the step it stopped at; rerunning the command continues it (requeue).
EXIT_OK, EXIT_DIVERGED, EXIT_STOPPED = 0, 3, 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """SIGTERM, SIGINT and SIGUSR1 ask the loop to finish the current step, save and exit with
    EXIT_STOPPED. Repeats change nothing: Slurm signals every process of a step and torchrun
    forwards the signal again, so one stop often arrives twice. (SIGKILL or Ctrl-\\ stop at once.)

    The handler only sets a flag: the loop logs, so a signal never re-enters a log write."""

    def __init__(self):
        self.signal_name = None  # the first stop signal received
        self._previous = {}
        self._pid = os.getpid()

    @property
    def requested(self):
        return self.signal_name is not None

    def __enter__(self):
        for sig in STOP_SIGNALS:
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


def fused_adamw_supported(device):
    """One kernel per step instead of a dozen full-size temporaries (CPU since torch 2.4)."""
    if device.type == "cuda":
        return True
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return device.type == "cpu" and (major, minor) >= (2, 4)


def train(cfg, model_flags, info, logdir, log, start=None, stop=None):
    """Train until --max_steps (or the end of a linear lr schedule), a stop signal, or
    --max_bad_steps consecutive non-finite steps. Returns the process exit code.

    start: where to start (`rundir.prepare_run`); None decides it here. stop: a StopRequest
    the caller entered earlier (a signal during start-up then stops after the first step);
    None listens from the first step on."""
    device = info.device
    if start is None:
        start = prepare_run(cfg, model_flags, logdir, info)
        for line in start.plan.messages:
            log.info(line)
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
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=fused_adamw_supported(device))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.use_fp16)
    autocast = torch.autocast(device.type, dtype=torch.float16 if cfg.use_fp16 else torch.bfloat16,
                              enabled=cfg.use_fp16 or cfg.bf16)

    step, ckpt = start.plan.step, start.ckpt
    if ckpt is not None:
        restore_training_state(ckpt, model, opt, scaler, schedule_sampler, data, info, log)
    # Only rank 0 saves, so only rank 0 keeps EMAs; a rate without a checkpoint starts from the
    # model weights.
    ema = EMA(model, cfg.ema_rate if info.is_main else ())
    for rate, state in (ckpt.emas.items() if ckpt is not None else ()):
        ema.load_state_dict(rate, state)
    start.ckpt = ckpt = None  # frees the loaded tensors (the caller still holds `start`)
    log.keep_rows_up_to(step)

    ddp_model = model
    if info.world_size > 1:
        ddp_model = DDP(model, device_ids=[device] if device.type == "cuda" else None,
                        find_unused_parameters=False)  # also broadcasts rank 0's weights
    net = compile_model(ddp_model, cfg.compile)  # what is called; `model` is what is saved

    global_batch = cfg.batch_size * info.world_size
    num_params = sum(p.numel() for p in model.parameters())
    config = {**model_flags, **cfg.to_json(), "world_size": info.world_size,
              "global_batch": global_batch, "class_names": data.class_names,
              "num_params": num_params, "resumed_from_step": step}
    if info.is_main:
        try:
            write_args_json(logdir, config)
        except OSError as e:
            raise CheckpointError(str(e)) from None
    log.info(f"logdir {logdir}; {num_params / 1e6:.2f}M parameters; {info.world_size} rank(s) on "
             f"{device}; global batch {global_batch} (microbatch {cfg.microbatch}); "
             f"{len(data.paths)} videos on rank 0")

    if cfg.exclude_conditional and cfg.max_num_mask_frames >= model_flags["seq_len"]:
        log.warn(f"--max_num_mask_frames {cfg.max_num_mask_frames} >= --seq_len: some videos get "
                 f"every frame given and contribute no loss")
    end = last_step(cfg)
    if end is not None and step >= end:
        log.info(f"step {step} is already >= the last step {end}: nothing to train")
        return EXIT_OK
    stats = LossStats(diffusion.num_timesteps, device)
    all_reduce = torch.distributed.all_reduce if info.world_size > 1 else None
    saved_step, bad_in_a_row = step, 0
    interval_start, interval_steps = time.time(), 0
    preview = make_preview(cfg, model_flags, model, logdir, log, info)  # rank 0, or None
    log.start_bar(step, end)

    def save():
        pruned = save_training_state(logdir, step, model, ema, opt, scaler, schedule_sampler,
                                     data, info, cfg.keep_checkpoints, cfg.keep_every)
        log.info(f"saved checkpoint of step {step}" + (
            f"; deleted the checkpoints of step {', '.join(map(str, pruned))} "
            f"(--keep_checkpoints {cfg.keep_checkpoints})" if pruned else ""))
        return step

    with StopRequest() if stop is None else nullcontext(stop) as stop:
        while end is None or step < end:
            try:
                video, model_kwargs = next(data)  # (N, C, T, H, W) in [-1, 1], {"y": (N,)} or {}
            except Exception:
                if stop.requested:  # the signal also reached the loader's workers
                    break
                raise
            video = video.to(device, non_blocking=True)
            model_kwargs = {k: v.to(device, non_blocking=True) for k, v in model_kwargs.items()}
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step)

            inputs = draw_step_inputs(cfg, schedule_sampler, video, info.rank, step)
            terms = forward_backward(net, diffusion, video, model_kwargs, inputs, cfg.microbatch,
                                     exclude_conditional=cfg.exclude_conditional,
                                     autocast=autocast, scaler=scaler,
                                     schedule_sampler=schedule_sampler)
            scaler.unscale_(opt)  # clip the true gradients, not the loss-scaled ones
            grad_norm = gradient_norm(model.parameters(), cfg.clip)

            # The step's one host sync: every rank agrees whether to apply it and whether to stop.
            flags = torch.stack([~torch.isfinite(grad_norm) | ~torch.isfinite(terms["loss"].sum()),
                                 torch.tensor(stop.requested, device=device)]).float()
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

            if bad:  # a non-finite loss or gradient never reaches the weights or the EMA
                bad_in_a_row += 1
                stats.skipped += 1
                if not cfg.use_fp16:
                    log.warn(f"step {step}: non-finite loss or gradient, update skipped "
                             f"({bad_in_a_row} in a row)")
                if cfg.max_bad_steps and bad_in_a_row >= cfg.max_bad_steps:
                    log.info(f"ERROR: {bad_in_a_row} consecutive steps with a non-finite loss or "
                             f"gradient (--max_bad_steps {cfg.max_bad_steps}); stopping. The last "
                             f"good checkpoint is step {saved_step} in {logdir}")
                    log.close()
                    return EXIT_DIVERGED
            else:
                bad_in_a_row = 0
                ema.update()
                stats.add(terms, inputs.t, grad_norm)
            log.advance()

            if step % cfg.log_interval == 0:
                row = stats.reduce(all_reduce)  # every rank takes part
                elapsed = time.time() - interval_start
                row = {"step": step, "samples": step * global_batch, **row,
                       "lr": opt.param_groups[0]["lr"],
                       "samples_per_s": interval_steps * global_batch / max(elapsed, 1e-9),
                       "loss_scale": scaler.get_scale() if cfg.use_fp16 else None}
                log.write_row(row)
                interval_start, interval_steps = time.time(), 0
            if step % cfg.save_interval == 0 or stop_now:
                saved_step = save()
            if cfg.sample_interval and step % cfg.sample_interval == 0:
                # Rank 0 previews (not training time) while the others wait without the
                # collective timeout.
                interval_start += dist.run_on_main(lambda: preview.run(step, ema))
            if stop_now:
                log.info(f"stopped by signal after step {step}; exit code {EXIT_STOPPED}: run "
                         f"the same command with --resume_checkpoint auto to continue")
                return EXIT_STOPPED
        if saved_step != step:  # still under StopRequest: a signal now cannot cut the write
            saved_step = save()
    if end is None or step < end:  # left the loop at the loader's break
        log.info(f"stopped by signal after step {step}; exit code {EXIT_STOPPED}")
        return EXIT_STOPPED
    log.info(f"done: step {step}")
    return EXIT_OK
