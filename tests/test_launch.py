"""Launch detection on clusters: Slurm srun, torchrun under srun, an mpirun of another MPI, one
visible GPU per rank. Each launcher is simulated with 2 CPU processes (gloo) whose launcher
variables are set by the test, as srun/torchrun/mpirun would set them."""
import os
import random
import socket
import subprocess
import textwrap

import pytest
import torch

from ramvid import dist
from train_fixtures import PYTHON, REPO, free_port, launcher_env, write_script

# ----------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("nodelist,hosts", [
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("a[1-2],b3", ["a1", "a2", "b3"]),
    ("node-[001-003]", ["node-001", "node-002", "node-003"]),
    ("c[8-10]", ["c8", "c9", "c10"]),
    ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
    ("login7", ["login7"]),
    ("x1,y[2,5]", ["x1", "y2", "y5"]),
])
def test_expand_slurm_nodelist(nodelist, hosts):
    """Expected lists written from Slurm's hostlist syntax (scontrol show hostnames). Catches
    zero padding dropped, ranges cut at the bracket's commas, or splitting at commas inside
    brackets."""
    assert dist.expand_nodelist(nodelist) == hosts


SRUN = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "gpu[07-08]"}


@pytest.mark.parametrize("case,env,expected", [
    ("srun", SRUN, ("slurm", 1, 4, 1)),
    ("srun --mpi=pmix", {**SRUN, "PMIX_RANK": "1"}, ("slurm", 1, 4, 1)),
    ("srun --mpi=pmi2", {**SRUN, "PMI_RANK": "1", "PMI_SIZE": "4"}, ("slurm", 1, 4, 1)),
    ("srun torchrun", {**SRUN, "PMIX_RANK": "1", "PMI_RANK": "1", "OMPI_COMM_WORLD_RANK": "1",
                       "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                       "TORCHELASTIC_RUN_ID": "x"}, ("torchrun", 5, 8, 1)),
    ("mpirun in an allocation", {**SRUN, "SLURM_PROCID": "0", "PMI_RANK": "3", "PMI_SIZE": "4"},
     ("mpi", 3, 4, 0)),
    ("open mpi", {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "8"}, ("mpi", 2, 8, 0)),
    ("batch script, no srun", {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"},
     ("none", 0, 1, 0)),
    ("plain", {}, ("none", 0, 1, 0)),
])
def test_detect_launch(case, env, expected):
    """Which launcher started the process and its rank/world/local rank, for the variables each
    launcher documents. Catches torchrun losing to inherited PMI/Slurm variables, srun tasks
    all taken for rank 0 of 1, and an mpirun inside an allocation read as srun."""
    launch = dist.detect_launch(env)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == expected


def test_slurm_rendezvous_address():
    """Every task of a step derives the same host (first of the step's nodes) and port; steps
    of one job get different ports, all below Linux's ephemeral range (32768-60999, where the
    kernel picks the local ports of outgoing connections); MASTER_ADDR / MASTER_PORT win.
    Seen red with the port derived from the job id alone (every step of job 123456 on one port;
    job ids up to 35000 gave ports up to 34999)."""
    host, port = dist.slurm_rendezvous(SRUN)
    assert host == "gpu07" and dist.slurm_rendezvous({**SRUN, "SLURM_PROCID": "3"})[1] == port
    for job in (1, 123456, 9_999_999):
        ports = [dist.slurm_rendezvous({**SRUN, "SLURM_JOB_ID": str(job),
                                        "SLURM_STEP_ID": str(step)})[1] for step in range(100)]
        assert len(set(ports)) == 100 and all(1024 <= p < 32768 for p in ports), job
    job_only = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_NODELIST"}
    assert dist.slurm_rendezvous({**job_only, "SLURM_JOB_NODELIST": "a[3-4]"})[0] == "a3"
    assert dist.slurm_rendezvous({**SRUN, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "2222"}) == \
        ("10.0.0.1", 2222)


@pytest.mark.parametrize("visible,local_rank,expected", [(1, 3, "cuda:0"), (4, 5, "cuda:1"),
                                                         (8, 7, "cuda:7")])
def test_device_is_local_rank_modulo_visible_gpus(monkeypatch, visible, local_rank, expected):
    """With CUDA_VISIBLE_DEVICES set per rank (one GPU each) every rank must use cuda:0, not
    cuda:local_rank (which dies with 'invalid device ordinal' on ranks >= 1). CUDA is mocked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert dist.choose_device(local_rank) == torch.device(expected)
    assert dist.choose_device(local_rank, "cpu") == torch.device("cpu")


def test_no_cuda_means_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist.choose_device(3) == torch.device("cpu")


# ----------------------------------------------------------------------------- 2 processes
PROBE = textwrap.dedent("""
    import sys, torch
    from ramvid import dist
    from ramvid.flags import user_errors
    with user_errors():  # as every command: a launcher mismatch is one line, exit code 2
        info = dist.setup_dist(timeout_s=20)
    ranks = dist.all_gather_object((info.rank, info.local_rank))
    total = torch.tensor([info.rank + 1.0])
    if info.world_size > 1:
        torch.distributed.all_reduce(total)
    total = total.item()
    waited = dist.run_on_main(lambda: "rank 0 worked")
    sys.stdout.write(f"RESULT {info.rank} {info.world_size} {info.launcher} {ranks} {total} "
                     f"{waited} mpi4py={'mpi4py' in sys.modules}\\n")
    dist.cleanup()
""")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return write_script(tmp_path_factory.mktemp("launch"), PROBE)


def free_slurm_job(steps=1):
    """A Slurm job id whose rendezvous ports for step ids 0 .. steps-1 are free on this machine."""
    for job_id in random.Random(os.getpid()).sample(range(100_000), 50):
        try:
            for step in range(steps):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", dist.slurm_rendezvous(srun_env(0, 1, job_id, step))[1]))
        except OSError:
            continue
        return job_id
    pytest.skip("no free port in the Slurm port range")


def srun_env(rank, ntasks, job_id, step=0, **extra):
    """The variables `srun` sets for task `rank` of a step of `ntasks` tasks on this node."""
    return dict(SLURM_PROCID=str(rank), SLURM_NTASKS=str(ntasks), SLURM_LOCALID=str(rank),
                SLURM_STEP_ID=str(step), SLURM_JOB_ID=str(job_id),
                SLURM_STEP_NODELIST="localhost", **extra)


def _spawn(probe, envs, timeout=60):
    procs = [subprocess.Popen([PYTHON, probe], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for env in envs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append((proc.returncode, out, err))
    return results


def test_srun_two_tasks(probe):
    """srun (with --mpi=pmix) starting 2 tasks: both join one group of 2 without MPI, at the
    address derived from the first host of the node list and the job and step ids."""
    job_id = free_slurm_job()
    envs = [launcher_env(**srun_env(r, 2, job_id, PMIX_RANK=str(r))) for r in range(2)]
    results = _spawn(probe, envs)
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, err[-2000:]
        assert out.strip() == (f"RESULT {rank} 2 slurm [(0, 0), (1, 1)] 3.0 rank 0 worked "
                               f"mpi4py=False"), out + err[-2000:]


def test_two_srun_steps_of_one_job_on_one_node(probe):
    """A sweep, or training beside evaluation: two steps of one job, 2 tasks each, whose first
    node is the same, start together. Each step forms its own group of 2. Seen red with the
    port derived from the job id alone (the second step's rank 0 could not listen: "address
    already in use")."""
    job_id = free_slurm_job(steps=2)
    envs = [launcher_env(**srun_env(r, 2, job_id, step)) for step in range(2) for r in range(2)]
    results = _spawn(probe, envs)
    for (code, out, err), env in zip(results, envs):
        assert code == 0, err[-2000:]
        assert out.startswith(f"RESULT {env['SLURM_PROCID']} 2 slurm [(0, 0), (1, 1)] 3.0"), out


def test_torchrun_under_srun_uses_torchrun_variables(probe):
    """`srun torchrun --nproc_per_node 2`: the workers inherit srun's PMI/Slurm variables of a
    single task (rank 0 of 1); torchrun's RANK/WORLD_SIZE must win."""
    inherited = dict(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0", SLURM_STEP_ID="0",
                     SLURM_JOB_ID="77", SLURM_STEP_NODELIST="node[1-2]", PMIX_RANK="0",
                     PMI_RANK="0", PMI_SIZE="1")
    env = launcher_env(**inherited)
    result = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(free_port()), probe], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    assert lines == [f"RESULT {r} 2 torchrun [(0, 0), (1, 1)] 3.0 rank 0 worked mpi4py=False"
                     for r in range(2)], result.stdout


MPI_LAUNCHES = {  # what each mpirun sets in process r of 2
    "Open MPI": lambda r: dict(OMPI_COMM_WORLD_RANK=str(r), OMPI_COMM_WORLD_SIZE="2",
                               OMPI_COMM_WORLD_LOCAL_RANK=str(r)),
    "MVAPICH2": lambda r: dict(MV2_COMM_WORLD_RANK=str(r), MV2_COMM_WORLD_SIZE="2",
                               MV2_COMM_WORLD_LOCAL_RANK=str(r)),
    "Intel MPI, MPICH hydra": lambda r: dict(PMI_RANK=str(r), PMI_SIZE="2",
                                             MPI_LOCALRANKID=str(r)),
}


@pytest.mark.parametrize("mpi", MPI_LAUNCHES)
def test_mpirun_of_another_mpi_exits_2_with_the_fix(probe, mpi):
    """Another MPI's mpirun starting 2 copies while mpi4py is built on the venv's MPICH: each
    copy comes up as an MPI singleton. Instead of 2 one-process jobs (same data, same seed, one
    folder), every copy exits 2 at start-up and rank 0 prints one line naming the variable and
    the fix. Seen red for MVAPICH2 before its variables were known (2 copies of rank 0 of 1)."""
    results = _spawn(probe, [launcher_env(**MPI_LAUNCHES[mpi](r)) for r in range(2)])
    assert [code for code, _, _ in results] == [2, 2], results
    assert not any("RESULT" in out for _, out, _ in results)
    err0, err1 = results[0][2], results[1][2]
    assert err0.count("\n") == 1 and "Traceback" not in err0, err0
    size_var = next(k for k in MPI_LAUNCHES[mpi](0) if k.endswith("SIZE"))
    assert f"{size_var}=2" in err0 and "--no-binary mpi4py" in err0 and "mpirun" in err0
    assert err1 == ""


def test_pmix_variables_with_the_venvs_mpich_never_run_copies_of_rank_0(probe):
    """A PMIx launcher (PMIX_RANK, no size variable) with mpi4py on the venv's MPICH: MPICH
    refuses to start ("launcher not compatible with PMI1 client"), so no copy runs as a
    one-process job. (An mpi4py rebuilt on the cluster's PMIx MPI sees all ranks.) Seen red
    with PMIX_RANK not among the MPI variables (both copies ran as rank 0 of 1)."""
    results = _spawn(probe, [launcher_env(PMIX_RANK=str(r)) for r in range(2)])
    assert all(code != 0 and "RESULT" not in out for code, out, _ in results), results
