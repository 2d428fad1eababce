"""A cluster as its users meet it, simulated with real processes on the CPU (gloo): srun's tasks
(plain python processes with srun's variables), torchrun itself and the venv's mpirun; a rank
that fails; stop signals from Slurm (`--signal=USR1@300`, preemption) and their repeats."""
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

from ramvid import dist
from ramvid.checkpoint import complete_steps, load_latest_checkpoint
from ramvid.train.command import main as train_main
from ramvid.train.loop import EXIT_STOPPED
from sample_fixtures import make_checkpoint
from test_launch import free_slurm_job, srun_env
from train_fixtures import (MPIRUN, PYTHON, REPO, TINY, TRAIN_SCRIPT, free_port, launcher_env,
                            make_videos, progress_rows, write_script)

pytestmark = pytest.mark.slow

# What docs/TRAINING.md tells torchrun users to add: SIGUSR1 (Slurm's --signal) handled and
# forwarded to the workers instead of killing torchrun, and time for the last checkpoint.
TORCHRUN_STOP_FLAGS = ["--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                       "--shutdown-timeout", "300"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_videos(tmp_path_factory.mktemp("videos"), num_mp4=4, extras=False)


def _flags(videos, logdir, *extra):
    return ["--data_dir", str(videos), *TINY, "--batch_size", "1", "--log_interval", "1",
            "--ema_rate", "0.9", "--log_dir", str(logdir), *map(str, extra)]


def _start(args, env):
    return subprocess.Popen([PYTHON, *map(str, args)], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(procs, timeout=90):
    """[(exit code, stdout, stderr)] of each process; all are killed if one outlives `timeout`."""
    deadline, results = time.time() + timeout, []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
            results.append((proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s; the others ended: {results}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


# ----------------------------------------------------------------------------- flags, not data
def test_a_dry_run_needs_no_data_but_a_run_does(tmp_path, capsys, monkeypatch):
    """`--preset kinetics600 --dry_run` prints the configuration although --data_dir does not
    exist here (it may be a cluster's path); without --dry_run the same command stops with one
    line naming --data_dir and creates nothing. Seen red with the folder checked as a flag
    (the dry run exited 2)."""
    monkeypatch.setattr("sys.argv", ["video_train.py"])
    argv = ["--data_dir", str(tmp_path / "kinetics600" / "train"), "--preset", "kinetics600",
            "--log_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as dry:
        train_main([*argv, "--dry_run"])
    assert dry.value.code == 0 and '"seq_len": 16' in capsys.readouterr().out
    with pytest.raises(SystemExit) as run:
        train_main(argv)
    assert run.value.code == 2 and capsys.readouterr().err == (
        f"video_train.py: error: --data_dir '{tmp_path}/kinetics600/train': is not an existing "
        "directory\n")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- a failing rank
FAIL = textwrap.dedent("""
    import sys, time
    from ramvid import dist

    mode = sys.argv[1]
    with dist.process_group(timeout_s=300) as info:
        if info.rank == 1:
            time.sleep(1)
            raise RuntimeError("rank 1 broke")
        if mode == "busy":  # rank 0 samples a long batch: a step every 50 ms for 2 minutes
            for _ in range(2400):
                time.sleep(0.05)
        dist.barrier()  # where rank 0 would next meet rank 1
    print("rank 0 finished")
""")


@pytest.mark.parametrize("launcher,mode", [("srun", "busy"), ("srun", "collective"),
                                           ("torchrun", "busy"), ("mpirun", "busy")])
def test_a_failing_rank_ends_the_job_within_seconds(tmp_path, launcher, mode):
    """Rank 1 raises while rank 0 is busy (a long batch) or waits in a collective (timeout 5
    minutes). Under every launcher the job ends within 40 s; rank 1's traceback is printed once
    with its rank, and under srun rank 0 says why it ends. Seen red under srun before the
    watchdog (rank 0 sampled on for 2 minutes; in a collective it printed only gloo's
    "Connection closed by peer" traceback)."""
    probe = write_script(tmp_path, FAIL)
    start = time.time()
    if launcher == "srun":
        job = free_slurm_job()
        results = _finish([_start([probe, mode], launcher_env(**srun_env(r, 2, job)))
                           for r in range(2)], timeout=60)
        (code0, out0, err0), (code1, _, err1) = results
        assert code0 == code1 == 1, results
        assert err0 == "[rank 0] ending: rank 1 failed\n" and "rank 0 finished" not in out0, err0
    else:
        cmd = [MPIRUN, "-n", "2", PYTHON] if launcher == "mpirun" else \
            [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
             str(free_port())]
        (code, _, err1), = _finish([subprocess.Popen(
            [*cmd, probe, mode], env=launcher_env(), cwd=REPO, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)], timeout=60)
        assert code != 0
    assert time.time() - start < 40, f"the job took {time.time() - start:.0f} s"
    assert err1.count("[rank 1] failed:") == 1 and "RuntimeError: rank 1 broke" in err1, err1


# ----------------------------------------------------------------------------- start-up errors
FAIL_TO_LOAD = textwrap.dedent("""
    import os, sys
    import ramvid.train.rundir as rundir
    from ramvid.checkpoint import CheckpointError
    from ramvid.errors import UsageError
    from ramvid.train.command import main

    real_load = rundir.load_training_checkpoint

    def load(*args, **kwargs):  # the opt file the ranks above 0 read
        if os.environ["SLURM_PROCID"] == "1":
            raise {"checkpoint": CheckpointError, "usage": UsageError}[os.environ["FAIL"]](
                "opt000002.pt cannot be read here")
        return real_load(*args, **kwargs)

    rundir.load_training_checkpoint = load
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def run_at_step_2(videos, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("step2") / "run"
    assert train_main(_flags(videos, logdir, "--max_steps", 2, "--save_interval", 2)) == 0
    return logdir


@pytest.mark.parametrize("error,code", [("checkpoint", 1), ("usage", 2)])
def test_an_error_of_rank_1_at_start_up_is_printed_by_rank_1(videos, run_at_step_2, tmp_path,
                                                              error, code):
    """Two srun tasks resume a run; rank 1 cannot read its part of the checkpoint. Rank 1 prints
    one line with its rank, rank 0 says that rank 1 failed, both exit with rank 1's code. Seen
    red before: a UsageError of rank 1 was printed by nobody, and rank 0 printed only gloo's
    "Connection closed by peer" traceback."""
    logdir = tmp_path / "run"
    shutil.copytree(run_at_step_2, logdir)
    wrapper = write_script(tmp_path, FAIL_TO_LOAD)
    job = free_slurm_job()
    results = _finish([_start([wrapper, *_flags(videos, logdir, "--max_steps", 4)],
                              launcher_env(**srun_env(r, 2, job), FAIL=error))
                       for r in range(2)])
    (code0, _, err0), (code1, _, err1) = results
    assert (code0, code1) == (code, code), results
    assert err1 == "[rank 1] probe.py: error: opt000002.pt cannot be read here\n", err1
    assert err0 == "[rank 0] ending: rank 1 failed\n", err0


# ----------------------------------------------------------------------------- sampling
FAIL_TO_PREPARE = textwrap.dedent("""
    import os, sys
    import ramvid.sample.run as run
    from ramvid.errors import UsageError
    from ramvid.sample.command import sample_main

    def prepare_folder(*args, **kwargs):  # rank 0's look at the run folder
        raise {"os": OSError, "usage": UsageError}[os.environ["FAIL"]]("the folder went away")

    run.prepare_folder = prepare_folder
    sample_main(sys.argv[1:])
""")


@pytest.mark.parametrize("error,code", [("os", 1), ("usage", 2)])
def test_sampling_ends_every_rank_when_rank_0_cannot_prepare_the_folder(tmp_path, error, code):
    """Two srun tasks sample; rank 0's preparation of the run folder (under its lock, before
    any sampling) fails. Both ranks end at once with the same exit code and rank 0 alone
    reports it: its traceback for an OSError, one line for a user mistake. Seen red for the
    OSError with the preparation outside the abort handling (rank 1 printed gloo's
    "Connection closed by peer" traceback: on GPUs it would have waited 6 hours)."""
    ckpt = make_checkpoint(tmp_path / "ckpt")
    wrapper = write_script(tmp_path, FAIL_TO_PREPARE)
    argv = ["--model_path", ckpt, "--cond_generation", "False", "--num_samples", 2,
            "--timestep_respacing", 1, "--save_video", "none", "--progress", "False",
            "--out_dir", tmp_path / "samples"]
    job = free_slurm_job()
    start = time.time()
    (code0, _, err0), (code1, out1, err1) = _finish(
        [_start([wrapper, *argv], launcher_env(**srun_env(r, 2, job), FAIL=error))
         for r in range(2)])
    assert (code0, code1) == (code, code) and time.time() - start < 60, err0 + err1
    assert "the folder went away" in err0 and (err1, out1) == ("", "")
    assert ("Traceback" in err0) == (error == "os"), err0


# ----------------------------------------------------------------------------- stop signals
# video_train.py that receives SIGTERM once more while it leaves the process group: a repeat
# from Slurm or the launcher that comes after the checkpoint.
TERM_AT_CLEANUP = textwrap.dedent("""
    import os, signal, sys, time
    from ramvid import dist
    from ramvid.train.command import main

    real_cleanup = dist.cleanup

    def cleanup():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        real_cleanup()

    dist.cleanup = cleanup
    sys.exit(main(sys.argv[1:]))
""")


def _wait_until_listening(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"rank 0 never listened on {port} (exit code {proc.poll()})")


def test_srun_stop_signals_from_rendezvous_to_exit_then_requeue(videos, tmp_path):
    """The Slurm recipe of docs/TRAINING.md: srun starts one task per rank. SIGUSR1
    (--signal=USR1@300) reaches rank 0 while it waits for rank 1 at the rendezvous, and SIGTERM
    arrives again as each task leaves its process group. Both tasks stop after step 1 with
    its complete checkpoint and exit 75 (srun's code: the requeue), and rerunning the same
    command continues from step 1. Seen red with the stop handlers installed after the
    rendezvous (SIGUSR1 killed rank 0) and restored before leaving the process group (the
    repeated SIGTERM gave exit code 143)."""
    logdir = tmp_path / "run"
    wrapper = write_script(tmp_path, TERM_AT_CLEANUP)
    job = free_slurm_job()
    args = [wrapper, *_flags(videos, logdir, "--max_steps", 3)]
    rank0 = _start(args, launcher_env(**srun_env(0, 2, job)))
    _wait_until_listening(dist.slurm_rendezvous(srun_env(0, 2, job))[1], rank0)
    rank0.send_signal(signal.SIGUSR1)
    results = _finish([rank0, _start(args, launcher_env(**srun_env(1, 2, job)))])
    assert [code for code, _, _ in results] == [EXIT_STOPPED] * 2, results
    assert "stopped by signal after step 1" in results[0][1]
    assert complete_steps(logdir, ["0.9"]) == [1]

    results = _finish([_start(args, launcher_env(**srun_env(r, 2, job))) for r in range(2)])
    assert [code for code, _, _ in results] == [0, 0], results
    log = (logdir / "log.txt").read_text()
    assert "resuming from step 1" in log and complete_steps(logdir, ["0.9"])[0] == 3


def _children(pid):
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_torchrun_with_the_documented_flags_stops_with_a_checkpoint(videos, tmp_path, sig):
    """torchrun with TORCHRUN_STOP_FLAGS gets SIGUSR1 (Slurm's --signal) or SIGTERM: it forwards
    the signal, the workers finish their step, write its complete checkpoint (the one
    `--resume_checkpoint auto` takes) and exit 75, and torchrun exits 1, as it does after any
    signal whatever its workers return (so a requeue script under Slurm starts the ranks with
    srun instead). Seen red for SIGUSR1 without the flags: the signal killed torchrun and its
    workers trained on, orphaned, with no checkpoint of the step."""
    logdir = tmp_path / "run"
    torchrun = subprocess.Popen(
        [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(free_port()), *TORCHRUN_STOP_FLAGS, TRAIN_SCRIPT,
         *_flags(videos, logdir, "--max_steps", 40, "--save_interval", 1000)],
        env=launcher_env(), cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers = []
    try:
        deadline = time.time() + 90
        while len(progress_rows(logdir)) < 2 and time.time() < deadline and \
                torchrun.poll() is None:
            workers = workers or _children(torchrun.pid)
            time.sleep(0.05)
        torchrun.send_signal(sig)
        (code, out, err), = _finish([torchrun], timeout=120)
    finally:
        for pid in workers:  # the workers of a torchrun that died
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert code == 1, err[-3000:]
    log = (logdir / "log.txt").read_text()
    stop = int(re.search(r"stopped by signal after step (\d+); exit code 75", log).group(1))
    assert load_latest_checkpoint(logdir, ["0.9"]).step == stop
