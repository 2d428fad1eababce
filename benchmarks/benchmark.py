"""Speed and memory of one training step and one sampling step, one JSON line per config.

    python benchmarks/benchmark.py --configs tiny,medium --device cpu --dtype fp32

Each config runs in a fresh subprocess so that its peak memory (RSS on CPU,
torch.cuda.max_memory_allocated on GPU) is its own. docs/PERFORMANCE.md says what a step is.
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
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid.flags import Flag, at_least, parse, user_errors  # noqa: E402

# The sizes the reference numbers in docs/PERFORMANCE.md were measured on, all with ATTENTION.
ATTENTION = dict(attention_resolutions="16,8", scale_time_dim=0, num_heads=4)
CONFIGS = {
    "tiny": dict(image_size=32, num_channels=32, num_res_blocks=1, seq_len=8, batch_size=2),
    "medium": dict(image_size=64, num_channels=64, num_res_blocks=2, seq_len=16, batch_size=1),
    "bair64": dict(image_size=64, num_channels=128, num_res_blocks=2, seq_len=20, batch_size=4),
    "kinetics600": dict(image_size=64, num_channels=128, num_res_blocks=3, seq_len=16,
                        batch_size=8),
}

# Dense peak FLOP/s of the cards we measure on, H100 and H200 SXM (the same), for MFU.
PEAK_CARDS = ("H100", "H200")
PEAK_FLOPS = {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12}


def known_configs(text):
    unknown = [c for c in text.split(",") if c not in CONFIGS]
    if unknown:
        return f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}"


FLAGS = (
    Flag("configs", "tiny,medium", f"comma list of: {', '.join(CONFIGS)}", check=known_configs),
    Flag("device", "cpu", "where the model runs", choices=("cpu", "cuda")),
    Flag("dtype", "fp32", "fp32, or bf16/fp16 autocast", choices=("fp32", "bf16", "fp16")),
    Flag("steps", 5, "timed training steps (median reported)", check=at_least(1)),
    Flag("warmup", 2, "untimed steps first (allocator, cuDNN autotuning, compilation)",
         check=at_least(0)),
    Flag("sample_steps", 5, "timed sampling steps (median reported)", check=at_least(1)),
    Flag("threads", 0, "torch threads on CPU (0: all cores)", check=at_least(0)),
    Flag("use_checkpoint", False, "activation checkpointing"),
    Flag("compile", False, "torch.compile the model"),
    Flag("tf32", "on", "TF32 for fp32 matmuls/convolutions on CUDA (the training default)",
         choices=("on", "off")),
    Flag("microbatch", 0, "videos per forward/backward (gradient accumulation); 0 = the whole "
         "batch", check=at_least(0)),
    Flag("channels_last", False, "channels_last_3d weights and inputs (cuDNN conv3d layout)"),
    Flag("cudnn_benchmark", False,
         "torch.backends.cudnn.benchmark: time conv algorithms per shape"),
    Flag("generators", "device", "where the per-sample sampling noise generators live",
         choices=("device", "cpu")),
    Flag("sync_check", False,
         "CUDA: count host synchronisations in one training and sampling step"),
    Flag("default_heap", False, "leave glibc's mmap threshold alone (the scripts fix it)"),
    Flag("batch_size", 0, "override the config's batch (0: the config's)", check=at_least(0)),
    Flag("one", "", argparse.SUPPRESS),  # internal: run this one config in this process
)


def median_seconds(fn, untimed, timed, device):
    """Median wall seconds of `fn(i)` over the calls i = untimed, ..., untimed + timed - 1 (the
    first `untimed` calls warm up), with the device synchronised around every call."""
    import torch

    times = []
    for i in range(untimed + timed):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(i)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= untimed:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_one(name, args):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ramvid import create_model_and_diffusion, model_and_diffusion_defaults
    from ramvid.diffusion import create_named_schedule_sampler
    from ramvid.diffusion.sampling import Conditioning, ddim_step, ddpm_step, predict
    from ramvid.runtime import compile_model, configure_tf32, limit_heap_fragmentation
    from ramvid.sample.batch import AUTOCAST_DTYPES
    from ramvid.train.loop import EMA, draw_step_inputs, forward_backward

    heap_tuned = False if args.default_heap else limit_heap_fragmentation()  # as training does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configure_tf32(args.tf32 == "on")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    cfg = dict(CONFIGS[name])
    batch = args.batch_size or cfg["batch_size"]
    del cfg["batch_size"]
    flags = {**model_and_diffusion_defaults(), **ATTENTION, **cfg,
             "use_checkpoint": args.use_checkpoint}
    model, diffusion = create_model_and_diffusion(**flags)
    layout = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=layout).train()
    n_params = sum(p.numel() for p in model.parameters())
    autocast_dtype = AUTOCAST_DTYPES[args.dtype]
    net = compile_model(model, args.compile)

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    shape = (batch, 3, flags["seq_len"], flags["image_size"], flags["image_size"])
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.rand(shape, generator=gen) * 2 - 1).to(device, memory_format=layout)  # (N, C, T, H, W)
    microbatch = args.microbatch or batch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")
    ema = EMA(model, ["0.9999"])
    sampler = create_named_schedule_sampler("uniform", diffusion)
    step_cfg = SimpleNamespace(seed=0, uncondition_rate=0.25, max_num_mask_frames=4, mask_range=None)

    def train_step(i=0):
        # The training loop's own pieces: step i's random inputs, masked loss + backward,
        # clipping of the unscaled gradients, AdamW, EMA.
        inputs = draw_step_inputs(step_cfg, sampler, x0, 0, i)
        forward_backward(net, diffusion, x0, {}, inputs, microbatch, autocast=autocast(),
                         scaler=scaler)
        scaler.unscale_(opt)
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        torch.nn.utils.clip_grads_with_norm_(params, 1.0, grad_norm, foreach=True)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ema.update()

    train_s = median_seconds(train_step, args.warmup, args.steps, args.device)

    # One noise generator per sample, as the sampling scripts use.
    gen_device = device if args.generators == "device" else torch.device("cpu")
    gens = [torch.Generator(device=gen_device).manual_seed(i) for i in range(batch)]

    def timesteps(t):
        return torch.full((batch,), t, device=device, dtype=torch.long)

    def sample_step(step, x, t):
        """One unconditional reverse step x_t -> x_{t-1} of `step` (ddpm_step, ddim_step)."""
        out = predict(diffusion, net, x, t, Conditioning(), generator=gens)
        return step(diffusion, x, t, out, None, gens)

    model.eval()
    with torch.inference_mode(), autocast():
        with FlopCounterMode(display=False) as counter:
            net(x0, diffusion.model_timesteps(timesteps(diffusion.num_timesteps // 2)))
        fwd_flops = counter.get_total_flops()
        sampling = {}
        for kind, step in (("ddpm", ddpm_step), ("ddim", ddim_step)):
            x = torch.randn(shape, device=device).contiguous(memory_format=layout)

            def walk_down(i, step=step):
                nonlocal x  # from the noisiest step down, as a sampler walks
                x = sample_step(step, x, timesteps(diffusion.num_timesteps - 1 - i))

            sampling[kind] = median_seconds(walk_down, 1, args.sample_steps, args.device)
    t = timesteps(diffusion.num_timesteps - 1 - args.sample_steps)
    syncs = count_host_syncs(train_step, lambda: sample_step(ddpm_step, x0, t), model) \
        if args.sync_check and args.device == "cuda" else {}
    # Peaks since the process started, training included: RSS on CPU (KiB on Linux).
    peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20 if args.device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    record = {
        "config": name, "device": args.device, "dtype": args.dtype, "batch_size": batch,
        "params_M": round(n_params / 1e6, 2), "use_checkpoint": args.use_checkpoint,
        "compile": args.compile, "threads": torch.get_num_threads(), "heap_tuned": heap_tuned,
        "tf32": args.tf32, "microbatch": microbatch, "channels_last": args.channels_last,
        "cudnn_benchmark": args.cudnn_benchmark, "generators": args.generators, **syncs,
        "train_step_s": round(train_s, 4), "videos_per_s": round(batch / train_s, 3),
        "peak_mem_MB": round(peak_mb, 1),
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
        precision = args.dtype if args.dtype != "fp32" else ("tf32" if args.tf32 == "on" else "fp32")
        if any(peak_card in card for peak_card in PEAK_CARDS):
            record["mfu"] = round(3 * fwd_flops / train_s / PEAK_FLOPS[precision], 4)
            record["mfu_peak"] = f"{precision} {PEAK_FLOPS[precision] / 1e12:.0f} TFLOP/s"
    print(json.dumps(record), flush=True)


def count_host_syncs(train_step, sample_step, model):
    """Synchronising CUDA calls in one training step and one sampling step (after warm-up)."""
    import warnings

    import torch

    counts = {}
    for name, fn, mode in (("host_syncs_train_step", train_step, model.train),
                           ("host_syncs_sample_step", sample_step, model.eval)):
        mode()
        fn()  # warm-up: first-use copies (e.g. the diffusion tables) are allowed once
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with torch.inference_mode(name == "host_syncs_sample_step"):
                    fn()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        messages = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        counts[name] = len(messages)
        counts[name + "_where"] = sorted(set(messages))[:5]
    return counts


def main(argv=None):
    with user_errors():
        args = parse(__doc__.split("\n\n")[0], FLAGS, argv)
    if args.one:
        run_one(args.one, args)
        return
    failed = False
    for name in args.configs.split(","):
        cmd = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), "--one", name]
        failed |= subprocess.run(cmd).returncode != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
