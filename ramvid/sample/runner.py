"""Run a sampling job over all ranks, chunk by chunk, resumably.

Chunk k holds samples [k * chunk_size, ...). Inside a chunk, global batches of `batch_size`
consecutive samples go round-robin to the ranks and are gathered on rank 0 in index order
(ordered.py); rank 0 writes a grid per batch as it arrives and the chunk file when the chunk is
complete (chunks.py). Chunks already on disk are skipped, so re-running the command after a
preemption continues where it stopped.
"""
import time

import numpy as np
import torch

from .. import dist
from ..cli import UsageError
from ..video_grid import save_video_grid
from .ordered import BatchSpec, global_batches, num_rounds, run_in_order
from .output import GT_PREFIX
from .progress import format_duration, step_bar

# One rank may wait for another's whole batch at a gather; batches of 1000 steps on large
# models take long, so every sampling run (scripts and evaluation) uses this collective timeout.
COLLECTIVE_TIMEOUT_S = 6 * 3600
WARMUP_STEPS = 20


class _ChunkCollector:
    """Rank 0: the arrays of one chunk, batch by batch, and a grid per batch."""

    def __init__(self, fields, first_batch_number, grids):
        self.first_batch_number, self.grids = first_batch_number, grids
        self.parts = {name: [] for name in fields}

    def __call__(self, b, _indices, result):
        for name in self.parts:
            self.parts[name].append(np.asarray(result[name]))
        if self.grids is not None:
            self.grids(self.first_batch_number + b, result)

    def arrays(self):
        return {name: np.concatenate(parts) for name, parts in self.parts.items()}


def grid_writer(folder, save_video, cond_frames, fps):
    """Writes samples_BBB.<fmt> (and gt_BBB.<fmt>) for global batch BBB; None for no grids."""
    if save_video == "none":
        return None

    def write(number, result):
        for name, prefix in (("samples", "samples_"), ("gt", GT_PREFIX)):
            if name in result:
                save_video_grid(folder / f"{prefix}{number:03d}.{save_video}",
                                np.asarray(result[name]), cond_frames=cond_frames, fps=fps)
    return write


def _torch_spec(store):
    return BatchSpec(**{name: (shape, torch.from_numpy(np.zeros(0, dtype)).dtype)
                        for name, (shape, dtype) in store.fields.items()})


def run_chunks(work, store, *, batch_size, steps_per_batch, todo, grids=None, info,
               progress=True):
    """Sample every chunk in `todo` (every rank calls this with the same list); rank 0 saves
    each finished chunk. work(indices, callback) -> dict of per-sample arrays (store.fields)."""
    ranges = store.ranges()
    batches_before = np.cumsum([0] + [len(global_batches(len(r), batch_size)) for r in ranges])
    total_steps = sum(num_rounds(len(ranges[k]), batch_size, info.world_size) for k in todo)
    bar, advance = step_bar(total_steps * steps_per_batch, progress and info.is_main)
    # Rank 0 times up to WARMUP_STEPS steps of its first batch after the first step (start-up,
    # kernel selection, compilation) and then prints the estimate; a one-step batch is timed
    # from the start.
    measure = max(1, min(steps_per_batch - 1, WARMUP_STEPS))
    stamps = None
    if info.is_main and todo:
        stamps = [time.perf_counter()] if steps_per_batch == 1 else []

    def callback(out):
        nonlocal stamps
        advance(out)
        if stamps is None:
            return
        stamps.append(time.perf_counter())
        if len(stamps) > measure:
            per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
            # Rank 0 takes one batch per round, so its steps set the pace of the run.
            bar.write(f"measured {per_step:.3g} s per step (first batch, after its first step): "
                      f"estimated total {format_duration(per_step * bar.total)} for "
                      f"{bar.total} steps on rank 0")
            stamps = None

    spec = _torch_spec(store)
    with bar:
        for k in todo:
            chunk = ranges[k]
            collect = (_ChunkCollector(store.fields, int(batches_before[k]), grids)
                       if info.is_main else None)
            run_in_order(len(chunk), batch_size,
                         lambda local: work([chunk.start + i for i in local], callback), spec,
                         collect, rank=info.rank, world_size=info.world_size, device=info.device)
            if info.is_main:
                store.save(k, collect.arrays())


def agree_on(prepare, info):
    """Rank 0 runs prepare() -> value (a UsageError is caught); every rank gets the value, or
    raises the same UsageError, so that no rank is left waiting."""
    value, error = None, ""
    if info.is_main:
        try:
            value = prepare()
        except UsageError as e:
            error = str(e)
    value, error = dist.broadcast_object((value, error))
    if error:
        raise UsageError(error)
    return value


__all__ = ["COLLECTIVE_TIMEOUT_S", "agree_on", "grid_writer", "run_chunks"]
