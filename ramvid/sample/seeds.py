"""Per-sample randomness: sample i of a run with seed s depends on (s, i) only.

Each sample gets its own torch.Generator seeded by a hash of (seed, index), so its noise does not
depend on the batch it lands in, the number of ranks, or the samples before it: any single
sample can be regenerated alone. Generators live on the CPU, so a seed gives the same noise on
every device.
"""
import numpy as np
import torch

from ..seeding import derive_seed

_NOISE_STREAM, _LABEL_STREAM = 0, 1


def _check_seed(seed):
    if int(seed) < 0:
        raise ValueError(f"seed={seed} must be >= 0")


def sample_seed(seed, index):
    """A 63-bit seed for sample `index` of a run seeded with `seed` (SeedSequence hash)."""
    _check_seed(seed)
    return derive_seed(seed, index, _NOISE_STREAM)


def sample_generators(seed, indices):
    """One CPU torch.Generator per sample index (pass as `generator=` to the sampling loops)."""
    return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]


def sample_labels(seed, indices, num_classes):
    """Class labels for class-conditional samples without data: uniform, a function of
    (seed, index) only. LongTensor (n,)."""
    _check_seed(seed)
    labels = [
        int(np.random.default_rng([int(seed), int(i), _LABEL_STREAM]).integers(num_classes))
        for i in indices
    ]
    return torch.tensor(labels, dtype=torch.long)


__all__ = ["sample_generators", "sample_labels", "sample_seed"]
