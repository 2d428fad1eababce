"""`python scripts/video_train.py ...`: flags -> distributed set-up -> log dir -> train."""
import os
import sys
import tempfile
import time
from pathlib import Path

from .. import dist
from ..checkpoint import CheckpointError, remove_stale_temp_files
from ..data import DataError
from ..memory import limit_heap_fragmentation
from .logs import RunLogger
from .loop import train
from .options import parse_train_args


def resolve_logdir(info):
    """$OPENAI_LOGDIR, else a new timestamped folder in the temp dir (chosen by rank 0)."""
    logdir = os.environ.get("OPENAI_LOGDIR")
    if not logdir and info.is_main:
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S")
        logdir = tempfile.mkdtemp(prefix=f"ramvid-{stamp}-")
    return Path(dist.broadcast_object(logdir))


def main(argv=None, prog="video_train.py"):
    cfg, model_flags, parser = parse_train_args(argv, prog)
    limit_heap_fragmentation()
    info = dist.setup_dist(timeout_s=cfg.dist_timeout)
    code = dist.run_or_abort(_run, cfg, model_flags, info, parser)
    dist.cleanup()
    return code


def _run(cfg, model_flags, info, parser):
    logdir = resolve_logdir(info)
    if info.is_main:
        try:
            logdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            parser.error(f"log dir {logdir} ($OPENAI_LOGDIR) cannot be created: {e.strerror}")
        for tmp in remove_stale_temp_files(logdir):
            print(f"removed {tmp}, left by a run killed while writing a checkpoint")
    dist.barrier()
    log = RunLogger(logdir, enabled=info.is_main)
    try:
        return train(cfg, model_flags, info, logdir, log)
    except DataError as e:  # a data problem is a bad --data_dir: one line, exit 2
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
