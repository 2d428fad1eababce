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

from ..config import PRESETS
from ..diffusion import space_timesteps
from ..flags import Flag, at_least, parse, unit_interval, user_errors
from .pipeline import (REPO, TASKS, DemoConfig, child_env, ema_checkpoint, find_mpirun,
                       launch_prefix, prepare_data, run_step, sample_command, shown,
                       train_command)
from .shipped import (RETRAIN_MINUTES, RETRAIN_THREADS, SHIPPED_SHA256, retrain_command,
                      sha256_of, verified_checkpoint)
from .summary import summarise

DEFAULT_STEPS = 600  # the short run: about 2.5 minutes on 2 idle cores (docs/DEMO.md)


def ddim_respacing(text):
    """The reason `text` is not a DDIM respacing of the demo's diffusion steps, or None."""
    if not text.startswith("ddim"):
        return "the demo samples with DDIM; use e.g. ddim20"
    try:  # checked now, not after minutes of training
        space_timesteps(PRESETS["demo"]["diffusion_steps"], text)
    except ValueError as e:
        return str(e).split(": ", 1)[-1]  # the library names the value itself
    return None


DEMO_FLAGS = (
    Flag("out_dir", "", "run folder (empty: runs/demo-<time>)"),
    Flag("data_dir", str(REPO / "runs" / "demo_data"),
         "synthetic clips, drawn once and reused while the settings match"),
    Flag("max_steps", DEFAULT_STEPS, "steps of the short training run from scratch",
         check=at_least(1)),
    Flag("sample_interval", 200, "held-out previews of the short run every this many steps",
         check=at_least(1)),
    Flag("procs", 2, "mpirun ranks (one core each)", check=at_least(1)),
    Flag("num_test", 64, "held-out clips scored for prediction and infilling",
         check=at_least(1)),
    Flag("samples_per_clip", 4, "N samples per held-out clip: best-of-N beside the one-sample "
         "mean", check=at_least(1)),
    Flag("timestep_respacing", "ddim20", "DDIM sampling steps (20 scored as well as 25 on "
         "validation clips, in a fifth less time)", check=ddim_respacing),
    Flag("eta", 1.0, "DDIM noise; 1 scored better than 0 on validation clips",
         check=unit_interval),
    Flag("seed", 0, "training and sampling seed"),
    Flag("retrain", False, "first retrain the shipped checkpoint with its recorded command "
         f"({RETRAIN_MINUTES}) and use that instead"),
)


def parse_args(argv=None):
    return parse(__doc__.split("\n\n")[0], DEMO_FLAGS, argv)


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
    banner(f"retraining the shipped checkpoint ({SHIPPED_STEPS} steps, {RETRAIN_THREADS} "
           f"thread(s), {RETRAIN_MINUTES}; log: {train_dir})")
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


def main(argv=None):
    with user_errors():
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
                  retrain_shown=f"OMP_NUM_THREADS={RETRAIN_THREADS} "
                                + shown(retrain_command(cfg.data_dir)), retrained=args.retrain)
        return 0


__all__ = ["DEFAULT_STEPS", "DEMO_FLAGS", "main", "make_config", "parse_args"]
