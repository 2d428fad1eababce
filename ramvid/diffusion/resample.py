"""Schedule samplers: which timestep each training video gets, with importance weights.

`sample` returns (t, weights) with weights = 1 / (T p(t)), so the weighted loss is an unbiased
estimate of the uniform-t objective whatever p is.
"""
import math

import numpy as np
import torch
import torch.distributed as dist

SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment", "harmonic")  # --schedule_sampler


def create_named_schedule_sampler(name, diffusion, harmonic_power=1.0):
    steps = np.arange(diffusion.num_timesteps)
    if name == "uniform":
        return ScheduleSampler(np.ones(len(steps)))
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    if name == "harmonic":  # p(t) proportional to 1 / (t + 1)^k: more weight on low noise
        return ScheduleSampler(1.0 / (steps + 1.0) ** harmonic_power)
    raise ValueError(f"schedule_sampler={name!r} is not one of: {', '.join(SCHEDULE_SAMPLERS)}")


class ScheduleSampler:
    """Draws t with probability proportional to fixed weights (num_timesteps,)."""

    def __init__(self, weights):
        self._weights = weights

    def weights(self):
        """Unnormalised sampling weights, numpy (num_timesteps,)."""
        return self._weights

    def sample(self, batch_size, device, generator=None):
        w = self.weights()
        p = torch.from_numpy(w / np.sum(w))
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (len(p) * p[t])
        return t.to(device), weights.float().to(device)

    def update_with_local_losses(self, local_ts, local_losses):
        """Only loss-aware samplers learn from losses."""


class LossSecondMomentResampler(ScheduleSampler):
    """p(t) proportional to sqrt(E[loss_t^2]) once every t has `history` recorded losses."""

    def __init__(self, diffusion, history_per_term=10, uniform_prob=0.001):
        self.num_timesteps = diffusion.num_timesteps
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros((self.num_timesteps, history_per_term), dtype=np.float64)
        self._loss_counts = np.zeros(self.num_timesteps, dtype=np.int64)

    def weights(self):
        if not (self._loss_counts == self.history_per_term).all():
            return np.ones(self.num_timesteps, dtype=np.float64)
        w = np.sqrt(np.mean(self._loss_history ** 2, axis=-1))
        w /= np.sum(w)
        return w * (1 - self.uniform_prob) + self.uniform_prob / len(w)

    def update_with_local_losses(self, local_ts, local_losses):
        """Gather (t, loss) from every rank so all ranks keep the same history."""
        ts, losses = local_ts.detach(), local_losses.detach().float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ts_all = [torch.zeros_like(ts) for _ in range(dist.get_world_size())]
            losses_all = [torch.zeros_like(losses) for _ in range(dist.get_world_size())]
            dist.all_gather(ts_all, ts)
            dist.all_gather(losses_all, losses)
            ts, losses = torch.cat(ts_all), torch.cat(losses_all)
        self.update_with_all_losses(ts.cpu().numpy().tolist(), losses.cpu().numpy().tolist())

    def update_with_all_losses(self, ts, losses):
        """Record each (t, loss); a non-finite loss is dropped: one inf would make every later
        weight inf or NaN and `sample` fail."""
        for t, loss in zip(ts, losses):
            if not math.isfinite(loss):
                continue
            t = int(t)
            if self._loss_counts[t] == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def state_dict(self):
        return {"loss_history": torch.from_numpy(self._loss_history.copy()),
                "loss_counts": torch.from_numpy(self._loss_counts.copy())}

    def load_state_dict(self, state):
        self._loss_history = state["loss_history"].numpy().astype(np.float64)
        self._loss_counts = state["loss_counts"].numpy().astype(np.int64)
