"""`python scripts/video_train.py ...`: flags -> distributed set-up -> log dir -> train.

Exit codes: 0 done (--max_steps reached), 1 a failure (e.g. a checkpoint could not be written),
2 a user mistake (bad flag; a log dir this run may not start in), 3 diverged (--max_bad_steps),
75 stopped by a signal with a complete checkpoint (rerun to continue; see docs/TRAINING.md).
"""
import sys
from pathlib import Path

from .. import dist
from ..checkpoint import CheckpointError
from ..cli import UsageError, entry_point
from ..memory import limit_heap_fragmentation
from .logs import RunLogger
from .loop import StopRequest, train
from .options import parse_train_args
from .rundir import prepare_run, resolve_logdir


def command():
    """The installed `ramvid-train`: its --help and error lines name the command typed."""
    return main(prog=Path(sys.argv[0]).name)


@entry_point
def main(argv=None, prog="video_train.py"):
    cfg, model_flags, parser = parse_train_args(argv, prog)
    limit_heap_fragmentation()
    info = dist.setup_dist(timeout_s=cfg.dist_timeout)
    code = dist.run_or_abort(_run, cfg, model_flags, info, parser)
    dist.cleanup()
    return code


def _error(info, parser, message):
    if info.is_main:
        sys.stderr.write(f"{parser.prog}: error: {message}\n")


def _run(cfg, model_flags, info, parser):
    # A stop signal from here on ends the run with a checkpoint after its first step.
    with StopRequest() as stop:
        return _start_and_train(cfg, model_flags, info, parser, stop)


def _start_and_train(cfg, model_flags, info, parser, stop):
    logdir, source = resolve_logdir(cfg, info)
    try:
        # Decided on rank 0 before anything in the log dir is touched; the same on every rank.
        start = prepare_run(cfg, model_flags, logdir, info, source)
    except UsageError as e:
        _error(info, parser, e)
        return 2
    except CheckpointError as e:  # the checkpoint named by --resume_checkpoint cannot be read
        _error(info, parser, e)
        return 1
    log = RunLogger(logdir, enabled=info.is_main)
    try:
        for line in start.plan.messages:
            log.info(line)
        code = train(cfg, model_flags, info, logdir, log, start, stop)
        dist.barrier()  # leave together: a launcher may end the job when the first rank exits
        return code
    except UsageError as e:  # a data problem is a bad --data_dir: one line, exit 2
        where = f"[rank {info.rank}] " if info.world_size > 1 else ""
        sys.stderr.write(f"{where}{parser.prog}: error: {str(e).splitlines()[0]}\n")
        raise SystemExit(2) from None
    except CheckpointError as e:
        log.info(f"ERROR: {e}")
        if info.world_size > 1:
            sys.stderr.write(f"[rank {info.rank}] {e}\n")
            dist.abort_job(1)
        sys.stderr.write(f"{parser.prog}: error: {e}\n")
        return 1
    finally:
        log.close()
