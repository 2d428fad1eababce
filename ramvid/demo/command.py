"""`ramvid-demo` / `python scripts/demo.py` / `make demo`: watch a RaMViD model predict and infill.

1. draws the synthetic clips (one sprite moving 2 px per frame; train, val and held-out test);
2. trains the `demo` preset from scratch for --max_steps under `mpirun -n 2` (held-out previews
   every --sample_interval steps), to show the loss falling;
3. samples the held-out clips with the shipped checkpoint (the same preset trained longer by
   the recorded command, ramvid/demo/shipped.py) and with this run's: prediction (first two
   frames given), infilling (first and last given), N samples per clip; unconditional videos;
4. scores prediction and infilling against simple baselines on the same clips, writes
   metrics.json, a loss plot, comparison gifs and a frame strip, and prints a table.
See docs/DEMO.md.
"""
import time
from pathlib import Path

from ..cli import entry_point, make_parser
from ..diffusion import space_timesteps
from ..presets import preset_flags
from .pipeline import (REPO, TASKS, DemoConfig, child_env, ema_checkpoint, find_mpirun,
                       launch_prefix, prepare_data, run_step, sample_command, shown,
                       train_command)
from .shipped import (RETRAIN_THREADS, SHIPPED_SHA256, retrain_command, sha256_of,
                      verified_checkpoint)
from .summary import summarise

DEFAULT_STEPS = 600  # the short run: about 2.5 minutes on 2 idle cores (docs/DEMO.md)


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n\n")[0], prog="demo.py")
    parser.add_argument("--out_dir", default="", help="run folder (default: runs/demo-<time>)")
    parser.add_argument("--data_dir", default=str(REPO / "runs" / "demo_data"),
                        help="synthetic clips, drawn once and reused while the settings match")
    parser.add_argument("--max_steps", type=int, default=DEFAULT_STEPS,
                        help="steps of the short training run from scratch")
    parser.add_argument("--sample_interval", type=int, default=200,
                        help="held-out previews of the short run every this many steps")
    parser.add_argument("--procs", type=int, default=2, help="mpirun ranks (one core each)")
    parser.add_argument("--num_test", type=int, default=64,
                        help="held-out clips scored for prediction and infilling")
    parser.add_argument("--samples_per_clip", type=int, default=4,
                        help="N samples per held-out clip: best-of-N beside the one-sample mean")
    parser.add_argument("--timestep_respacing", default="ddim25", help="DDIM sampling steps")
    parser.add_argument("--eta", type=float, default=1.0,
                        help="DDIM noise; 1 scored better than 0 on validation clips")
    parser.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    parser.add_argument("--retrain", action="store_true",
                        help="first retrain the shipped checkpoint with its recorded command "
                             "(about 36 minutes on an idle core) and use that instead")
    args = parser.parse_args(argv)
    for flag in ("max_steps", "sample_interval", "procs", "num_test", "samples_per_clip"):
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
    run_dir = Path(args.out_dir or REPO / "runs" / time.strftime("demo-%Y%m%d-%H%M%S"))
    return DemoConfig(
        run_dir=run_dir, data_dir=Path(args.data_dir), max_steps=args.max_steps,
        num_test=args.num_test, samples_per_clip=args.samples_per_clip, num_unconditional=16,
        seed=args.seed, procs=args.procs, respacing=args.timestep_respacing, eta=args.eta,
        sample_interval=min(args.sample_interval, args.max_steps),
    )


def banner(text):
    print(f"\n== {text}", flush=True)


def retrain(cfg, timings):
    """Run the shipped checkpoint's recorded command; returns the new checkpoint."""
    from .shipped import SHIPPED_STEPS

    train_dir = cfg.run_dir / "retrain"
    banner(f"retraining the shipped checkpoint ({SHIPPED_STEPS} steps, one thread; "
           f"log: {train_dir})")
    timings["retrain_s"] = run_step("retraining", retrain_command(cfg.data_dir),
                                    child_env(RETRAIN_THREADS, train_dir),
                                    train_dir / "stdout.txt")
    checkpoint = ema_checkpoint(train_dir, SHIPPED_STEPS)
    same = sha256_of(checkpoint) == SHIPPED_SHA256
    print(f"retrained in {timings['retrain_s']:.0f} s -> {checkpoint}: "
          + ("identical to the shipped checkpoint (sha256)" if same else
             "differs from the shipped checkpoint (another torch build or CPU rounds "
             "differently); the demo continues with the retrained one"), flush=True)
    return checkpoint


def train_short_run(cfg, prefix, threads, timings):
    banner(f"2/4 training the `demo` preset from scratch for {cfg.max_steps} steps "
           f"(log: {cfg.run_dir / 'train'})")
    train_dir = cfg.run_dir / "train"
    timings["train_s"] = run_step("training", train_command(cfg, prefix),
                                  child_env(threads, train_dir), train_dir / "stdout.txt")
    checkpoint = ema_checkpoint(train_dir, cfg.max_steps)
    print(f"trained in {timings['train_s']:.0f} s -> {checkpoint}", flush=True)
    return checkpoint


def sample_all(cfg, prefix, threads, checkpoints, timings):
    """Sample every task with every checkpoint ({source: path}) into run_dir/<source>/<task>."""
    banner(f"3/4 sampling held-out clips with {cfg.respacing} (eta {cfg.eta:g}), "
           f"{cfg.samples_per_clip} samples per clip, EMA weights")
    for source, checkpoint in checkpoints.items():
        for task in TASKS:
            if task == "unconditional" and source != "shipped":
                continue  # the better model's unconditional videos are the ones to look at
            task_dir = cfg.run_dir / source / task
            command = sample_command(cfg, prefix, checkpoint, task)
            seconds = run_step(f"sampling ({source}, {task})", command,
                               child_env(threads, task_dir), task_dir / "stdout.txt")
            timings[f"sample_{source}_{task}_s"] = seconds
            print(f"{source} {task}: {seconds:.0f} s", flush=True)


@entry_point
def main(argv=None):
    args = parse_args(argv)
    cfg = make_config(args)
    start = time.time()
    timings = {}
    shipped = None if args.retrain else verified_checkpoint()  # checked before any work
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    print(f"ramvid demo -> {cfg.run_dir}", flush=True)

    banner(f"1/4 synthetic clips ({cfg.num_test} held-out test clips) in {cfg.data_dir}")
    seconds, reused = prepare_data(cfg)
    timings["data_s"] = seconds
    print("reused the clips drawn by an earlier demo" if reused else f"drawn in {seconds:.1f} s",
          flush=True)
    if args.retrain:
        shipped = retrain(cfg, timings)

    mpirun = find_mpirun()
    if mpirun is None and cfg.procs > 1:
        print("note: mpirun not found; training and sampling run as one process with "
              f"{cfg.procs} threads instead of {cfg.procs} ranks", flush=True)
    prefix = launch_prefix(cfg.procs, mpirun)
    threads = 1 if len(prefix) > 1 else cfg.procs
    this_run = train_short_run(cfg, prefix, threads, timings)
    checkpoints = {"shipped": shipped, "this_run": this_run}
    sample_all(cfg, prefix, threads, checkpoints, timings)

    banner("4/4 scoring against baselines on the same held-out clips")
    summarise(cfg, checkpoints, timings, start,
              retrain_shown=shown(retrain_command(cfg.data_dir)), retrained=args.retrain)
    return 0


__all__ = ["DEFAULT_STEPS", "main", "make_config", "parse_args"]
