"""Stopping and restarting a run as a cluster does: stop signals delivered twice, a slow
checkpoint write on rank 0, re-running the same command in a used log dir, pruning checkpoints."""
import csv
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ramvid import checkpoint as ck
from ramvid.checkpoint import checkpoint_files, complete_steps, load_checkpoint_file
from ramvid.dist import DistInfo
from ramvid.runlock import LOCK_NAME, read_lock
from ramvid.train.command import main, parse_train_args
from ramvid.train.loop import EXIT_STOPPED
from ramvid.train.rundir import run_folder
from sample_fixtures import runs_as
from train_fixtures import (MPIRUN, PYTHON, REPO, TINY, TRAIN_SCRIPT, make_videos, progress_rows,
                            script_env)

_argv0 = runs_as("video_train")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_videos(tmp_path_factory.mktemp("videos"), num_mp4=3, extras=False)


def _flags(videos, logdir, *extra):
    return ["--data_dir", str(videos), *TINY, "--batch_size", "2", "--log_interval", "1",
            "--ema_rate", "0.9", "--seed", "4", "--log_dir", str(logdir), *map(str, extra)]


def _hashes(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- signals
def _popen(args, env):
    return subprocess.Popen([PYTHON, *map(str, args)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(procs, logdir, rows, timeout=90):
    deadline = time.time() + timeout
    while len(progress_rows(logdir)) < rows:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"training exited early ({proc.returncode}): "
                            f"{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            for proc in procs:
                proc.kill()
            pytest.fail("training made no progress")
        time.sleep(0.02)


@pytest.mark.slow
def test_double_sigterm_then_resume_equals_uninterrupted_run(videos, tmp_path):
    """SIGTERM delivered twice (Slurm signals the step's processes, torchrun forwards it again)
    ends with exit 75 and a complete checkpoint of the step it stopped at; re-running with
    --resume_checkpoint auto ends bit-for-bit where an uninterrupted run ends. Catches the second
    SIGTERM killing the process (the old handler was restored after the first) and any state a
    resume does not restore (dropout RNG, schedule-sampler history, optimiser, EMA)."""
    stopped_dir, straight_dir = tmp_path / "stopped", tmp_path / "straight"
    extra = ("--dropout", "0.1", "--schedule_sampler", "loss-second-moment",
             "--save_interval", "1000")
    env = script_env()
    # The checkpoint write takes 3 x 1.5 s, so the second SIGTERM surely arrives during it.
    proc = _popen([_slow_write_wrapper(tmp_path), *_flags(videos, stopped_dir, *extra)],
                  script_env(SLOW_S="1.5", SLOW_STEP=""))
    _wait_for_rows([proc], stopped_dir, 2)
    proc.send_signal(signal.SIGTERM)
    _wait_for_log(proc, stopped_dir, "received SIGTERM")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    stop = int(re.search(r"stopped by signal after step (\d+)", out).group(1))
    assert complete_steps(stopped_dir, ["0.9"]) == [stop]

    end = stop + 2
    resumed = _popen([TRAIN_SCRIPT, *_flags(videos, stopped_dir, *extra, "--max_steps", end,
                                            "--resume_checkpoint", "auto")], env)
    straight = _popen([TRAIN_SCRIPT, *_flags(videos, straight_dir, *extra, "--max_steps", end)],
                      env)
    for p in (resumed, straight):
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    log = (stopped_dir / "log.txt").read_text()
    assert (f"resuming from step {stop}: model{stop:06d}.pt, ema_0.9_{stop:06d}.pt, "
            f"opt{stop:06d}.pt") in log
    for name in (f"model{end:06d}.pt", f"ema_0.9_{end:06d}.pt"):
        assert _same_state(load_checkpoint_file(stopped_dir / name),
                           load_checkpoint_file(straight_dir / name)), name
    opts = [load_checkpoint_file(d / f"opt{end:06d}.pt") for d in (stopped_dir, straight_dir)]
    for a, b in zip(*(o["optimizer"]["state"].values() for o in opts)):
        assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq"))
    assert _same_state(*(o["schedule_sampler"] for o in opts))


# video_train.py whose checkpoint files take SLOW_S seconds each to write (only those of step
# SLOW_STEP when it is set): a slow network file system.
SLOW_WRITE = textwrap.dedent("""
    import os, sys, time
    import ramvid.checkpoint as ck
    from ramvid.train.command import main

    real_save = ck.atomic_save

    def slow_save(obj, path):
        if f"{os.environ['SLOW_STEP']}.pt" in str(path):
            time.sleep(float(os.environ["SLOW_S"]))
        return real_save(obj, path)

    ck.atomic_save = slow_save
    sys.exit(main(sys.argv[1:]))
""")


def _slow_write_wrapper(folder):
    path = Path(folder) / "slow_write.py"
    path.write_text(SLOW_WRITE)
    return path


def _wait_for_log(proc, logdir, text, timeout=60):
    deadline = time.time() + timeout
    while text not in (Path(logdir) / "log.txt").read_text():
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail(f"no {text!r} in the log ({proc.returncode})")
        time.sleep(0.01)


@pytest.mark.slow
def test_two_ranks_slow_checkpoint_write_and_stop_signals(videos, tmp_path):
    """2 ranks (RANK/WORLD_SIZE set per process, as torchrun does) with --dist_timeout 6: rank
    0's step-2 checkpoint takes 3 x 2.5 s to write, and the run must go on (the other rank
    waits on the long-timeout group, not in the next step's all-reduce). Then rank 0 gets
    SIGUSR1 and rank 1 SIGTERM twice: both stop at the same step, exit 75, and the checkpoint
    of that step is complete. Catches the write tripping the collective timeout and ranks
    disagreeing on the stop step."""
    wrapper = _slow_write_wrapper(tmp_path)
    logdir = tmp_path / "run"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = script_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), SLOW_S="2.5",
                         SLOW_STEP="000002")
        procs.append(_popen([wrapper, *_flags(videos, logdir, "--save_interval", "2",
                                              "--dist_timeout", "6")], env))
    _wait_for_rows(procs, logdir, 3, timeout=120)  # step 3 ran after the slow step-2 write
    procs[0].send_signal(signal.SIGUSR1)
    procs[1].send_signal(signal.SIGTERM)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [EXIT_STOPPED] * 2, \
        outs[0][1][-3000:] + outs[1][1][-3000:]
    stop = int(re.search(r"stopped by signal after step (\d+)", outs[0][0]).group(1))
    assert "received SIGUSR1" in outs[0][0]
    assert complete_steps(logdir, ["0.9"])[0] == stop > 2
    opt = load_checkpoint_file(logdir / f"opt{stop:06d}.pt")
    assert opt["world_size"] == 2 and [r["data"]["items_consumed"] for r in opt["ranks"]] == \
        [2 * stop, 2 * stop]


# video_train.py that receives SIGUSR1 while rank 0 is still deciding where to start (reading
# the log dir), before the first step.
SIGNAL_AT_START = textwrap.dedent("""
    import os, signal, sys
    import ramvid.train.rundir as rundir
    from ramvid.train.command import main

    real_plan = rundir.plan_start

    def plan_start(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)
        return real_plan(*args, **kwargs)

    rundir.plan_start = plan_start
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_signal_during_start_up_stops_after_the_first_step(videos, tmp_path):
    """Slurm's --signal can arrive while the run is still starting (rank 0 reading a large
    checkpoint). The run must not die of it (SIGUSR1's default action) but stop after its
    first step with a complete checkpoint and exit 75. Catches stop handlers installed only
    when the training loop starts."""
    wrapper = tmp_path / "signal_at_start.py"
    wrapper.write_text(SIGNAL_AT_START)
    proc = _popen([wrapper, *_flags(videos, tmp_path / "run", "--max_steps", 5)], script_env())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, err[-3000:]
    assert "stopped by signal after step 1" in out
    assert complete_steps(tmp_path / "run", ["0.9"]) == [1]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- log dir reuse
def test_restart_in_a_used_folder_is_refused_and_touches_nothing(videos, tmp_path, capsys):
    """Each refused restart exits 2 with one line naming the folder or the flags, and every
    file of the folder stays byte-identical (sha256): no truncated progress.csv, no deleted or
    overwritten checkpoint, no log line. --overwrite True then starts over. Catches a start at
    step 0 over another run's checkpoints, a resume with other model flags, and a check made
    after the folder was already modified."""
    run, other = tmp_path / "run", tmp_path / "other"
    assert main(_flags(videos, run, "--max_steps", 2, "--save_interval", 1)) == 0
    assert main(_flags(videos, other, "--max_steps", 1)) == 0
    assert "no checkpoint in" in (run / "log.txt").read_text()
    before = _hashes(run)
    assert len(progress_rows(run)) == 2 and len(before) >= 9
    capsys.readouterr()

    refused = {
        # other EMA rates: no complete set, so this would start at step 0 over the old files
        "another run": (["--ema_rate", "0.99"], [str(run), "another run", "ema_0.99_000002.pt"]),
        "model flags": (["--num_channels", "64", "--resume_checkpoint", "auto"],
                        ["--num_channels 64", "(the run used 32)"]),
        "foreign resume": (["--resume_checkpoint", other / "model000001.pt"],
                           [str(run), "another run"]),
        "older step": (["--resume_checkpoint", run / "model000001.pt"],
                       [str(run), "after step 1", "model000002.pt"]),
    }
    for case, (extra, named) in refused.items():
        args = _flags(videos, run, "--max_steps", 4, *extra)
        if "--ema_rate" in extra:
            args.remove("0.9"), args.remove("--ema_rate")
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2, case
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("video_train.py: error:"), (case, err)
        assert all(n in err for n in named), (case, err)
        assert _hashes(run) == before, case

    args = _flags(videos, run, "--max_steps", 1, "--overwrite", "True")
    args[args.index("0.9")] = "0.99"
    assert main(args) == 0
    assert sorted(checkpoint_files(run)) == [1]
    assert sorted(p.name for p in checkpoint_files(run)[1]) == [
        "ema_0.99_000001.pt", "model000001.pt", "opt000001.pt"]
    assert [r["step"] for r in progress_rows(run)] == ["1"]
    assert "--overwrite True: deleted 6 checkpoint file(s)" in (run / "log.txt").read_text()


def test_changed_training_flags_are_logged_on_resume(videos, tmp_path):
    assert main(_flags(videos, tmp_path, "--max_steps", 1)) == 0
    assert main(_flags(videos, tmp_path, "--max_steps", 2, "--lr", "2e-4",
                       "--resume_checkpoint", "auto")) == 0
    log = (tmp_path / "log.txt").read_text()
    assert ("training flags changed since the resumed run: --lr 0.0001 -> 0.0002, "
            "--max_steps 1 -> 2") in log


@pytest.mark.parametrize("keep_every,kept", [(0, [4, 5]), (2, [2, 4, 5])])
def test_keep_checkpoints(videos, tmp_path, keep_every, kept):
    """--keep_checkpoints 2 leaves exactly the two newest complete sets (and, with --keep_every
    2, every even step too); nothing else of the pruned steps remains."""
    extra = ["--keep_every", keep_every] if keep_every else []
    assert main(_flags(videos, tmp_path, "--max_steps", 5, "--save_interval", 1,
                       "--keep_checkpoints", 2, *extra)) == 0
    assert sorted(checkpoint_files(tmp_path)) == kept
    assert sorted(complete_steps(tmp_path, ["0.9"])) == kept
    assert all(len(paths) == 3 for paths in checkpoint_files(tmp_path).values())


# ----------------------------------------------------------------------------- one writer
PROGRESS_VALUES = ("step", "samples", "loss", "mse", "loss_q0", "loss_q1", "loss_q2", "loss_q3",
                   "grad_norm", "lr", "skipped_steps")


def _checkpoint_hashes(folder):
    return {name: digest for name, digest in _hashes(folder).items() if name.suffix == ".pt"}


@pytest.mark.slow
def test_a_second_run_in_a_held_log_dir_exits_2_and_the_first_is_unharmed(videos, tmp_path):
    """While a run trains in a log dir, a second video_train.py there exits 2 with one line
    naming the first's pid and host; the first then stops (SIGTERM, exit 75) at step k with the
    same checkpoint bytes and progress.csv values as the same command run alone to step k.
    Seen red with the lock skipped (`lock.acquire()` a no-op): the second run started over,
    exit 0, and truncated the first's progress.csv."""
    held, alone = tmp_path / "held", tmp_path / "alone"
    first = _popen([TRAIN_SCRIPT, *_flags(videos, held)], script_env())
    _wait_for_rows([first], held, 1)
    second = subprocess.run([PYTHON, TRAIN_SCRIPT, *_flags(videos, held, "--max_steps", 2)],
                            env=script_env(), cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 2, second.stderr[-3000:]
    assert second.stderr.count("\n") == 1 and second.stderr.startswith("video_train.py: error:")
    assert f"{held} is in use by pid {first.pid} on host {socket.gethostname()}" in second.stderr
    assert first.poll() is None, "the first run ended before the second one started"
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=60)
    assert first.returncode == EXIT_STOPPED, err[-3000:]
    assert not (held / LOCK_NAME).exists()
    k = int(re.search(r"stopped by signal after step (\d+)", out).group(1))

    assert main(_flags(videos, alone, "--max_steps", k)) == 0
    assert _checkpoint_hashes(held) == _checkpoint_hashes(alone) != {}
    assert [[r[c] for c in PROGRESS_VALUES] for r in progress_rows(held)] == \
        [[r[c] for c in PROGRESS_VALUES] for r in progress_rows(alone)]
    assert len(progress_rows(held)) == k


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning_and_the_run_resumes(videos,
                                                                                 tmp_path):
    """A SIGKILLed run leaves its lock file; the next start on this host removes it (the pid
    no longer runs), says so in log.txt, and resumes from the last complete checkpoint.
    Seen red with a dead pid taken for a running one (`FolderLock._stale_reason` returning
    None: exit 2) and with the lock's warnings not passed on to the log (no WARNING line)."""
    run = tmp_path / "run"
    killed = _popen([TRAIN_SCRIPT, *_flags(videos, run, "--save_interval", 2)], script_env())
    _wait_for_rows([killed], run, 3)
    killed.kill()
    killed.communicate()
    assert read_lock(run).pid == killed.pid
    step = complete_steps(run, ["0.9"])[0]

    done = subprocess.run([PYTHON, TRAIN_SCRIPT, *_flags(videos, run, "--save_interval", 2,
                                                         "--max_steps", step + 1)],
                          env=script_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run / "log.txt").read_text()
    assert (f"WARNING: {run}: removed the stale lock of pid {killed.pid} on host "
            f"{socket.gethostname()}") in log
    assert f"(pid {killed.pid} no longer runs)" in log
    assert f"resuming from step {step}:" in log
    assert complete_steps(run, ["0.9"])[0] == step + 1
    assert not (run / LOCK_NAME).exists()


def test_a_lock_from_another_host_needs_break_lock(videos, tmp_path, capsys):
    """A lock whose holder this host cannot check is refused (exit 2, one line naming its host
    and --break_lock True) and left alone; --break_lock True takes it over with a warning in the
    log and trains. Seen red with --break_lock not passed to the lock (still refused)."""
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({
        "what": "training run", "host": "elsewhere", "pid": 4242, "started": "earlier",
        "command": "video_train.py", "token": "0123abcd"}))
    with pytest.raises(SystemExit) as refused:
        main(_flags(videos, tmp_path, "--max_steps", 1))
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pid 4242 on host elsewhere" in err and \
        "--break_lock True" in err, err
    assert read_lock(tmp_path).token == "0123abcd"

    assert main(_flags(videos, tmp_path, "--max_steps", 1, "--break_lock", True)) == 0
    log = (tmp_path / "log.txt").read_text()
    assert "removed the stale lock of pid 4242 on host elsewhere" in log
    assert "(--break_lock True)" in log and not (tmp_path / LOCK_NAME).exists()


# A process that holds the training lock of argv[1] until its stdin closes.
HOLD_LOCK = textwrap.dedent("""
    import sys
    from ramvid.runlock import FolderLock

    with FolderLock(sys.argv[1], what="training run"):
        print("locked", flush=True)
        sys.stdin.read()
""")


@pytest.mark.slow
def test_every_rank_learns_that_the_log_dir_is_held(videos, tmp_path):
    """Under mpirun -n 2, a log dir held by another process ends both ranks with exit 2 and
    one line naming the holder (rank 0 takes the lock and tells the others). Seen red with the
    lock taken on rank 0 outside `dist.run_on_main` (rank 1 went on and failed with a
    traceback)."""
    holder = subprocess.Popen([PYTHON, "-c", HOLD_LOCK, str(tmp_path)], env=script_env(),
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        done = subprocess.run([MPIRUN, "-n", "2", PYTHON, TRAIN_SCRIPT,
                               *_flags(videos, tmp_path, "--max_steps", 1)], env=script_env(),
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        holder.communicate("")
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"is in use by pid {holder.pid} on host" in errors[0], \
        done.stderr[-3000:]
    assert not (tmp_path / "log.txt").exists()


# video_train.py whose rank RAISE_RANK raises in the step after step 2 (a crash of one rank).
CRASH_ON_ONE_RANK = textwrap.dedent("""
    import os, sys
    import ramvid.train.loop as loop
    from ramvid.train.command import main

    real_draw = loop.draw_step_inputs

    def draw(cfg, sampler, video, rank, step):
        if step == 2 and rank == int(os.environ["RAISE_RANK"]):
            raise RuntimeError("a crash in the middle of training")
        return real_draw(cfg, sampler, video, rank, step)

    loop.draw_step_inputs = draw
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_crash_of_rank_0_in_a_two_rank_job_gives_the_lock_back(videos, tmp_path):
    """Two ranks (torchrun's variables): rank 0 raises in step 3; the job is aborted (rank 0's
    exit code 1) and the lock file is gone, so the next start anywhere needs no --break_lock.
    Seen red with the lock given back after `dist.abort_on_failure` instead of inside it (the
    abort skipped the release and the lock file stayed)."""
    wrapper = tmp_path / "crash.py"
    wrapper.write_text(CRASH_ON_ONE_RANK)
    logdir, port = tmp_path / "run", _free_port()
    procs = [_popen([wrapper, *_flags(videos, logdir, "--max_steps", 5)],
                    script_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RAISE_RANK="0"))
             for rank in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert procs[0].returncode == 1, outs[0][1][-3000:]
    assert "a crash in the middle of training" in outs[0][1]
    assert read_lock(logdir) is None


# ----------------------------------------------------------------------------- unreadable sets
def _cut_short(path):
    path.write_bytes(path.read_bytes()[:200])


def _unreadable_by_eio(monkeypatch, path):
    real_load = torch.load

    def load(file, *args, **kwargs):
        if Path(file) == path:
            raise OSError(errno.EIO, "Input/output error")
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(ck.torch, "load", load)


@pytest.mark.parametrize("damage", ["eio", "truncated", "chmod"])
def test_an_unreadable_complete_checkpoint_stops_the_start_and_changes_nothing(
        videos, tmp_path, monkeypatch, capsys, damage):
    """A run keeping 2 checkpoints (steps 2 and 3) restarts over a complete set it cannot read:
    step 3's opt file raising EIO on every read (a network file system failing), both sets' model
    files cut short under their final names (nothing loads), or step 3's model file mode 000
    (skipped where the process may read it anyway, as root). The start retries, then exits 1 with one line naming the file and the error, and
    every file stays byte-identical. Seen red with unreadable sets skipped like interrupted ones:
    eio resumed from step 2 and cut progress.csv back; truncated restarted at step 1, emptied
    progress.csv and took the sets for its own first saves."""
    keep = ("--save_interval", 1, "--keep_checkpoints", 2)
    assert main(_flags(videos, tmp_path, "--max_steps", 3, *keep)) == 0
    monkeypatch.setattr(ck, "LOAD_BACKOFF_S", 0.0)
    bad = tmp_path / ("opt000003.pt" if damage == "eio" else "model000003.pt")
    if damage == "eio":
        _unreadable_by_eio(monkeypatch, bad)
    elif damage == "truncated":
        _cut_short(tmp_path / "model000002.pt"), _cut_short(bad)
    before, mode = _hashes(tmp_path), bad.stat().st_mode
    if damage == "chmod":
        bad.chmod(0)
        if os.access(bad, os.R_OK):
            pytest.skip("this process reads files of mode 000 (root)")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(_flags(videos, tmp_path, "--max_steps", 5, *keep))
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"video_train.py: error: cannot read checkpoint {bad} (3 attempts): ")
    assert "Nothing was changed" in err and "run the same command again" in err
    bad.chmod(mode)
    assert _hashes(tmp_path) == before and len(progress_rows(tmp_path)) == 3


def test_a_resume_loads_the_checkpoint_to_the_cpu(videos, tmp_path):
    """Rank 0 of a GPU run reads the checkpoint to the CPU and restoring copies it tensor by
    tensor, so no second copy of the model sits in GPU memory (the `meta` device stands in for
    the GPU). Seen red with the checkpoint loaded to the run's device."""
    assert main(_flags(videos, tmp_path, "--max_steps", 1)) == 0
    cfg, model_flags = parse_train_args(_flags(videos, tmp_path, "--max_steps", 2))
    with run_folder(cfg, model_flags, DistInfo(0, 1, 0, torch.device("meta"))) as start:
        ckpt = start.ckpt
    tensors = [*ckpt.model.values(), *ckpt.emas["0.9"].values(),
               *(s["exp_avg"] for s in ckpt.opt["optimizer"]["state"].values())]
    assert start.step == 1 and {t.device.type for t in tensors} == {"cpu"}


# ----------------------------------------------------------------------------- history
def _tensorboard_steps(logdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_a_resume_cuts_the_history_back_and_args_json_keeps_the_first_start(videos, tmp_path):
    """A run saves steps 2 and 3 with previews every step; step 3's save is cut short (no opt
    file), so the restart resumes from step 2 with --lr 2e-4 and runs to step 4, a third start
    to step 5. progress.csv, preview.csv and TensorBoard's loss hold each step once; args.json
    keeps the first start's flags and lists each restart's step and changed flags, the second
    restart's relative to the first's. Seen red without TensorBoard's purge_step (steps 1, 2, 3,
    3, 4), without cutting preview.csv (step 3 twice) and with args.json rewritten at every
    start (lr 2e-4, no "restarts")."""
    previews = ("--sample_interval", 1, "--val_data_dir", videos, "--save_interval", 2)
    assert main(_flags(videos, tmp_path, "--max_steps", 3, *previews)) == 0
    (tmp_path / "opt000003.pt").unlink()
    assert main(_flags(videos, tmp_path, "--max_steps", 4, "--lr", "2e-4", *previews)) == 0
    assert main(_flags(videos, tmp_path, "--max_steps", 5, "--lr", "2e-4", *previews)) == 0
    assert [r["step"] for r in progress_rows(tmp_path)] == ["1", "2", "3", "4", "5"]
    with open(tmp_path / "preview" / "preview.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["1", "2", "3", "4", "5"]
    assert _tensorboard_steps(tmp_path, "loss") == [1, 2, 3, 4, 5]
    assert _tensorboard_steps(tmp_path, "preview/val_loss") == [1, 2, 3, 4, 5]
    saved = json.loads((tmp_path / "args.json").read_text())
    assert saved["lr"] == 1e-4 and saved["max_steps"] == 3
    assert saved["restarts"] == [{"step": 2, "changed": {"lr": 2e-4, "max_steps": 4}},
                                 {"step": 4, "changed": {"max_steps": 5}}]
    assert "training flags changed since the resumed run: --max_steps 4 -> 5\n" in \
        (tmp_path / "log.txt").read_text()


# ----------------------------------------------------------------------------- Slurm jobs
def _srun(args_per_task, cwd=REPO, **extra):
    """Run video_train.py once per task with the variables srun sets for a one-node job step;
    returns [(process, stdout, stderr)] per rank."""
    port = _free_port()
    outside = {k: v for k, v in script_env(**extra).items() if not k.startswith("SLURM_")}
    procs = [_popen_in(cwd, [TRAIN_SCRIPT, *args], dict(
        outside, SLURM_JOB_ID="4242", SLURM_STEP_ID="0", SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank), SLURM_NTASKS=str(len(args_per_task)),
        SLURM_STEP_NODELIST="localhost", MASTER_PORT=str(port)))
        for rank, args in enumerate(args_per_task)]
    return [(p, *p.communicate(timeout=120)) for p in procs]


def _popen_in(cwd, args, env):
    return subprocess.Popen([PYTHON, *map(str, args)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_slurm_job_without_a_log_dir_exits_2_and_writes_nothing(videos, tmp_path):
    """Two srun tasks with neither --log_dir nor $OPENAI_LOGDIR: both exit 2, rank 0 with one
    line saying why, and nothing is written to the working directory or the temp folder. Seen
    red with a new temp folder per start (exit 0: every requeue of the job would start over)."""
    args = ["--data_dir", videos, *TINY, "--batch_size", 1, "--max_steps", 1]
    done = _srun([args, args], cwd=tmp_path, TMPDIR=str(tmp_path))
    assert [p.returncode for p, _, _ in done] == [2, 2], done[0][2][-3000:]
    assert done[0][2].startswith("video_train.py: error: --log_dir (or $OPENAI_LOGDIR) is "
                                 "required in Slurm job 4242: ") and done[0][2].count("\n") == 1
    assert done[1][2] == "" and list(tmp_path.iterdir()) == []


def test_one_process_without_a_log_dir_writes_below_runs(videos, tmp_path, monkeypatch, capsys):
    """One process on a workstation without --log_dir trains in runs/<date-time>-<pid> of the
    working directory and prints it; the same command in a Slurm batch script (SLURM_JOB_ID set,
    no srun) exits 2 with one line. Seen red with the temp-folder default (no runs/ folder; the
    batch script trained)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENAI_LOGDIR", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    args = ["--data_dir", str(videos), *TINY, "--batch_size", "2", "--max_steps", "1"]
    assert main(args) == 0
    [run] = (tmp_path / "runs").iterdir()
    assert re.fullmatch(rf"\d{{4}}(-\d\d){{5}}-{os.getpid()}", run.name)
    assert complete_steps(run, ["0.9999"]) == [1]
    assert f"logdir runs/{run.name};" in capsys.readouterr().out
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "required in Slurm job 77" in err
    assert list((tmp_path / "runs").iterdir()) == [run]


@pytest.mark.slow
def test_ranks_whose_data_folders_differ_by_one_file_exit_2_naming_it(videos, tmp_path):
    """Two srun tasks whose --data_dir copies differ by one file (per-node copies out of step):
    both exit 2 before the first step, naming both counts and the first differing file. Seen
    red with each rank sharding its own listing (exit 0 with overlapping shards)."""
    copy = tmp_path / "copy"
    shutil.copytree(videos, copy)
    shutil.copy(videos / "square_00001.mp4", copy / "circle_00009.mp4")
    done = _srun([_flags(data, tmp_path / "run", "--max_steps", 1) for data in (videos, copy)])
    assert [p.returncode for p, _, _ in done] == [2, 2], done[0][2][-3000:]
    for rank, (_, _, err) in enumerate(done):
        assert f"[rank {rank}] video_train.py: error: --data_dir " in err
        assert ("holds other videos on rank 1 (4) than on rank 0 (3); first difference in "
                "sorted order: circle_00009.mp4 on rank 1, square_00001.mp4 on rank 0") in err
    assert not checkpoint_files(tmp_path / "run")


# video_train.py whose rank 1, fetching the batch of step 4, receives SIGTERM and sees its data
# loader fail once (the launcher's signal killed a loader worker).
LOADER_FAILS_AFTER_STOP = textwrap.dedent("""
    import os, signal, sys
    from ramvid.data.clips import VideoLoader
    from ramvid.train.command import main

    real_next = VideoLoader.__next__

    def next_batch(self):
        if self.rank == 1 and self._consumed == 3 * self.batch_size and "FAILED" not in os.environ:
            os.environ["FAILED"] = "1"
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid 1234) is killed by signal: Terminated")
        return real_next(self)

    VideoLoader.__next__ = next_batch
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_a_loader_failure_after_a_stop_request_still_stops_every_rank_at_one_step(videos,
                                                                                  tmp_path):
    """Two ranks (torchrun's variables); rank 1 gets SIGTERM while fetching the batch of step 4
    and its loader fails once. Both ranks finish step 4, agree to stop, save it and exit 75;
    each rank's saved data position counts 4 batches. Seen red with the failing rank leaving
    the loop for the save's gather while rank 0 ran the step's gradient all-reduce (rank 1 timed
    out in the gather after --dist_timeout; both exited 1)."""
    wrapper = tmp_path / "loader_fails.py"
    wrapper.write_text(LOADER_FAILS_AFTER_STOP)
    logdir, port = tmp_path / "run", _free_port()
    procs = [_popen([wrapper, *_flags(videos, logdir, "--dist_timeout", 10)],
                    script_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for rank in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [EXIT_STOPPED] * 2, outs[0][1][-3000:]
    assert "received a stop signal (on another rank): finishing step 4" in outs[0][0]
    assert "stopped by signal after step 4" in outs[0][0]
    assert complete_steps(logdir, ["0.9"]) == [4]
    opt = load_checkpoint_file(logdir / "opt000004.pt")
    assert [r["data"]["items_consumed"] for r in opt["ranks"]] == [8, 8]
