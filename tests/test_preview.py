"""Held-out previews while training: --sample_interval, --val_data_dir (ramvid/train/logs.py)."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.synthetic import generate
from ramvid.config import create_model
from ramvid.train.command import parse_train_args
from ramvid.train.logs import PREVIEW_COLUMNS, Preview, preview_tasks
from ramvid.train.loop import EMA
from sample_fixtures import runs_as

_argv0 = runs_as("video_train")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A few demo-sized sprite clips: train/ and val/."""
    root = tmp_path_factory.mktemp("clips")
    generate(root, num_train=4, num_test=0, num_val=2, image_size=16, num_frames=8, seed=0,
             max_sprites=1)
    return root


class Log:
    """Stands in for the run logger: collects info lines; `tb` as the logger has it."""

    def __init__(self, tb=None):
        self.lines, self.tb = [], tb

    def info(self, message):
        self.lines.append(message)


def test_preview_tasks_skip_a_task_that_would_give_every_frame():
    assert preview_tasks(8) == {"prediction": [0, 1], "infilling": [0, 7]}
    assert preview_tasks(2) == {}  # frames 0 and 1 (or first and last) are the whole clip
    assert preview_tasks(3) == {"prediction": [0, 1], "infilling": [0, 2]}


def test_preview_of_the_same_weights_is_the_same_and_files_appear(clips, tmp_path, one_thread):
    """Catches previews that draw fresh clips, noise or masks each time (then successive values
    would not measure the weights alone) and a missing 'TensorBoard is off' note."""
    cfg, model_flags = parse_train_args([
        "--data_dir", str(clips / "train"), "--preset", "demo", "--sample_interval", "5",
        "--val_data_dir", str(clips / "val")])
    torch.manual_seed(0)
    model = create_model(**model_flags)
    log = Log()
    preview = Preview(cfg, model_flags, model, tmp_path, log)
    assert "TensorBoard is off" in log.lines[0]
    ema = EMA(model, cfg.ema_rate)
    preview.run(5, ema)
    preview.run(10, ema)
    with open(tmp_path / "preview" / "preview.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["5", "10"] and list(rows[0]) == list(PREVIEW_COLUMNS)
    for column in PREVIEW_COLUMNS[1:-1]:  # all but the seconds
        assert rows[0][column] == rows[1][column], column
    assert np.isfinite(float(rows[0]["val_loss"]))
    assert (tmp_path / "preview" / "step_000005.gif").stat().st_size > 0
    # Copy-last is the same function of the same clips whatever the weights.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    ema = EMA(model, cfg.ema_rate)
    preview.run(15, ema)
    with open(tmp_path / "preview" / "preview.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert last["psnr_prediction_copy_last"] == rows[0]["psnr_prediction_copy_last"]
    assert last["val_loss"] != rows[0]["val_loss"]


def test_preview_writes_tensorboard_scalars_and_images(clips, tmp_path, one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    cfg, model_flags = parse_train_args([
        "--data_dir", str(clips / "train"), "--preset", "demo", "--sample_interval", "3",
        "--val_data_dir", str(clips / "val")])
    model = create_model(**model_flags)
    writer = SummaryWriter(str(tmp_path))
    preview = Preview(cfg, model_flags, model, tmp_path, Log(tb=writer))
    preview.run(3, EMA(model, cfg.ema_rate))
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"preview/val_loss", "preview/psnr_prediction", "preview/psnr_infilling"} \
        <= set(events.Tags()["scalars"])
    assert set(events.Tags()["images"]) == {"preview/prediction", "preview/infilling"}


@pytest.mark.parametrize("argv, flag", [
    (["--sample_interval", "5"], "--sample_interval"),  # nothing to sample
    (["--val_data_dir", "VAL"], "--val_data_dir"),  # would be read by nothing
    (["--sample_interval", "5", "--val_data_dir", "missing"], "--val_data_dir"),
    (["--sample_interval", "-1"], "--sample_interval"),
])
def test_preview_flags_are_checked_in_one_line(clips, argv, flag):
    argv = [str(clips / "val") if a == "VAL" else a for a in argv]
    done = subprocess.run([sys.executable, "scripts/video_train.py", "--data_dir",
                           str(clips / "train"), "--preset", "demo", *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert flag in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_training_with_previews_writes_them_at_the_interval(clips, tmp_path):
    """End to end through video_train.py: previews after steps 2 and 4 of a 4-step run."""
    done = subprocess.run(
        [sys.executable, "scripts/video_train.py", "--data_dir", str(clips / "train"),
         "--preset", "demo", "--max_steps", "4", "--sample_interval", "2",
         "--val_data_dir", str(clips / "val"), "--num_workers", "0", "--log_dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    previews = sorted(p.name for p in (tmp_path / "preview").glob("step_*.gif"))
    assert previews == ["step_000002.gif", "step_000004.gif"]
