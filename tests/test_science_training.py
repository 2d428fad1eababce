"""Training by value: importance weights in the gradient, learning at all, the logged lr.

Expected values come from outside the code under test: the schedule sampler's probabilities
written out from its definition, the weighted gradient assembled from per-video gradients,
the learning-rate schedule's closed form, and a loss that must fall when one clip is
overfitted.
"""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from ramvid import create_model_and_diffusion
from ramvid.diffusion import create_named_schedule_sampler
from ramvid.train.command import TrainConfig, main
from ramvid.train.loop import draw_step_inputs, forward_backward
from ramvid.video_io import write_video
from train_fixtures import TINY

TINY_MODEL = dict(image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                  attention_resolutions="4", seq_len=4, scale_time_dim=0, diffusion_steps=50)

pytestmark = pytest.mark.usefixtures("one_thread")


def filled_loss_second_moment_sampler(diffusion, history=10):
    """A loss-second-moment sampler whose history holds known losses (see `known_loss`)."""
    sampler = create_named_schedule_sampler("loss-second-moment", diffusion)
    steps = diffusion.num_timesteps
    for k in range(1, history + 1):
        sampler.update_with_all_losses(list(range(steps)), [known_loss(t, k) for t in range(steps)])
    return sampler


def known_loss(t, k):
    """The k-th recorded loss of step t: (t + 1) k / 10 for even t, (t + 1) 5.5 / 10 for odd
    t. Both have the mean (t + 1) 0.55; their root mean squares differ (sqrt(38.5) vs 5.5)."""
    return (t + 1) * (k if t % 2 == 0 else 5.5) / 10


def expected_probabilities(steps, history=10, uniform_prob=0.001):
    """p(t) proportional to sqrt(E[loss_t^2]), mixed with uniform_prob of the uniform law."""
    rms = np.array([np.sqrt(np.mean([known_loss(t, k) ** 2 for k in range(1, history + 1)]))
                    for t in range(steps)])
    return (1 - uniform_prob) * rms / rms.sum() + uniform_prob / steps


def test_loss_second_moment_draws_t_from_p_and_weights_by_one_over_T_p():
    """With a full loss history, t is drawn from p(t) ~ sqrt(E[loss_t^2]) and each video gets
    the importance weight 1 / (T p(t)), which keeps the weighted loss unbiased for the
    uniform-t objective. Frequencies over 200,000 draws are within 5 standard errors of p.

    Seen red with the weights returned as p(t) instead of 1 / (T p(t)), and with p(t)
    proportional to the mean loss instead of its root mean square.
    """
    _, diffusion = create_model_and_diffusion(**TINY_MODEL)
    steps = diffusion.num_timesteps
    sampler = filled_loss_second_moment_sampler(diffusion)
    p = expected_probabilities(steps)
    n = 200_000
    t, weights = sampler.sample(n, "cpu", generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(weights.double().numpy(), 1 / (steps * p[t.numpy()]), rtol=1e-6)
    frequency = np.bincount(t.numpy(), minlength=steps) / n
    assert np.all(np.abs(frequency - p) < 5 * np.sqrt(p * (1 - p) / n))


def test_importance_weights_scale_each_videos_gradient():
    """The step's gradient is (1/N) sum_i w_i grad L_i with w_i = 1 / (T p(t_i)): assembled
    here from each video's own gradient (one backward per video) and the weights written out
    from the sampler's definition. The weights differ enough that the unweighted mean is far
    outside the tolerance.

    Seen red with the importance weights dropped from the step's loss (plain mean).
    """
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**TINY_MODEL)
    with torch.no_grad():  # the zero-initialised output layer would hide most of the gradient
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    sampler = filled_loss_second_moment_sampler(diffusion)
    cfg = TrainConfig(data_dir="unused", uncondition_rate=0.3, max_num_mask_frames=2)
    video = torch.rand(4, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    inputs = draw_step_inputs(cfg, sampler, video, rank=0, step=7)
    p = expected_probabilities(diffusion.num_timesteps)
    weights = 1 / (diffusion.num_timesteps * p[inputs.t.numpy()])
    np.testing.assert_allclose(inputs.weights.double().numpy(), weights, rtol=1e-6)
    assert weights.max() > 3 * weights.min(), inputs.t

    model.zero_grad(set_to_none=True)
    forward_backward(model, diffusion, video, {}, inputs, microbatch=4)
    step_grad = torch.cat([p.grad.flatten() for p in model.parameters()])

    per_video = []
    for i in range(len(video)):
        model.zero_grad(set_to_none=True)
        loss = diffusion.training_losses(model, video[i:i + 1], inputs.t[i:i + 1],
                                         obs_mask=inputs.obs_mask[i:i + 1],
                                         noise=inputs.noise[i:i + 1])["loss"].sum()
        loss.backward()
        per_video.append(torch.cat([p.grad.flatten() for p in model.parameters()]).double())
    per_video = torch.stack(per_video)  # (N, num_params)
    expected = (torch.tensor(weights)[:, None] * per_video).mean(0)
    unweighted = per_video.mean(0)
    # float32 gradients of one batch against per-video ones: summation order only.
    scale = expected.abs().max().item()
    assert (step_grad.double() - expected).abs().max().item() < 1e-4 * scale
    assert (unweighted - expected).abs().max().item() > 1e-2 * scale


def moving_square(frames=6, size=8):
    """(T, H, W, 3) uint8: a yellow square sliding right over a red background."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(size)[None, :, None]
    x = np.arange(size)[None, None, :]
    video = np.zeros((frames, size, size, 3), np.uint8)
    video[..., 0] = 40
    video[(x >= t) & (x < t + 3) & (y >= 2) & (y < 5)] = (230, 200, 30)
    return video


def progress_rows(logdir):
    """The rows of the run's progress.csv (searched below the log dir)."""
    (path,) = Path(logdir).rglob("progress.csv")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_overfitting_one_clip_lowers_the_loss_and_logs_the_scheduled_lr(tmp_path, monkeypatch):
    """30 steps on one clip (x0-prediction, lr 2e-3 annealed linearly to 0 at step 30): the
    mean loss of the last 5 logged steps is below 0.3 x that of the first 5 (recorded run:
    0.51 -> 0.08), and progress.csv's lr of the row for step s is the schedule's closed form
    for the s-th update, 2e-3 (1 - (s - 1) / 30).

    Seen red with the optimizer step skipped (loss stays), and with the lr set from the step
    count after the update (2e-3 (1 - s / 30): every logged lr off by one step).
    """
    data = tmp_path / "data"
    data.mkdir()
    write_video(data / "square_0.mp4", moving_square())
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "log"))
    code = main(["--data_dir", str(data), *TINY, "--batch_size", "2", "--log_interval", "1",
                 "--save_interval", "1000", "--predict_xstart", "True", "--lr", "2e-3",
                 "--anneal_type", "linear", "--lr_anneal_steps", "30", "--seed", "0"])
    assert code == 0
    rows = progress_rows(tmp_path / "log")
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5]), losses
    logged_lr = [float(r["lr"]) for r in rows]
    # progress.csv keeps 6 significant digits.
    np.testing.assert_allclose(logged_lr, [2e-3 * (1 - (s - 1) / 30) for s in range(1, 31)],
                               rtol=1e-5)
