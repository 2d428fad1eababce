"""The training loop: gradient accumulation, EMA, lr schedules, exact resume, non-finite steps,
SIGTERM and SIGKILL."""
import dataclasses
import errno
import math
import os
import random
import re
import signal
import subprocess
import time
import types

import numpy as np
import pytest
import torch

from ramvid import create_model_and_diffusion
from ramvid.checkpoint import load_checkpoint_file, load_latest_checkpoint
from ramvid.diffusion.resample import LossSecondMomentResampler, create_named_schedule_sampler
from ramvid.dist import setup_dist
from ramvid.runlock import LOCK_NAME
from ramvid.train.command import TrainConfig, main, parse_train_args
from ramvid.train.logs import LossStats, RunLogger
from ramvid.train import loop as train_loop
from ramvid.train.loop import EMA, StopRequest, draw_step_inputs, forward_backward, last_step, lr_at
from ramvid.train.rundir import run_folder
from train_fixtures import (PYTHON, TINY, TRAIN_SCRIPT, assert_all_final_files_load, finite,
                            make_videos, progress_rows, script_env)

def resume_step(folder, rates):
    """The step `--resume_checkpoint auto` would continue from (newest complete, loadable set)."""
    ckpt = load_latest_checkpoint(folder, rates)
    return None if ckpt is None else ckpt.step


TINY_MODEL = dict(image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                  attention_resolutions="4", seq_len=4, scale_time_dim=0, diffusion_steps=50)


# Tiny models are fastest on one thread, above all when the 2 cores are shared.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_videos(tmp_path_factory.mktemp("videos"))


# ----------------------------------------------------------------------------- unit level
def test_microbatches_give_the_full_batch_gradient():
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(**TINY_MODEL, learn_sigma=True)
    sampler = create_named_schedule_sampler("harmonic", diffusion)  # non-uniform weights
    cfg = TrainConfig(data_dir="unused", uncondition_rate=0.3, max_num_mask_frames=2)
    video = torch.rand(5, 3, 4, 8, 8) * 2 - 1  # (N, C, T, H, W)
    inputs = draw_step_inputs(cfg, sampler, video, rank=0, step=3)
    assert not torch.all(inputs.weights == inputs.weights[0])

    grads, terms = {}, {}
    for microbatch in (5, 2, 1):
        model.zero_grad(set_to_none=True)
        terms[microbatch] = forward_backward(model, diffusion, video, {}, inputs, microbatch)
        grads[microbatch] = [p.grad.clone() for p in model.parameters()]
    for microbatch in (2, 1):
        for full, split in zip(grads[5], grads[microbatch]):
            torch.testing.assert_close(split, full, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(terms[microbatch]["loss"], terms[5]["loss"])
    assert set(terms[5]) == {"loss", "mse", "vb"}


def test_ema_update_is_the_lerp_formula():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    ema = EMA(net, ["0.9", "0.5"])
    before = {rate: [p.clone() for p in ema.params[rate]] for rate in ema.rates}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    ema.update()
    for rate in ema.rates:
        for old, new, p in zip(before[rate], ema.params[rate], net.parameters()):
            torch.testing.assert_close(new, old + (1 - float(rate)) * (p - old))
    state = ema.state_dict("0.5")
    assert set(state) == set(net.state_dict())
    torch.testing.assert_close(state["0.weight"], ema.params["0.5"][0])


def test_ema_copy_to_puts_the_ema_weights_and_live_buffers_into_the_copy():
    """Expected: the EMA parameters of the chosen rate, and the live model's buffers. Catches
    copying the live weights or another rate's."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(net, ["0.9", "0.5"])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        net[1].running_mean.add_(1.0)
    ema.update()
    copy = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ema.copy_to(copy, "0.5")
    for p_copy, p_ema in zip(copy.parameters(), ema.params["0.5"]):
        torch.testing.assert_close(p_copy, p_ema)
    assert not torch.equal(copy[0].weight, net[0].weight)
    torch.testing.assert_close(copy[1].running_mean, net[1].running_mean)


def test_lr_schedules():
    base = TrainConfig(data_dir="unused", lr=1e-3)
    assert lr_at(base, 12345) == 1e-3
    linear = dataclasses.replace(base, anneal_type="linear", lr_anneal_steps=100)
    assert lr_at(linear, 25) == pytest.approx(7.5e-4)
    assert lr_at(linear, 100) == 0.0
    step = dataclasses.replace(base, anneal_type="step", steps_drop=10, drop=0.5)
    assert [lr_at(step, s) for s in (0, 9, 10, 25)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])
    time_based = dataclasses.replace(base, anneal_type="time_based", decay=0.1)
    assert lr_at(time_based, 10) == pytest.approx(5e-4)

    assert last_step(base) is None
    assert last_step(dataclasses.replace(base, max_steps=7)) == 7
    assert last_step(dataclasses.replace(linear, max_steps=500)) == 100
    assert last_step(dataclasses.replace(linear, max_steps=50)) == 50


def test_nonfinite_loss_never_enters_the_loss_second_moment_history():
    """An inf or NaN loss (an fp16 overflow) is dropped: the weights stay the closed form
    sqrt(E[loss_t^2]) of the finite losses, mixed with uniform_prob. Catches the inf entering
    the history, which made every weight inf/NaN and torch.multinomial fail."""
    sampler = LossSecondMomentResampler(types.SimpleNamespace(num_timesteps=4), history_per_term=2)
    sampler.update_with_all_losses([0, 1, 2, 3] * 2, [1.0, 2.0, 3.0, 4.0] * 2)
    sampler.update_with_all_losses([0, 2], [math.inf, math.nan])
    expected = np.array([1.0, 2.0, 3.0, 4.0]) / 10 * (1 - sampler.uniform_prob) + \
        sampler.uniform_prob / 4
    np.testing.assert_allclose(sampler.weights(), expected)
    t, weights = sampler.sample(64, "cpu", generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(weights).all() and t.min() >= 0 and t.max() <= 3


def test_step_inputs_depend_only_on_seed_rank_and_step():
    _, diffusion = create_model_and_diffusion(**TINY_MODEL)
    sampler = create_named_schedule_sampler("uniform", diffusion)
    cfg = TrainConfig(data_dir="unused", max_num_mask_frames=2, seed=5)
    video = torch.zeros(6, 3, 4, 8, 8)

    def draw(rank, step):
        torch.rand(7)  # the global RNG must not matter
        x = draw_step_inputs(cfg, sampler, video, rank, step)
        return torch.cat([x.obs_mask.flatten().float(), x.t.float(), x.noise.flatten()])

    assert torch.equal(draw(0, 3), draw(0, 3))
    assert not torch.equal(draw(0, 3), draw(1, 3))
    assert not torch.equal(draw(0, 3), draw(0, 4))


def test_loss_stats_average_over_videos_and_quartiles():
    stats = LossStats(num_timesteps=100, device="cpu")
    stats.add({"loss": torch.tensor([1.0, 2.0]), "mse": torch.tensor([1.0, 2.0])},
              torch.tensor([10, 80]), torch.tensor(3.0))
    stats.add({"loss": torch.tensor([4.0, 6.0]), "mse": torch.tensor([4.0, 6.0])},
              torch.tensor([20, 99]), torch.tensor(5.0))
    row = stats.reduce()
    assert row["loss"] == pytest.approx(13 / 4) and row["vb"] is None
    assert row["loss_q0"] == pytest.approx(2.5) and row["loss_q1"] is None
    assert row["loss_q3"] == pytest.approx(4.0) and row["grad_norm"] == pytest.approx(4.0)


# ----------------------------------------------------------------------------- in-process runs
def _train(videos, logdir, monkeypatch, *flags):
    monkeypatch.setenv("OPENAI_LOGDIR", str(logdir))
    return main(["--data_dir", str(videos), *TINY, "--batch_size", "2", "--log_interval", "1",
                 "--ema_rate", "0.9,0.99", "--seed", "3", *map(str, flags)])


def test_resume_equals_uninterrupted_run(videos, tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = ("--microbatch", "1", "--save_interval", "2", "--dropout", "0.1",
             "--uncondition_rate", "0.5")
    assert _train(videos, straight, monkeypatch, *flags, "--max_steps", "4") == 0
    assert _train(videos, resumed, monkeypatch, *flags, "--max_steps", "2") == 0
    # The second call resumes from the log dir's checkpoint (step 2) without being told to.
    assert _train(videos, resumed, monkeypatch, *flags, "--max_steps", "4",
                  "--num_workers", "1") == 0
    assert "resuming from step 2" in (resumed / "log.txt").read_text()

    for name in ("model000004.pt", "ema_0.9_000004.pt", "ema_0.99_000004.pt"):
        a, b = load_checkpoint_file(straight / name), load_checkpoint_file(resumed / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    opt_a = load_checkpoint_file(straight / "opt000004.pt")
    opt_b = load_checkpoint_file(resumed / "opt000004.pt")
    assert opt_a["step"] == opt_b["step"] == 4
    for sa, sb in zip(opt_a["optimizer"]["state"].values(), opt_b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    rows_a, rows_b = progress_rows(straight), progress_rows(resumed)
    assert [r["step"] for r in rows_b] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    args = (straight / "args.json").read_text()
    assert '"world_size": 1' in args and '"class_names"' in args
    assert not (resumed / LOCK_NAME).exists()  # given back at exit 0


def _inject_nan(monkeypatch, bad_calls):
    """Make the real model's output NaN on the forward calls numbered in `bad_calls`."""
    real = train_loop.create_model_and_diffusion
    seen = {"calls": 0}

    def create(**flags):
        model, diffusion = real(**flags)

        def poison(module, args, output):
            seen["calls"] += 1
            return output * math.nan if bad_calls(seen["calls"]) else output

        model.register_forward_hook(poison)
        seen["model"] = model
        return model, diffusion

    monkeypatch.setattr(train_loop, "create_model_and_diffusion", create)
    return seen


def test_nonfinite_steps_never_reach_weights(videos, tmp_path, monkeypatch):
    _inject_nan(monkeypatch, lambda call: call in (2, 3))  # batch 2, microbatch 2: call = step
    assert _train(videos, tmp_path, monkeypatch, "--max_steps", "5", "--max_bad_steps", "3") == 0
    rows = progress_rows(tmp_path)
    assert [r["skipped_steps"] for r in rows] == ["0", "1", "1", "0", "0"]
    assert rows[1]["loss"] == ""  # a skipped step contributes nothing to the logged loss
    assert finite(load_checkpoint_file(tmp_path / "model000005.pt"))
    assert finite(load_checkpoint_file(tmp_path / "ema_0.9_000005.pt"))
    assert "step 2: non-finite loss or gradient, update skipped" in (tmp_path / "log.txt").read_text()


def test_consecutive_nonfinite_steps_stop_the_run(videos, tmp_path, monkeypatch):
    seen = _inject_nan(monkeypatch, lambda call: call >= 3)
    code = _train(videos, tmp_path, monkeypatch, "--max_steps", "10", "--save_interval", "2",
                  "--max_bad_steps", "3")
    assert code == train_loop.EXIT_DIVERGED
    assert not (tmp_path / LOCK_NAME).exists()  # given back at exit 3
    assert "3 consecutive steps" in (tmp_path / "log.txt").read_text()
    # Step 4's checkpoint was written during the bad streak: it holds step 2's weights, since
    # steps 3, 4 and 5 changed neither the weights nor the EMA; nothing was saved after.
    assert resume_step(tmp_path, ["0.9", "0.99"]) == 4
    assert not list(tmp_path.glob("model00000[5-9].pt"))
    live = seen["model"].state_dict()
    for name in ("model00000{}.pt", "ema_0.9_00000{}.pt"):
        at_2, at_4 = (load_checkpoint_file(tmp_path / name.format(s)) for s in (2, 4))
        assert all(torch.equal(at_2[k], at_4[k]) for k in at_2) and finite(at_4)
        if name.startswith("model"):
            assert all(torch.equal(at_4[k], live[k]) for k in at_4)


def test_fp16_path_unscales_before_clipping_and_skips_overflow(videos, tmp_path, monkeypatch):
    """The GradScaler path, run on CPU by bypassing the GPU check of the command and of
    runtime.autocast_dtype (float16 autocast exists on CPU too): the logged gradient norm is the
    true one, and a NaN step is skipped with a halved loss scale."""
    argv = ["--data_dir", str(videos), *TINY, "--batch_size", "2", "--log_interval", "1",
            "--max_steps", "3", "--seed", "3"]
    cfg, model_flags = parse_train_args(argv)
    assert _train(videos, tmp_path / "fp32", monkeypatch, "--max_steps", "1") == 0
    seen = _inject_nan(monkeypatch, lambda call: call == 2)
    fp16 = dataclasses.replace(cfg, use_fp16=True, ema_rate=("0.9",),
                               log_dir=str(tmp_path / "fp16"))
    info = setup_dist()
    monkeypatch.setattr(train_loop, "autocast_dtype", lambda *flags_and_device: torch.float16)
    with StopRequest() as stop, run_folder(fp16, model_flags, info) as start, \
            RunLogger(start.logdir) as log:
        assert train_loop.train(fp16, model_flags, info, start, log, stop) == 0
    rows = progress_rows(tmp_path / "fp16")
    assert [r["skipped_steps"] for r in rows] == ["0", "1", "0"]
    assert [float(r["loss_scale"]) for r in rows] == [65536.0, 32768.0, 32768.0]
    reference = float(progress_rows(tmp_path / "fp32")[0]["grad_norm"])
    assert float(rows[0]["grad_norm"]) == pytest.approx(reference, rel=1e-2)
    assert finite(seen["model"].state_dict())


def test_disk_full_stops_with_one_line_and_keeps_previous_checkpoint(videos, tmp_path,
                                                                    monkeypatch, capsys):
    real_replace = os.replace

    def replace(src, dst):
        if "000002" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(SystemExit) as stop:
        _train(videos, tmp_path, monkeypatch, "--max_steps", "3", "--save_interval", "1")
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "could not write checkpoint" in err and "000002.pt: No space left on device" in err
    assert "Traceback" not in err
    assert resume_step(tmp_path, ["0.9", "0.99"]) == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert not (tmp_path / LOCK_NAME).exists()  # given back at exit 1


# ----------------------------------------------------------------------------- signals
def _start(videos, logdir, *flags):
    cmd = [PYTHON, TRAIN_SCRIPT, "--data_dir", str(videos), *TINY, "--batch_size", "1",
           "--log_interval", "1", *map(str, flags)]
    return subprocess.Popen(cmd, env=script_env(logdir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _runs_started(logdir):
    log = logdir / "log.txt"
    return log.read_text().count(" rank(s) on ") if log.exists() else 0


def _wait_for_rows(proc, logdir, rows, timeout=60, after_step=-1, runs=1):
    """Wait until the `runs`-th run in `logdir` has started and progress.csv has `rows` rows,
    the last one after step `after_step`."""
    deadline = time.time() + timeout
    while True:
        current = progress_rows(logdir) if _runs_started(logdir) >= runs else []
        # A read that meets the trainer's append half done has no whole last row yet: wait.
        step = current[-1].get("step") if current else None
        if len(current) >= rows and step is not None and step.isdigit() and int(step) > after_step:
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("training made no progress")
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_75(videos, tmp_path):
    proc = _start(videos, tmp_path, "--save_interval", "1000")
    _wait_for_rows(proc, tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == train_loop.EXIT_STOPPED == 75, err[-2000:]
    stopped = int(re.search(r"stopped by signal after step (\d+)", out).group(1))
    assert stopped >= 2
    assert resume_step(tmp_path, ["0.9999"]) == stopped
    assert not (tmp_path / LOCK_NAME).exists()  # given back at exit 75
    assert "Traceback" not in err


@pytest.mark.slow
def test_sigkill_at_random_moments_always_resumes(videos, tmp_path):
    rng = random.Random(0)
    flags = ("--save_interval", "2", "--ema_rate", "0.99")
    last_complete, kills, started = None, 0, time.time()
    while kills < 5 and time.time() - started < 45:
        proc = _start(videos, tmp_path, *flags)
        # Let this run train past its resume point, then kill it at a random moment: in a step,
        # in a checkpoint write, in a log write.
        _wait_for_rows(proc, tmp_path, 1, after_step=last_complete or 0, runs=kills + 1)
        time.sleep(rng.uniform(0.0, 1.0))
        proc.kill()
        proc.communicate()
        kills += 1
        assert_all_final_files_load(tmp_path)  # never a truncated file under a final name
        step = resume_step(tmp_path, ["0.99"])
        if last_complete is not None:  # the resume point never goes backwards
            assert step is not None and step >= last_complete
        last_complete = step
    assert kills >= 3 and last_complete is not None
    proc = _start(videos, tmp_path, *flags, "--max_steps", last_complete + 1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert f"resuming from step {last_complete}" in out
    resumed = [int(m) for m in re.findall(r"resuming from step (\d+)", (tmp_path / "log.txt").read_text())]
    assert len(resumed) == kills and resumed == sorted(resumed)
    assert resume_step(tmp_path, ["0.99"]) == last_complete + 1
    steps = [int(r["step"]) for r in progress_rows(tmp_path)]
    assert steps == list(range(1, last_complete + 2))  # rows after a checkpoint were replayed once
