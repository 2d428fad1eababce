"""Class labels (--class_cond True) reach the training loss and steer the sampled videos."""
from pathlib import Path

import numpy as np
import pytest
import torch

from ramvid import create_diffusion, create_model
from ramvid.checkpoint import load_checkpoint_file
from ramvid.sample import sample_videos
from ramvid.train.command import main
from ramvid.video_io import write_video
from train_fixtures import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ("apple", "berry", "cherry")  # numbered 0, 1, 2 in sorted order
LABELLED = dict(image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                attention_resolutions="4", seq_len=4, scale_time_dim=0, diffusion_steps=50,
                class_cond=True, num_classes=len(CLASSES))


def clip(seed, frames=6, size=8):
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def only_file(folder, pattern):
    (path,) = Path(folder).rglob(pattern)
    return path


def test_every_label_in_the_batch_gets_a_gradient(tmp_path, monkeypatch):
    """Three steps on three single-file classes with --batch_size 3 (an epoch per step: each
    file once per step): the optimiser's first moment of the label embedding is non-zero on
    the rows of all three labels. The gradient of an embedding row is non-zero only if a video
    with that label entered the loss. (It reaches the embedding from the third step on: the
    UNet's output layer and its residual branches' last layers start at zero, and each step
    opens one of them.)

    Seen red with the labels replaced by zeros before the loss (only row 0 gets a gradient).
    """
    data = tmp_path / "data"
    data.mkdir()
    for i, name in enumerate(CLASSES):
        write_video(data / f"{name}_0.mp4", clip(i))
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "log"))
    assert main(["--data_dir", str(data), *TINY, "--class_cond", "True", "--batch_size", "3",
                 "--max_steps", "3", "--seed", "0"]) == 0
    names = [name for name, _ in create_model(**LABELLED).named_parameters()]
    opt = load_checkpoint_file(only_file(tmp_path / "log", "opt000003.pt"))
    first_moment = opt["optimizer"]["state"][names.index("label_emb.weight")]["exp_avg"]
    assert first_moment.shape[0] == len(CLASSES)
    assert first_moment.abs().sum(1).gt(0).tolist() == [True, True, True]


def test_sampled_videos_depend_on_the_label():
    """The same seed and sample index with label 0, 1, 0: the two label-0 videos are equal
    byte for byte, the label-1 video differs in most pixels (a model whose layers are all
    perturbed away from their zero initialisation, so the label embedding reaches the output).

    Seen red with the given labels ignored in favour of labels drawn from the seed.
    """
    torch.manual_seed(0)
    model = create_model(**LABELLED)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    diffusion = create_diffusion(**{**LABELLED, "timestep_respacing": "5"})
    videos = [sample_videos(model.eval(), diffusion, 1, y=[label], seed=3) for label in (0, 1, 0)]
    assert np.array_equal(videos[0], videos[2])
    assert (videos[0] != videos[1]).mean() > 0.5
