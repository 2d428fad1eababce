"""Every GPU measurement of the performance work in one run, written to one JSON file.

    python benchmarks/gpu_suite.py --out gpu_results.json --budget_s 480   # one H100/H200
    python benchmarks/gpu_suite.py --tiny --out /tmp/tiny.json       # CPU: proves it runs

docs/PERFORMANCE.md names the sections (syncs, train, variants, script, curves, quality,
protocol), the target each one measures, and why the JSON is rewritten after each measurement.
"""
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(REPO))

from ramvid.flags import Flag, at_least, int_tuple, parse, user_errors, write_json  # noqa: E402

BENCHMARK = REPO / "benchmarks" / "benchmark.py"

# {section: [(name, benchmark.py flags)]}; the config and device are added per run. syncs
# (counting needs CUDA) is cheap, so it runs first.
BENCHMARK_RUNS = {
    "syncs": [("fp32_tf32_b4_syncs", "--dtype fp32 --tf32 on --sync_check")],
    "train": [
        ("fp32_tf32_b4", "--dtype fp32 --tf32 on"),
        ("bf16_compile_b4", "--dtype bf16 --compile"),
        ("bf16_compile_b8", "--dtype bf16 --compile --batch_size 8"),
        ("bf16_b4", "--dtype bf16"),
        ("bf16_b4_mb2", "--dtype bf16 --microbatch 2"),
        ("fp32_ieee_b4", "--dtype fp32 --tf32 off"),
        ("fp32_tf32_b4_mb2", "--dtype fp32 --tf32 on --microbatch 2"),
        ("fp32_tf32_b8", "--dtype fp32 --tf32 on --batch_size 8"),
        ("bf16_b8", "--dtype bf16 --batch_size 8"),
    ],
    "variants": [
        ("bf16_b4_channels_last", "--dtype bf16 --channels_last"),
        ("bf16_b4_cudnn_benchmark", "--dtype bf16 --cudnn_benchmark"),
        ("bf16_b8_cpu_generators", "--dtype bf16 --batch_size 8 --generators cpu"),
    ],
}
# (sampler, --timestep_respacing) pairs of the quality sweep, cheapest first.
QUALITY_RUNS = [("dpm++2m", "logsnr10"), ("dpm++2m", "logsnr15"), ("dpm++2m", "logsnr25"),
                ("dpm++2m", "25"), ("ddim", "ddim25"), ("dpm++2m", "logsnr50"), ("ddim", "ddim50"),
                ("ddpm", "250"), ("ddpm", "")]
TINY_QUALITY_RUNS = [("dpm++2m", "logsnr5"), ("ddim", "ddim5"), ("ddpm", "10")]
# The original code's sampling step, measured on an H200: ancestral, batch 8, fp32.
PAPER_SAMPLE_STEP_S = 0.191


FLAGS = (
    Flag("out", "gpu_results.json", "JSON file to write"),
    Flag("tiny", False, "CPU with the tiny config and few steps: checks the suite end to end"),
    Flag("sections", "syncs,train,variants,script,quality,protocol",
         "comma list of the measurements to run, in this order (curves: only when named)"),
    Flag("budget_s", 0.0, "skip the remaining measurements after this many seconds; 0 = none",
         check=at_least(0)),
    Flag("model_path", "", "checkpoint for the quality sweep"),
    Flag("clips_npz", "", "held-out clips, uint8 N x T x H x W x C (e.g. a gt_*.npz)"),
    Flag("cond_frames", "0,1", "given frames in the quality sweep", convert=int_tuple),
    Flag("quality_runs", "",
         "comma list of sampler:respacing, e.g. 'dpm++2m:logsnr25,ddim:ddim50'"),
    Flag("num_clips", 64, "clips of the quality sweep", check=at_least(1)),
    Flag("script_steps", 60,
         "training steps of the script check (the first interval is warm-up)", check=at_least(1)),
    Flag("curve_steps", 400, "training steps of each loss curve (section curves)",
         check=at_least(1)),
)


class Suite:
    """Collects results and rewrites the JSON file after each of them."""

    def __init__(self, args):
        self.args = args
        self.start = time.time()
        self.device = "cpu" if args.tiny else "cuda"
        self.config = "tiny" if args.tiny else "bair64"
        self.results = {"suite": "benchmarks/gpu_suite.py", "tiny": args.tiny,
                        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
                        "load_avg_1min_at_start": round(os.getloadavg()[0], 2)}
        write_json(self.args.out, self.results)

    def skipped(self, section, name):
        """Whether --budget_s is spent; then `name` is recorded as skipped."""
        if self.args.budget_s and time.time() - self.start > self.args.budget_s:
            self.record(section, name, {"skipped": "over --budget_s"})
            return True
        return False

    def record(self, section, name, value):
        self.results.setdefault(section, {})[name] = value
        self.results["elapsed_s"] = round(time.time() - self.start, 1)
        write_json(self.args.out, self.results)

    def benchmark(self, section, name, flags):
        """One benchmark.py row, or the reason it has none. Each row runs in its own process:
        its peak memory, compiled code and a crash (out of memory) stay its own."""
        if self.skipped(section, name):
            return
        small = "--steps 1 --warmup 1 --sample_steps 1 --threads 2" if self.args.tiny else \
            "--steps 5 --warmup 3 --sample_steps 5"
        if self.args.tiny:  # the tiny config's batch is 2; keep microbatches meaningful
            flags = flags.replace("--batch_size 8", "--batch_size 4").replace("--microbatch 2",
                                                                              "--microbatch 1")
        cmd = [sys.executable, str(BENCHMARK), "--configs", self.config, "--device", self.device,
               *small.split(), *flags.split()]
        started = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        value = rows[-1] if rows else {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        value["wall_s"] = round(time.time() - started, 1)
        value["command"] = " ".join(["python", "benchmarks/benchmark.py", *cmd[2:]])
        self.record(section, name, value)


def run_training_script(suite, args, work, section):
    """torchrun scripts/video_train.py on the synthetic videos with the benchmark's model and
    batch. script: its throughput against the benchmark's step at the same settings; curves:
    loss curves of fp32 (TF32) and bf16 training, same config, data and seed."""
    if section == "script":
        steps, interval = (6, 2) if args.tiny else (args.script_steps, 10)
        runs = {"script_bf16_b4": "--bf16 True",
                "script_bf16_compile_b4": "--bf16 True --compile True"}
    else:
        steps, interval = (8, 2) if args.tiny else (args.curve_steps, 20)
        runs = {"curve_fp32_tf32": "--bf16 False", "curve_bf16": "--bf16 True"}
    model = ("--image_size 32 --num_channels 32 --num_res_blocks 1 --seq_len 8 "
             "--attention_resolutions 16,8 --scale_time_dim 0 --batch_size 2") if args.tiny \
        else "--preset bair64"
    for name, flags in runs.items():
        if suite.skipped(section, name):
            continue
        logdir = work / name
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "1", "scripts/video_train.py", "--data_dir", str(work / "data" / "train"),
               *model.split(), "--microbatch", "-1", *flags.split(), "--max_steps", str(steps),
               "--log_interval", str(interval), "--save_interval", "100000", "--num_workers",
               "2", "--log_dir", str(logdir)]
        started = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        command = ["torchrun", "--standalone", "--nproc_per_node", "1", *cmd[6:]]
        value = {"command": " ".join(command), "rc": proc.returncode,
                 "wall_s": round(time.time() - started, 1)}
        rows = list(csv.DictReader((logdir / "progress.csv").open())) \
            if (logdir / "progress.csv").exists() else []
        if not rows:
            value["error"] = (proc.stderr.strip().splitlines() or ["no progress.csv rows"])[-1]
        if section == "curves":
            value["step_loss"] = [[int(r["step"]), float(r["loss"])] for r in rows if r.get("loss")]
            last = value["step_loss"][len(value["step_loss"]) * 3 // 4:]
            if last:
                value["mean_loss_last_quarter"] = round(sum(v for _, v in last) / len(last), 5)
        elif steady := [float(r["samples_per_s"]) for r in rows[1:] if r.get("samples_per_s")]:
            batch = 2 if args.tiny else 4
            value["samples_per_s"] = round(sum(steady) / len(steady), 3)
            value["step_s"] = round(batch / value["samples_per_s"], 4)
            # The benchmark.py row of the same settings: bf16_b4, bf16_compile_b4.
            bench = suite.results.get("train", {}).get(name.removeprefix("script_"), {})
            if "train_step_s" in bench:
                value["benchmark_step_s"] = bench["train_step_s"]
                value["script_over_benchmark"] = round(value["step_s"] / bench["train_step_s"], 3)
        suite.record(section, name, value)


def run_quality(suite, args):
    """PSNR (and FVD) of each sampler and step count on the same clips, seeds and given frames."""
    from ramvid.masking import mask_from_frames
    from ramvid.metrics.frame_metrics import frame_metrics
    from ramvid.sample.batch import sample_videos
    from ramvid.sample.loading import load_model

    clips = np.load(args.clips_npz)["arr_0"][:args.num_clips]  # (N, T, H, W, C) uint8
    frames = args.cond_frames
    runs = TINY_QUALITY_RUNS if args.tiny else QUALITY_RUNS
    if args.quality_runs:
        runs = [tuple(item.split(":", 1)) for item in args.quality_runs.split(",")]
    fvd = None
    try:
        from ramvid.metrics import compute_fvd, load_i3d
        i3d = load_i3d(suite.device)
        fvd = lambda a, b: compute_fvd(a, b, model=i3d, device=suite.device)["fvd"]  # noqa: E731
    except Exception as error:  # no weights on an offline machine
        suite.record("quality", "fvd_unavailable", f"{type(error).__name__}: {error}"[:300])
    for sampler, respacing in runs:
        name = f"{sampler}:{respacing or 'full'}"
        if suite.skipped("quality", name):
            continue
        model, diffusion, _ = load_model(args.model_path, device=suite.device,
                                         timestep_respacing=respacing)
        started = time.time()
        # The sampling scripts' batches of 8 and per-sample seeds: the same for every sampler.
        samples = sample_videos(model, diffusion, obs=clips, cond_frames=frames, sampler=sampler)
        metrics = frame_metrics(samples[:, None], clips, mask_from_frames(frames, 1, clips.shape[1])[0].numpy())
        value = {"steps": diffusion.num_timesteps, "seconds": round(time.time() - started, 1),
                 "psnr_mean": round(metrics["psnr_mean"], 3), "ssim_mean": round(metrics["ssim_mean"], 4)}
        if fvd is not None and len(clips) >= 16:
            value["fvd"] = round(float(fvd(samples, clips)), 2)
        suite.record("quality", name, value)


def protocol_cost(suite):
    """GPU-hours of 256 clips x 100 samples, from per-step times (computed, not measured)."""
    samples = 256 * 100
    rows = suite.results.get("train", {})
    costs = {"paper_code_ddpm1000": {"steps": 1000, "step_s": PAPER_SAMPLE_STEP_S, "batch": 8,
                                     "source": "the original code, H200, fp32, batch 8"}}
    for name in ("fp32_tf32_b8", "bf16_b8", "bf16_compile_b8"):
        step_s = rows.get(name, {}).get("sample_step_ddpm_s")
        if step_s is None:
            continue
        for label, steps in (("ddpm1000", 1000), ("ddpm250", 250), ("dpm++2m_25", 25)):
            costs[f"ramvid_{name}_{label}"] = {"steps": steps, "step_s": step_s,
                                                "batch": rows[name]["batch_size"],
                                                "source": f"measured row {name}"}
    for value in costs.values():
        value["gpu_hours"] = round(samples / value["batch"] * value["steps"] * value["step_s"]
                                   / 3600, 2)
    suite.record("protocol", "computed_from_step_times", costs)


def main(argv=None):
    with user_errors():
        args = parse(__doc__.split("\n\n")[0], FLAGS, argv)
    suite = Suite(args)
    sections = set(args.sections.split(","))
    if args.tiny:
        suite.results["note"] = "--tiny: CPU, tiny config; checks the suite, not a measurement"
    for section, runs in BENCHMARK_RUNS.items():
        for name, flags in runs if section in sections else ():
            # --tiny: no sync counting on the CPU, and one CPU compile proves the path
            if not (args.tiny and name in ("fp32_tf32_b4_syncs", "bf16_compile_b8")):
                suite.benchmark(section, name, flags)
    work = None
    if sections & {"script", "curves"}:  # training videos of the benchmark's size and length
        from datasets.synthetic import generate

        work = Path(tempfile.mkdtemp(prefix="ramvid_script_check_"))
        size, frames = (32, 8) if args.tiny else (64, 20)
        generate(work / "data", num_train=16, num_test=1, image_size=size, num_frames=frames)
    for section in ("script", "curves"):
        if section in sections:
            run_training_script(suite, args, work, section)
    if "quality" in sections and args.tiny and not args.model_path and work:
        # The last checkpoint of the training above and random clips run the quality code.
        checkpoints = sorted(work.glob("*/model*.pt"), key=lambda p: p.stat().st_mtime)
        if checkpoints:
            args.model_path, args.clips_npz = str(checkpoints[-1]), str(work / "clips.npz")
            clips = np.random.default_rng(0).integers(0, 256, (4, 8, 32, 32, 3), dtype=np.uint8)
            np.savez(args.clips_npz, clips)
    if "quality" in sections and args.model_path and args.clips_npz:
        run_quality(suite, args)
    if "protocol" in sections:
        protocol_cost(suite)
    suite.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json(args.out, suite.results)
    print(json.dumps({"out": args.out, "elapsed_s": round(time.time() - suite.start, 1)}))


if __name__ == "__main__":
    main()
