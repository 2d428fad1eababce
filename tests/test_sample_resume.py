"""video_sample.py survives preemption and never overwrites: a run killed with SIGKILL and
rerun with the same command ends with the npz of an uninterrupted run, byte for byte; runs
with other settings get their own folders; a finished run is only replaced on request."""
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from sample_fixtures import (REPO, load_npz, load_script, make_checkpoint, make_videos,
                             mpirun_script, run_script, runs_as, script_command)

pytestmark = pytest.mark.usefixtures("one_thread")

NUM = 6
ARGS = ["--cond_frames", "0,1,", "--save_gt", "True", "--num_samples", NUM, "--batch_size", 1,
        "--chunk_size", 2, "--timestep_respacing", 12, "--save_video", "none",
        "--progress", "False"]


_argv0 = runs_as("video_sample")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {"ckpt": make_checkpoint(root / "run"), "data": make_videos(root / "data")}


def _argv(setup, *extra):
    return ["--model_path", setup["ckpt"], "--data_dir", setup["data"], *ARGS, *extra]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(setup, tmp_path, monkeypatch):
    """Catches chunks that are not reused (the rerun prints no 'already finished'), a chunk
    file written half (np.load fails or samples differ), leftovers of a killed write that stop
    the final join or stay in the folder (seen red with the folder's clean-up left out of
    ChunkStore.assemble), batches that depend on where the run resumed, and npz bytes that
    depend on the time of writing."""
    whole = run_script("video_sample", _argv(setup), tmp_path / "whole", monkeypatch)

    killed = tmp_path / "killed"
    command = script_command("video_sample", _argv(setup, "--out_dir", killed))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    chunk = killed / "chunks" / "chunk_0000.npz"
    deadline = time.monotonic() + 120
    while not chunk.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert chunk.exists() and not list(killed.glob("*.npz"))
    # What a kill in the middle of a chunk write or of the final join leaves (whether or not
    # this one did).
    (killed / "chunks" / ".chunk_0001.npz.99999.tmp").write_bytes(b"PK\x03\x04 half")
    (killed / ".6x6x16x16x3.npz.99999.tmp").write_bytes(b"PK\x03\x04 half")

    assert (killed / ".ramvid.lock").exists()  # a SIGKILL runs no clean-up
    rerun = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "already finished" in rerun.stdout
    assert f"removed the stale lock of pid {process.pid}" in rerun.stderr
    assert not (killed / ".ramvid.lock").exists()
    for name in ("6x6x16x16x3.npz", "gt_6x6x16x16x3.npz"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert not (killed / "chunks").exists()
    assert not list(killed.glob(".*.npz"))


def test_a_second_run_into_the_same_folder_exits_2_and_the_first_finishes_unharmed(
        setup, tmp_path, monkeypatch):
    """The same command started twice into one folder (a requeued job whose first incarnation
    still runs): the second exits 2 with one line naming the first's pid while the first is
    still sampling, and the first ends with the bytes of a run alone. Seen red with the lock
    left out of sample_to_folder (the second sampled too and one of them crashed or
    overwrote)."""
    # Few samples, many steps: long enough for the second to start meanwhile.
    slow = ["--num_samples", 2, "--timestep_respacing", 50]
    whole = run_script("video_sample", _argv(setup, *slow), tmp_path / "whole", monkeypatch)
    folder = tmp_path / "twice"
    command = script_command("video_sample", _argv(setup, *slow, "--out_dir", folder))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (folder / ".ramvid.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=240)
    still_sampling = first.poll() is None
    first.wait(timeout=240)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"in use by pid {first.pid} on host" in second.stderr and still_sampling
    assert first.returncode == 0, first.stdout.read()[-2000:]
    for name in ("2x6x16x16x3.npz", "gt_2x6x16x16x3.npz"):
        assert (folder / name).read_bytes() == (whole / name).read_bytes(), name
    assert not (folder / ".ramvid.lock").exists()


def _error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("video_sample").main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_runs_with_other_given_frames_keep_both_results(setup, tmp_path, monkeypatch, capsys):
    """Catches run folders named by shape only (the second run would overwrite the first or,
    with this check, be refused)."""
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path))
    common = ["--model_path", setup["ckpt"], "--data_dir", setup["data"], "--num_samples", 2,
              "--timestep_respacing", 2, "--save_video", "none", "--progress", "False"]
    main = load_script("video_sample").main
    main([str(a) for a in common + ["--cond_frames", "0,"]])
    main([str(a) for a in common + ["--cond_frames", "0,1,"]])
    main([str(a) for a in common + ["--cond_frames", "0,5,"]])
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["infill_c0-5_2x6_ddpm2_seed0_ema_0.9999_000010",
                       "predict_c0-1_2x6_ddpm2_seed0_ema_0.9999_000010",
                       "predict_c0_2x6_ddpm2_seed0_ema_0.9999_000010"]
    for folder in folders:
        assert load_npz(tmp_path / folder / "2x6x16x16x3.npz")["arr_0"].shape == (2, 6, 16, 16, 3)
    records = [(tmp_path / f / "sample_args.json").read_text() for f in folders]
    assert '"cond_frames": [\n    0,\n    5\n  ]' in records[0]

    before = (tmp_path / folders[1] / "2x6x16x16x3.npz").read_bytes()
    err = _error(common + ["--cond_frames", "0,1,"], capsys)
    assert "2x6x16x16x3.npz exists (a finished run); pass --overwrite True" in err
    assert (tmp_path / folders[1] / "2x6x16x16x3.npz").read_bytes() == before
    main([str(a) for a in common + ["--cond_frames", "0,1,", "--overwrite", "True"]])
    assert load_npz(tmp_path / folders[1] / "2x6x16x16x3.npz")["arr_0"].shape == (2, 6, 16, 16, 3)


def test_unfinished_run_with_other_settings_is_refused(setup, tmp_path, capsys):
    """Catches a resume that mixes chunks sampled with other settings into one npz."""
    chunks = tmp_path / "chunks"
    chunks.mkdir(parents=True)
    argv = _argv(setup, "--out_dir", tmp_path)
    # An unfinished run: its record and a chunk, sampled with guidance 1.
    (tmp_path / "sample_args.json").write_text('{"cond_frames": [0, 1], "guidance_scale": 1.0}')
    np.savez(chunks / "chunk_0000.npz", np.zeros((2, 6, 16, 16, 3), np.uint8))
    err = _error(argv, capsys)
    assert f"{tmp_path} holds a run with" in err and "pass --out_dir for a new folder" in err
    assert (chunks / "chunk_0000.npz").exists()


def test_finished_run_under_mpirun_is_one_line_exit_2(setup, tmp_path, monkeypatch):
    """Catches a user mistake raised inside the ranks' job (traceback and MPI_Abort, exit 1)."""
    argv = ["--model_path", setup["ckpt"], "--cond_generation", "False", "--num_samples", 2,
            "--timestep_respacing", 1, "--save_video", "none", "--progress", "False"]
    run_script("video_sample", argv, tmp_path, monkeypatch)
    done = mpirun_script("video_sample", argv, tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "exists (a finished run)" in lines[0], done.stderr
