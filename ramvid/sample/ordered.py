"""Exactly `num_samples` samples over any number of ranks, gathered in a fixed order.

The run is cut into global batches of `batch_size` consecutive sample indices (the last one
shorter); batch b goes to rank b mod world_size. In every round each rank works on one batch,
then all ranks all-gather the round's results (padded to full batches) and rank 0 receives
batches in index order. Batch contents do not depend on the number of ranks, so a run on
N ranks gives the same samples as a run on one.
"""
import math

import torch

from .. import dist


class BatchSpec:
    """Per-sample array fields of a batch result: name -> (item shape, torch dtype)."""

    def __init__(self, **fields):
        self.fields = fields

    def padded(self, result, batch_size, device):
        """Every field of `result` (dict name -> (n, *shape) tensor; missing = no batch)
        padded to batch_size rows, on `device`."""
        out = {}
        for name, (shape, dtype) in self.fields.items():
            full = torch.zeros((batch_size, *shape), dtype=dtype, device=device)
            if result is not None:
                value = torch.as_tensor(result[name])
                full[: len(value)] = value.to(device=device, dtype=dtype)
            out[name] = full
        return out


def global_batches(num_samples, batch_size):
    """[range of sample indices] for every global batch, in order."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
    return [range(k, min(num_samples, k + batch_size)) for k in range(0, num_samples, batch_size)]


def num_rounds(num_samples, batch_size, world_size):
    return math.ceil(len(global_batches(num_samples, batch_size)) / world_size)


def run_in_order(num_samples, batch_size, work, spec, on_batch, *, rank=0, world_size=1,
                 device="cpu"):
    """Call `work(indices) -> dict of per-sample tensors` for this rank's batches; on rank 0
    call `on_batch(b, indices, result)` for every global batch b in order (CPU tensors).

    `device` carries the all-gather (the process group's device: CUDA under NCCL).
    """
    batches = global_batches(num_samples, batch_size)
    for round_index in range(num_rounds(num_samples, batch_size, world_size)):
        mine = round_index * world_size + rank
        result = work(list(batches[mine])) if mine < len(batches) else None
        if world_size == 1:
            gathered = {k: torch.as_tensor(v) for k, v in result.items()}
        else:
            # All ranks take part in every round (an idle rank sends padding), never only rank 0.
            padded = spec.padded(result, batch_size, device)
            gathered = {k: dist.all_gather_tensor(v).cpu() for k, v in padded.items()}
        if rank != 0:
            continue
        for r in range(world_size):
            b = round_index * world_size + r
            if b >= len(batches):
                break
            n = len(batches[b])
            rows = slice(r * batch_size, r * batch_size + n) if world_size > 1 else slice(0, n)
            on_batch(b, list(batches[b]), {k: v[rows] for k, v in gathered.items()})


__all__ = ["BatchSpec", "global_batches", "num_rounds", "run_in_order"]
