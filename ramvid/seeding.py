"""Independent random streams named by integer keys."""
import numpy as np


def derive_seed(*keys):
    """A well-mixed 63-bit seed (fits torch.Generator.manual_seed) for the stream named by
    `keys`, e.g. (seed, rank, step, stream): nearby keys give unrelated streams."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))
