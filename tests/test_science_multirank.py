"""Data-parallel training is one big batch: 2 ranks x batch B equal 1 rank x batch 2B.

The real training entry point runs under `mpirun -n 2` (gloo, CPU) and as one process, on the
same clips with the same per-video random inputs: a small driver replaces only the data
loader (step s's global batch is a fixed set of clips; rank r takes rows r*B .. r*B+B-1) and
draws the step's masks, timesteps and noise for the whole global batch as one rank would,
each rank keeping its rows. Everything else (DDP, gradient all-reduce, clipping, AdamW, loss
statistics, the loss-second-moment sampler's gathering, checkpoints) is the code under test.
The driver also saves every rank's weights after each optimiser update.
"""
import csv
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ramvid.checkpoint import load_checkpoint_file
from train_fixtures import MPIRUN, PYTHON, REPO, TINY, script_env

pytestmark = pytest.mark.slow

PER_RANK, STEPS = 2, 2

DRIVER = textwrap.dedent('''
    import dataclasses, sys
    from pathlib import Path

    import torch
    import torch.distributed as tdist

    import ramvid.train.loop as loop
    from ramvid.train.command import main

    per_rank, out, argv = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]


    def world_size():
        return tdist.get_world_size() if tdist.is_initialized() else 1


    def rank():
        return tdist.get_rank() if tdist.is_initialized() else 0


    class SameClips:
        """Step s's global batch: clips seeded by s; this rank's rows of it."""

        num_classes, class_names, paths = 0, [], ["synthetic"]

        def __init__(self, rank):
            self.rank, self.step = rank, 0

        def __iter__(self):
            return self

        def __next__(self):
            g = torch.Generator().manual_seed(1000 + self.step)
            self.step += 1
            clips = torch.rand(per_rank * world_size(), 3, 4, 8, 8, generator=g) * 2 - 1
            return clips[self.rank * per_rank:(self.rank + 1) * per_rank], {}

        def state_dict(self):
            return {"step": self.step}

        def load_state_dict(self, state):
            self.step = state["step"]


    def load_data(*, rank, **ignored):
        return SameClips(rank)


    draw_for_one_rank = loop.draw_step_inputs


    def global_batch_inputs(cfg, sampler, video, rank, step):
        n = video.shape[0]
        whole = video.new_zeros((n * world_size(), *video.shape[1:]))
        inputs = draw_for_one_rank(cfg, sampler, whole, 0, step)
        rows = slice(rank * n, (rank + 1) * n)
        return dataclasses.replace(inputs, **{f.name: getattr(inputs, f.name)[rows]
                                             for f in dataclasses.fields(inputs)})


    class RecordingAdamW(torch.optim.AdamW):
        updates = 0

        def step(self, *args, **kwargs):
            result = super().step(*args, **kwargs)
            RecordingAdamW.updates += 1
            weights = [p.detach().clone() for g in self.param_groups for p in g["params"]]
            torch.save(weights, out / f"rank{rank()}_update{RecordingAdamW.updates}.pt")
            return result


    loop.load_data = load_data
    loop.draw_step_inputs = global_batch_inputs
    torch.optim.AdamW = RecordingAdamW
    sys.exit(main(argv))
''')


def rows_of(logdir):
    (path,) = Path(logdir).rglob("progress.csv")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def only_file(folder, pattern):
    (path,) = Path(folder).rglob(pattern)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2 steps as 2 ranks x batch 2 (mpirun) and as 1 rank x batch 4."""
    import subprocess

    root = tmp_path_factory.mktemp("multirank")
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    flags = ["--data_dir", str(root), *TINY, "--max_steps", str(STEPS), "--log_interval", "1",
             "--save_interval", str(STEPS), "--schedule_sampler", "loss-second-moment",
             "--uncondition_rate", "0.3", "--seed", "5"]
    out = {}
    for ranks in (2, 1):
        run = root / f"ranks{ranks}"
        (run / "weights").mkdir(parents=True)
        cmd = [PYTHON, str(driver), str(PER_RANK * 2 // ranks), str(run / "weights"), *flags,
               "--batch_size", str(PER_RANK * 2 // ranks)]
        if ranks > 1:
            cmd = [MPIRUN, "-n", str(ranks), *cmd]
        done = subprocess.run(cmd, env=script_env(run / "log"), capture_output=True, text=True,
                              timeout=180, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        out[ranks] = run
    return out


def weights(run, rank, update):
    return torch.load(run / "weights" / f"rank{rank}_update{update}.pt")


def test_both_ranks_hold_identical_weights_after_every_update(runs):
    """After each optimiser update the two ranks' weights are equal bit for bit (they apply
    the same all-reduced gradient to the same start). Seen red with the gradient all-reduce
    skipped (the model not wrapped in DDP: each rank steps on its own half-batch)."""
    for update in range(1, STEPS + 1):
        a, b = weights(runs[2], 0, update), weights(runs[2], 1, update)
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"update {update}"


def test_two_ranks_equal_one_rank_with_the_global_batch(runs):
    """Weights after each update (2 ranks x 2 vs 1 rank x 4) agree to float32 summation
    order; so do the saved model checkpoint and the logged loss, loss quartiles and gradient
    norm (every rank's loss statistics summed, divided by all ranks' video count).

    Tolerances: the gradients differ only by summation order (relative ~1e-7), but AdamW
    normalises each update to about lr, so a weight whose gradient is near Adam's eps can move
    by a fraction of lr: atol = 0.1 lr (measured 0.004 lr after 2 updates), while ranks that
    never average gradients differ by whole multiples of lr. Logged statistics: 1e-5 relative
    (progress.csv keeps 6 digits). Seen red with the gradient all-reduce skipped (no DDP
    wrapper), and with the logged loss statistics left unreduced across ranks (rank 0's half).
    """
    lr = 1e-4
    for update in range(1, STEPS + 1):
        for x, y in zip(weights(runs[2], 0, update), weights(runs[1], 0, update)):
            torch.testing.assert_close(x, y, rtol=0, atol=0.1 * lr)
    model_2 = load_checkpoint_file(only_file(runs[2] / "log", f"model{STEPS:06d}.pt"))
    model_1 = load_checkpoint_file(only_file(runs[1] / "log", f"model{STEPS:06d}.pt"))
    for name in model_1:
        torch.testing.assert_close(model_2[name], model_1[name], rtol=0, atol=0.1 * lr)

    rows_2, rows_1 = rows_of(runs[2] / "log"), rows_of(runs[1] / "log")
    assert [r["step"] for r in rows_2] == [r["step"] for r in rows_1] == ["1", "2"]
    for r2, r1 in zip(rows_2, rows_1):
        assert r2["samples"] == r1["samples"] == str(int(r1["step"]) * 2 * PER_RANK)
        for key in ("loss", "mse", "loss_q0", "loss_q1", "loss_q2", "loss_q3", "grad_norm"):
            if r1[key] == "":
                assert r2[key] == "", key
            else:
                assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-5), key


def test_loss_second_moment_history_gathers_every_ranks_losses(runs):
    """The loss-second-moment sampler's history after 2 steps holds all 2 x 4 videos' losses
    on both layouts (2 ranks gather each other's (t, loss) pairs in rank order, which is the
    global batch order of the single rank). Seen red with the all-gather skipped (each rank
    records only its own videos: half the counts)."""
    opt_2 = load_checkpoint_file(only_file(runs[2] / "log", f"opt{STEPS:06d}.pt"))
    opt_1 = load_checkpoint_file(only_file(runs[1] / "log", f"opt{STEPS:06d}.pt"))
    hist_2, hist_1 = opt_2["schedule_sampler"], opt_1["schedule_sampler"]
    assert int(hist_1["loss_counts"].sum()) == STEPS * 2 * PER_RANK
    assert torch.equal(hist_2["loss_counts"], hist_1["loss_counts"])
    np.testing.assert_allclose(hist_2["loss_history"].numpy(), hist_1["loss_history"].numpy(),
                               rtol=1e-5, atol=0)
