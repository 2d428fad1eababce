"""Distributed set-up under plain python, mpirun and torchrun; failing ranks end the job."""
import re
import subprocess
import textwrap
import time

import pytest

from ramvid.checkpoint import load_checkpoint_file, load_latest_checkpoint
from train_fixtures import (MPIRUN, PYTHON, REPO, TINY, free_port, make_videos, progress_rows,
                            run_train, script_env, write_script)

def resume_step(folder, rates):
    """The step `--resume_checkpoint auto` would continue from (newest complete, loadable set)."""
    ckpt = load_latest_checkpoint(folder, rates)
    return None if ckpt is None else ckpt.step


pytestmark = pytest.mark.slow

PROBE = textwrap.dedent("""
    import sys, time, torch
    from ramvid import dist
    mode = sys.argv[1]
    info = dist.setup_dist(timeout_s=3)

    def body():
        if mode == "probe":
            ranks = dist.all_gather_object((info.rank, info.local_rank))
            total = torch.tensor([info.rank + 1.0])
            if info.world_size > 1:
                torch.distributed.all_reduce(total)
            total = total.item()
            shared = dist.run_on_main(lambda: f"from rank {info.rank}")
            # One write per line: with PYTHONUNBUFFERED, print() writes text and newline apart
            # and two ranks' lines could interleave.
            sys.stdout.write(f"RESULT {info.rank} {info.world_size} {info.launcher} {ranks} "
                             f"{total} {shared} {'mpi4py' in sys.modules}\\n")
            sys.stdout.flush()
        elif mode == "raise":
            if info.rank == 1:
                raise RuntimeError("rank 1 broke")
            dist.barrier()  # rank 0 waits for a rank that will never come
        elif mode == "hang":
            if info.rank == 1:
                time.sleep(600)  # alive but stuck: only the collective timeout can end this
            dist.all_gather_object(0)

    with dist.abort_on_failure():
        body()
    dist.cleanup()
""")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return write_script(tmp_path_factory.mktemp("dist"), PROBE)


def _run(cmd, timeout=60):
    start = time.time()
    result = subprocess.run(cmd, env=script_env(), capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    return result, time.time() - start


def _results(stdout):
    return sorted(line.split()[1:] for line in _result_lines(stdout))


def _result_lines(stdout):
    return re.findall(r"RESULT [^\n]*?(?=RESULT|\n|$)", stdout)


def test_plain_python_needs_no_mpi(probe):
    result, _ = _run([PYTHON, probe, "probe"])
    assert result.returncode == 0, result.stderr
    (rank, world, launcher, *_, mpi_imported), = _results(result.stdout)
    assert (rank, world, launcher, mpi_imported) == ("0", "1", "none", "False")


def test_mpirun_ranks_local_ranks_and_collectives(probe):
    result, _ = _run([MPIRUN, "-n", "2", PYTHON, probe, "probe"])
    assert result.returncode == 0, result.stderr
    lines = _result_lines(result.stdout)
    assert len(lines) == 2, result.stdout
    for line in lines:
        assert " 2 mpi [(0, 0), (1, 1)] 3.0 from rank 0 True" in line


def test_torchrun(probe):
    result, _ = _run([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                      "--master_port", str(free_port()), probe, "probe"])
    assert result.returncode == 0, result.stderr
    lines = _result_lines(result.stdout)
    assert len(lines) == 2 and all(" 2 torchrun [(0, 0), (1, 1)] 3.0 from rank 0 False" in l
                                   for l in lines)


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_a_failing_rank_ends_the_whole_job(probe, mode):
    result, seconds = _run([MPIRUN, "-n", "2", PYTHON, probe, mode], timeout=90)
    assert result.returncode != 0
    assert seconds < 45, f"the job took {seconds:.0f} s to end"
    failed = "[rank 1] failed" if mode == "raise" else "[rank 0] failed"
    assert failed in result.stderr, result.stderr[-3000:]


def test_mpirun_training_writes_checkpoints_and_resumes(tmp_path):
    videos = make_videos(tmp_path / "videos", num_mp4=4)  # + .avi, .gif and a broken .mp4
    first, second = tmp_path / "first", tmp_path / "second"
    flags = ["--data_dir", videos, *TINY, "--batch_size", "2", "--save_interval", "4",
             "--log_interval", "2"]
    result = run_train([*flags, "--max_steps", "4"], logdir=first, mpi_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping video" in result.stdout + result.stderr
    assert "broken_00.mp4" in result.stdout + result.stderr
    assert resume_step(first, ["0.9999"]) == 4
    assert [r["step"] for r in progress_rows(first)] == ["2", "4"]
    assert '"world_size": 2' in (first / "args.json").read_text()

    result = run_train([*flags, "--max_steps", "6", "--resume_checkpoint",
                        first / "model000004.pt"], logdir=second, mpi_ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and "(step 4)" in result.stdout
    assert resume_step(second, ["0.9999"]) == 6
    opt = load_checkpoint_file(second / "opt000006.pt")
    assert opt["step"] == 6 and opt["world_size"] == 2 and len(opt["ranks"]) == 2
    # Each rank kept its own data position: 6 steps x 2 videos.
    assert [r["data"]["items_consumed"] for r in opt["ranks"]] == [12, 12]
    assert [r["data"]["rank"] for r in opt["ranks"]] == [0, 1]
