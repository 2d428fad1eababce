"""Distributed set-up for one process per device, launched by `mpirun`, `torchrun` or plain python.

    info = setup_dist()            # DistInfo(rank, world_size, local_rank, device, launcher)
    run_or_abort(main, info)       # an exception in any rank ends the whole job, never a hang
    cleanup()

Under `mpirun -n N`, rank and world size come from MPI, the local rank from the ranks that
share a node (`Split_type(COMM_TYPE_SHARED)`), and rank 0 picks the rendezvous address (its
own host) and a free port and broadcasts both over MPI, so nothing about the cluster is
hard-coded ($MASTER_ADDR / $MASTER_PORT override the choice when set). Under `torchrun` the
usual RANK/WORLD_SIZE/LOCAL_RANK variables are read. A plain `python` run is one process without a process group; mpi4py is imported only when an MPI
launcher set its variables, so it is never needed otherwise.

Every collective has a timeout (`timeout_s`, default 10 minutes): when one rank dies or stalls
the others fail in bounded time instead of waiting forever.
"""
import datetime
import os
import socket
import sys
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0
# Variables that MPI launchers (MPICH/Hydra, Intel MPI, Open MPI, PMIx) set in every rank.
MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")
MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")

_launcher = "none"  # how this process was started: none | mpi | torchrun


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    launcher: str = "none"  # none | mpi | torchrun

    @property
    def is_main(self):
        return self.rank == 0


def launched_by_mpi():
    return any(v in os.environ for v in MPI_RANK_VARS)


def launched_by_torchrun():
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and not launched_by_mpi()


def env_rank():
    """This process's rank as the launcher's environment says, without importing MPI (0 if none).

    For deciding who prints before the process group exists (e.g. flag errors)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _host_address(single_node):
    """An address of this host that the other nodes can reach ($MASTER_ADDR wins if set)."""
    if os.environ.get("MASTER_ADDR"):
        return os.environ["MASTER_ADDR"]
    if single_node:
        return "127.0.0.1"
    hostname = socket.gethostname()
    try:
        address = socket.gethostbyname(hostname)
    except OSError:
        address = None
    if address is None or address.startswith("127."):
        # Many systems map the hostname to a loopback address; ask the routing table for the
        # address of the outgoing interface instead (a UDP connect sends nothing).
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("10.255.255.255", 1))
                address = s.getsockname()[0]
        except OSError:
            address = hostname
    return address


def _mpi_rendezvous():
    """(rank, world_size, local_rank, init_method) from MPI; rank 0 chooses address and port."""
    from mpi4py import MPI  # only under an MPI launcher

    comm = MPI.COMM_WORLD
    rank, world_size = comm.Get_rank(), comm.Get_size()
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, node_size = node_comm.Get_rank(), node_comm.Get_size()
    node_comm.Free()
    if rank == 0:
        port = int(os.environ.get("MASTER_PORT") or _free_port())
        address = (_host_address(single_node=node_size == world_size), port)
    else:
        address = None
    host, port = comm.bcast(address, root=0)
    return rank, world_size, local_rank, f"tcp://{host}:{port}"


def setup_dist(backend=None, timeout_s=DEFAULT_TIMEOUT_S, device=None):
    """Join the job's process group (if there is more than one process) and pick the device.

    backend: None -> "nccl" on CUDA, "gloo" on CPU. device: None -> cuda:local_rank when CUDA
    is available, else cpu; pass "cpu" to force CPU on a GPU machine.
    """
    global _launcher
    if launched_by_mpi():
        _launcher = "mpi"
        rank, world_size, local_rank, init_method = _mpi_rendezvous()
    elif launched_by_torchrun():
        _launcher = "torchrun"
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        init_method = "env://"
    else:
        _launcher = "none"
        rank, world_size, local_rank, init_method = 0, 1, 0, None

    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)

    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        kwargs = dict(backend=backend, init_method=init_method, rank=rank, world_size=world_size,
                      timeout=datetime.timedelta(seconds=timeout_s))
        if backend == "nccl":
            kwargs["device_id"] = device  # binds the communicator to this rank's GPU eagerly
        dist.init_process_group(**kwargs)
    return DistInfo(rank, world_size, local_rank, device, _launcher)


def get_rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main():
    return get_rank() == 0


def barrier():
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...]; a one-element list without a process group."""
    if get_world_size() == 1:
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src=0):
    """`obj` of rank `src`, returned on every rank (every rank must call this)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_tensor(tensor):
    """Concatenate every rank's tensor along dim 0 (all ranks must pass the same shape)."""
    if get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(tensor):
    """Mean of `tensor` over ranks (in place on a copy)."""
    if get_world_size() == 1:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out)
    return out / get_world_size()


def abort_job(exit_code=1):
    """End every rank of the job now. Under MPI: MPI_Abort; otherwise exit this process hard
    (the launcher, or the peers' collective timeouts, end the rest)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _launcher == "mpi":
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(exit_code)
    os._exit(exit_code)


def run_or_abort(fn, *args, **kwargs):
    """Call fn; if it raises in a multi-process job, print the traceback with the rank and
    abort the whole job so no rank waits forever in a collective. A single process re-raises.

    A `SystemExit` with code 0 (a clean stop) passes through untouched.
    """
    try:
        return fn(*args, **kwargs)
    except SystemExit as e:
        if e.code in (0, None) or (get_world_size() == 1 and _launcher == "none"):
            raise
        sys.stderr.write(f"[rank {get_rank()}] exiting with code {e.code}; aborting the job\n")
        abort_job(e.code if isinstance(e.code, int) else 1)
    except BaseException:
        if get_world_size() == 1 and _launcher == "none":
            raise
        sys.stderr.write(f"[rank {get_rank()}] failed; aborting the job:\n{traceback.format_exc()}")
        abort_job(1)


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
