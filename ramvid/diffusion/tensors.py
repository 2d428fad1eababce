"""Small tensor helpers shared by the diffusion maths."""


def extract(table, t, ndim):
    """table[t] for a (T,) table on t's device and index tensor t (N,), shaped (N, 1, ...)."""
    return table[t].reshape(-1, *([1] * (ndim - 1)))


def broadcast_mask(obs_mask, x):
    """(N, T) bool -> (N, 1, T, 1, 1), broadcastable against a video batch (N, C, T, H, W)."""
    return obs_mask.to(x.device)[:, None, :, None, None]


def masked_mean(values, frames):
    """Per-video mean of `values` (N, C, T, H, W) over the frames where `frames` (N, T) is True.

    A video with no such frame contributes 0 (not NaN).
    """
    weights = broadcast_mask(frames, values).to(values.dtype).expand_as(values)
    total = (values * weights).flatten(1).sum(1)
    count = weights.flatten(1).sum(1)
    return total / count.clamp(min=1)
