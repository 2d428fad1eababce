"""The ramvid demo: train a small RaMViD model on CPU in minutes, then watch it predict and infill.

    make demo                       # or: .venv/bin/python scripts/demo.py

1. draws the synthetic bouncing-sprite clips (train + held-out test) with datasets/synthetic.py;
2. trains the `demo` preset with scripts/video_train.py under `mpirun -n 2` for --max_steps;
3. samples held-out clips with scripts/video_sample.py (DDIM, EMA weights): prediction (first
   two frames given), infilling (first and last given) and unconditional generation;
4. scores prediction and infilling against simple baselines on the same clips, writes
   metrics.json, a loss plot and comparison grids, and prints a table. See docs/DEMO.md.
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import ramvid from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramvid.cli import make_parser  # noqa: E402
from ramvid.demo.pipeline import (REPO, TASKS, DemoConfig, DemoError, child_env,  # noqa: E402
                                  ema_checkpoint, find_mpirun, launch_prefix, prepare_data,
                                  run_step, sample_command, train_command)
from ramvid.demo.summary import summarise  # noqa: E402
from ramvid.diffusion import space_timesteps  # noqa: E402
from ramvid.presets import preset_flags  # noqa: E402

DEFAULT_STEPS = 1200  # about 5 minutes on 2 idle laptop cores (see docs/DEMO.md)


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n\n")[0], prog="demo.py")
    parser.add_argument("--out_dir", default="", help="run folder (default: runs/demo-<time>)")
    parser.add_argument("--data_dir", default=str(REPO / "runs" / "demo_data"),
                        help="synthetic clips, drawn once and reused while the settings match")
    parser.add_argument("--max_steps", type=int, default=DEFAULT_STEPS, help="training steps")
    parser.add_argument("--procs", type=int, default=2, help="mpirun ranks (one core each)")
    parser.add_argument("--num_test", type=int, default=64,
                        help="held-out clips scored for prediction and infilling")
    parser.add_argument("--timestep_respacing", default="ddim25", help="DDIM sampling steps")
    parser.add_argument("--eta", type=float, default=1.0,
                        help="DDIM noise; 1 scored better than 0 on held-out clips (docs/DEMO.md)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for flag in ("max_steps", "procs", "num_test"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} {getattr(args, flag)}: must be >= 1")
    if not 0 <= args.eta <= 1:
        parser.error(f"--eta {args.eta}: must lie in [0, 1]")
    if not args.timestep_respacing.startswith("ddim"):
        parser.error(f"--timestep_respacing {args.timestep_respacing!r}: the demo samples with "
                     "DDIM; use e.g. ddim25")
    try:  # checked now, not after minutes of training
        space_timesteps(preset_flags("demo")["diffusion_steps"], args.timestep_respacing)
    except ValueError as e:
        reason = str(e).split(": ", 1)[-1]  # the library names the value itself
        parser.error(f"--timestep_respacing {args.timestep_respacing!r}: {reason}")
    return args


def make_config(args):
    preset = preset_flags("demo")
    run_dir = Path(args.out_dir or REPO / "runs" / time.strftime("demo-%Y%m%d-%H%M%S"))
    return DemoConfig(
        run_dir=run_dir, data_dir=Path(args.data_dir), max_steps=args.max_steps,
        seq_len=preset["seq_len"], image_size=preset["image_size"],
        num_train=1000, num_test=args.num_test, num_unconditional=16, max_sprites=1,
        seed=args.seed, procs=args.procs, respacing=args.timestep_respacing, eta=args.eta,
    )


def banner(text):
    print(f"\n== {text}", flush=True)


def train_and_sample(cfg, timings):
    mpirun = find_mpirun()
    if mpirun is None and cfg.procs > 1:
        print("note: mpirun not found; training and sampling run as one process with "
              f"{cfg.procs} threads instead of {cfg.procs} ranks", flush=True)
    prefix = launch_prefix(cfg.procs, mpirun)
    threads = 1 if len(prefix) > 1 else cfg.procs

    banner(f"2/4 training the `demo` preset for {cfg.max_steps} steps "
           f"(log: {cfg.run_dir / 'train'})")
    train_dir = cfg.run_dir / "train"
    timings["train_s"] = run_step("training", train_command(cfg, prefix),
                                  child_env(threads, train_dir), train_dir / "stdout.txt")
    checkpoint = ema_checkpoint(train_dir, cfg.max_steps)
    print(f"trained in {timings['train_s']:.0f} s -> {checkpoint}", flush=True)

    banner(f"3/4 sampling held-out clips with {cfg.respacing} (eta {cfg.eta:g}) "
           "from the EMA weights")
    for task in TASKS:
        task_dir = cfg.run_dir / task
        seconds = run_step(f"sampling ({task})", sample_command(cfg, prefix, checkpoint, task),
                           child_env(threads, task_dir), task_dir / "stdout.txt")
        timings[f"sample_{task}_s"] = seconds
        print(f"{task}: {seconds:.0f} s", flush=True)
    return checkpoint


def main(argv=None):
    args = parse_args(argv)
    cfg = make_config(args)
    start = time.time()
    timings = {}
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    print(f"ramvid demo -> {cfg.run_dir}", flush=True)

    banner(f"1/4 synthetic clips ({cfg.num_train} train, {cfg.num_test} held-out test) "
           f"in {cfg.data_dir}")
    seconds, reused = prepare_data(cfg)
    timings["data_s"] = seconds
    print("reused the clips drawn by an earlier demo" if reused else f"drawn in {seconds:.1f} s",
          flush=True)

    checkpoint = train_and_sample(cfg, timings)

    banner("4/4 scoring against baselines on the same held-out clips")
    summarise(cfg, checkpoint, timings, start)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoError as e:
        sys.exit(f"demo.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit("demo.py: interrupted")
