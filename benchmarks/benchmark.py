"""Speed and memory of one training step and one sampling step, one JSON line per config.

    python benchmarks/benchmark.py --configs tiny,medium --device cpu --dtype fp32

Each config runs in a fresh subprocess so that peak memory (RSS on CPU,
torch.cuda.max_memory_allocated on GPU) belongs to that config alone. A training step is
what the training loop does per batch: masked diffusion loss, backward, gradient clipping,
AdamW, EMA update.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

CONFIGS = {
    # The sizes the reference numbers in docs/PERFORMANCE.md were measured on.
    "tiny": dict(image_size=32, num_channels=32, num_res_blocks=1, seq_len=8, batch_size=2,
                 attention_resolutions="16,8", scale_time_dim=0, num_heads=4),
    "medium": dict(image_size=64, num_channels=64, num_res_blocks=2, seq_len=16, batch_size=1,
                   attention_resolutions="16,8", scale_time_dim=0, num_heads=4),
    "bair64": dict(image_size=64, num_channels=128, num_res_blocks=2, seq_len=20, batch_size=4,
                   attention_resolutions="16,8", scale_time_dim=0, num_heads=4),
    "kinetics600": dict(image_size=64, num_channels=128, num_res_blocks=3, seq_len=16, batch_size=8,
                        attention_resolutions="16,8", scale_time_dim=0, num_heads=4),
}

# Dense bf16 peak of the cards we have measured on, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,medium",
                        help=f"comma list of: {', '.join(CONFIGS)}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sample_steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: all cores)")
    parser.add_argument("--use_checkpoint", action="store_true", help="activation checkpointing")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--default_heap", action="store_true",
                        help="leave glibc's mmap threshold alone (the scripts fix it)")
    parser.add_argument("--batch_size", type=int, default=0, help="override the config's batch")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config in-process
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    return args


def peak_memory_mb(device):
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synchronize(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_one(name, args):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ramvid import create_model_and_diffusion, model_and_diffusion_defaults
    from ramvid.diffusion import create_named_schedule_sampler
    from ramvid.memory import limit_heap_fragmentation
    from ramvid.train.ema import EMA
    from ramvid.train.loop import fused_adamw_supported
    from ramvid.train.step import draw_step_inputs, forward_backward, gradient_norm

    heap_tuned = False if args.default_heap else limit_heap_fragmentation()  # as training does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = dict(CONFIGS[name])
    batch = args.batch_size or cfg.pop("batch_size")
    cfg.pop("batch_size", None)
    flags = {**model_and_diffusion_defaults(), **cfg, "use_checkpoint": args.use_checkpoint}
    model, diffusion = create_model_and_diffusion(**flags)
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    net = torch.compile(model) if args.compile else model

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    shape = (batch, 3, flags["seq_len"], flags["image_size"], flags["image_size"])
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.rand(shape, generator=gen) * 2 - 1).to(device)  # (N, C, T, H, W)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused_adamw_supported(device))
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")
    ema = EMA(model, ["0.9999"])
    sampler = create_named_schedule_sampler("uniform", diffusion)
    step_cfg = SimpleNamespace(seed=0, uncondition_rate=0.25, max_num_mask_frames=4, mask_range=None)
    step_count = [0]

    def train_step():
        # The training loop's own pieces: per-step random inputs, masked loss + backward,
        # clipping of the unscaled gradients, AdamW, EMA.
        inputs = draw_step_inputs(step_cfg, sampler, x0, 0, step_count[0])
        forward_backward(net, diffusion, x0, {}, inputs, batch, autocast=autocast(), scaler=scaler)
        scaler.unscale_(opt)
        gradient_norm(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ema.update()
        step_count[0] += 1

    times = []
    for i in range(args.warmup + args.steps):
        synchronize(args.device)
        start = time.perf_counter()
        train_step()
        synchronize(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    train_s = statistics.median(times)
    train_peak = peak_memory_mb(args.device)

    model.eval()
    with torch.inference_mode(), autocast():
        t = torch.full((batch,), diffusion.num_timesteps // 2, device=device, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            net(x0, diffusion.model_timesteps(t))
        fwd_flops = counter.get_total_flops()
        sampling = {}
        for kind, step in (("ddpm", diffusion.p_sample), ("ddim", diffusion.ddim_sample)):
            x = torch.randn(shape, device=device)
            step_times = []
            for i in range(1 + args.sample_steps):
                # Walk down from the noisiest step, as a sampler does.
                t = torch.full((batch,), diffusion.num_timesteps - 1 - i, device=device, dtype=torch.long)
                synchronize(args.device)
                start = time.perf_counter()
                x = step(net, x, t)["sample"]
                synchronize(args.device)
                if i:
                    step_times.append(time.perf_counter() - start)
            sampling[kind] = statistics.median(step_times)

    record = {
        "config": name, "device": args.device, "dtype": args.dtype, "batch_size": batch,
        "params_M": round(n_params / 1e6, 2), "use_checkpoint": args.use_checkpoint,
        "compile": args.compile, "threads": torch.get_num_threads(), "heap_tuned": heap_tuned,
        "train_step_s": round(train_s, 4), "videos_per_s": round(batch / train_s, 3),
        "peak_mem_MB": round(max(train_peak, peak_memory_mb(args.device)), 1),
        "sample_step_ddpm_s": round(sampling["ddpm"], 4),
        "sample_step_ddim_s": round(sampling["ddim"], 4),
        "forward_GFLOP": round(fwd_flops / 1e9, 2),
        # backward costs about twice the forward
        "train_TFLOP_per_s": round(3 * fwd_flops / train_s / 1e12, 4),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if args.device == "cuda":
        card = torch.cuda.get_device_name()
        record["card"] = card
        peak = next((v for k, v in PEAK_FLOPS.items() if k in card), None)
        if peak and args.dtype != "fp32":
            record["mfu"] = round(3 * fwd_flops / train_s / peak, 4)
    print(json.dumps(record), flush=True)


def main():
    args = parse_args()
    if args.one:
        run_one(args.one, args)
        return
    failed = False
    for name in args.configs.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", name]
        failed |= subprocess.run(cmd).returncode != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
