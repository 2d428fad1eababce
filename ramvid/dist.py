"""Distributed set-up for one process per device, launched by `srun`, `mpirun`, `torchrun` or
plain python (docs/TRAINING.md#launching: which variables win, the rendezvous address):

    with process_group() as info:  # DistInfo(rank, world_size, local_rank, device, launcher)
        main(info)  # an exception in any rank ends the whole job, never a hang

An mpirun of another MPI than mpi4py's (N processes, each an MPI singleton) is a one-line error
naming the fix, not N one-process jobs writing into one folder. An error on one rank ends every
rank within seconds (`abort_on_failure`): the failing rank sets a key in the rendezvous store that
a watchdog thread on every rank waits for. Every collective also has a timeout, for a rank that
dies without a word or stalls.
"""
import datetime
import itertools
import os
import pickle
import re
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import UsageError

DEFAULT_TIMEOUT_S = 600.0
# How long the other ranks wait while rank 0 alone reads or writes a checkpoint.
MAIN_WORK_TIMEOUT_S = 2 * 3600.0
# Slurm: the rendezvous port is PORT_BASE + (1000 job id + step id) % PORT_RANGE, below Linux's
# ephemeral ports (32768-60999, where outgoing connections take theirs); the range is prime.
SLURM_PORT_BASE, SLURM_PORT_RANGE = 15000, 17761
# The rendezvous store key that rank r's watchdog waits for: "<failed rank> <exit code>" when
# another rank ends the job, "done" when rank r leaves the process group.
STOP_KEY = "ramvid_stop_rank_"
# Seconds a rank that another rank's failure ends has to unwind (give back its folder lock) before
# it exits hard; a collective with the failed rank fails once that one has exited.
ABORT_GRACE_S = 10

# What launchers send to ask a job to stop (Slurm's --signal=USR1@seconds, scancel, mpirun and
# torchrun forwarding SIGTERM, Ctrl-C): training finishes its step and checkpoints.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# Rank and size variables that MPI launchers (MPICH/Hydra, Intel MPI, Open MPI, MVAPICH2, PMIx) set.
MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK")
MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
MPI_REBUILD = "MPICC=$(which mpicc) pip install --no-binary mpi4py --force-reinstall mpi4py"

_main_work_group = None  # CPU (gloo) group with MAIN_WORK_TIMEOUT_S, for `run_on_main`
_store = None  # the rendezvous store (a TCPStore)
_watchdog = None  # this rank's `_watch` thread
_failed_elsewhere = None  # (rank, exit code) of the failed rank that ends this one
_ending = threading.Lock()  # held by the thread that ends this rank (never given back)
_guarded = False  # inside abort_on_failure


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = None  # None: not chosen yet (`detect_launch`)
    launcher: str = "none"  # none | mpi | torchrun | slurm

    @property
    def is_main(self):
        return self.rank == 0


def _int(environ, name, default=None):
    value = environ.get(name, "")
    return int(value) if value.strip().lstrip("-").isdigit() else default


def detect_launch(environ=None):
    """The DistInfo the environment gives (no device; under MPI, MPI's own numbers come later)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(_int(env, "RANK", 0), _int(env, "WORLD_SIZE", 1),
                        _int(env, "LOCAL_RANK", 0), launcher="torchrun")
    mpi_ranks = [_int(env, v) for v in MPI_RANK_VARS if v in env]
    mpi_sizes = [_int(env, v) for v in MPI_SIZE_VARS if v in env]
    # SLURM_PROCID alone is also set in the batch script; a step that srun launched has a step id.
    if "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        rank = _int(env, "SLURM_PROCID", 0)
        world_size = _int(env, "SLURM_STEP_NUM_TASKS", _int(env, "SLURM_NTASKS", 1))
        # srun --mpi=pmi2/pmix also sets PMI variables; they describe the same tasks. Different
        # numbers mean an mpirun inside the allocation started this process.
        if all(r == rank for r in mpi_ranks) and all(s == world_size for s in mpi_sizes):
            return DistInfo(rank, world_size, _int(env, "SLURM_LOCALID", 0), launcher="slurm")
    if mpi_ranks or "MPI_LOCALRANKID" in env:
        world_size = next((s for s in mpi_sizes if s), 1)
        rank = next((r for r in mpi_ranks if r is not None), 0)
        return DistInfo(rank, world_size, launcher="mpi")
    return DistInfo()


def expand_nodelist(nodelist):
    """Slurm's compressed host list -> host names: "gpu[01-03,07],cpu1" -> gpu01 gpu02 gpu03
    gpu07 cpu1 (zero padding kept; several bracket groups in one name are expanded in order)."""
    hosts = []
    for name in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist):  # split at commas outside [...]
        # "r[1-2]-n[3]" -> "r", "1-2", "-n", "3", "": text and bracket contents take turns
        parts = re.split(r"\[([^\]]*)\]", name)
        choices = [_bracket_values(part) if i % 2 else [part] for i, part in enumerate(parts)]
        hosts += ["".join(choice) for choice in itertools.product(*choices)]
    return hosts


def _bracket_values(text):
    values = []  # "01-03,7" -> 01 02 03 7
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        values += [f"{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)] if hi else [lo]
    return values


def slurm_rendezvous(environ=None):
    """(host, port) every task of a Slurm step computes alike: $MASTER_ADDR/$MASTER_PORT when
    set, else the first host of the step (job) node list and a port derived from the job and
    step ids."""
    env = os.environ if environ is None else environ
    host = env.get("MASTER_ADDR")
    if not host:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or \
            env.get("SLURM_NODELIST", "")
        hosts = expand_nodelist(nodelist)
        if not hosts:
            raise RuntimeError("srun launch without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: "
                               "set MASTER_ADDR to the host of task 0")
        host = hosts[0]
    port = _int(env, "MASTER_PORT")
    if port is None:
        step = _int(env, "SLURM_STEP_ID", _int(env, "SLURM_STEPID", 0))
        port = SLURM_PORT_BASE + (1000 * _int(env, "SLURM_JOB_ID", 0) + step) % SLURM_PORT_RANGE
    return host, port


def choose_device(local_rank, device=None):
    """device None -> cuda:(local_rank % visible GPUs) when CUDA is available, else cpu."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def _host_address():
    """An address of this host that the other nodes can reach."""
    with suppress(OSError):
        address = socket.gethostbyname(socket.gethostname())
        if not address.startswith("127."):
            return address
    # Many systems map the hostname to a loopback address; ask the routing table for the address
    # of the outgoing interface instead (a UDP connect sends nothing).
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostname()


def _mpi_rendezvous(launch):
    """(rank, world_size, local_rank, init_method) from MPI; rank 0 chooses address and port."""
    with warnings.catch_warnings():  # a mismatched launcher gets our one-line error below
        warnings.filterwarnings("ignore", message="suspicious MPI execution environment")
        from mpi4py import MPI  # only under an MPI launcher

    comm = MPI.COMM_WORLD
    rank, world_size = comm.Get_rank(), comm.Get_size()
    if world_size == 1 and launch.world_size > 1:
        library = MPI.Get_library_version().strip().splitlines()[0]
        size_var = next(v for v in MPI_SIZE_VARS if _int(os.environ, v))
        raise UsageError(
            f"the launcher started {launch.world_size} processes ({size_var}="
            f"{launch.world_size}) but MPI sees only this one: mpirun and mpi4py come from "
            f"different MPI libraries (mpi4py uses {library}). Launch with the mpirun of that MPI "
            f"({os.path.join(os.path.dirname(sys.executable), 'mpirun')} for the venv's MPICH), "
            f"or rebuild mpi4py against the MPI of your mpirun: {MPI_REBUILD}")
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, node_size = node_comm.Get_rank(), node_comm.Get_size()
    node_comm.Free()
    address = None
    if rank == 0:
        with socket.socket() as s:  # a free port, unless MASTER_PORT names one
            s.bind(("", 0))
            port = int(os.environ.get("MASTER_PORT") or s.getsockname()[1])
        host = os.environ.get("MASTER_ADDR") or \
            ("127.0.0.1" if node_size == world_size else _host_address())
        address = (host, port)
    host, port = comm.bcast(address, root=0)
    return rank, world_size, local_rank, f"tcp://{host}:{port}"


def setup_dist(timeout_s=DEFAULT_TIMEOUT_S):
    """Join the job's process group (if there is more than one process: NCCL on CUDA, else gloo)
    and pick the device (`choose_device`)."""
    global _main_work_group, _store, _watchdog
    launch = detect_launch()
    rank, world_size, local_rank = launch.rank, launch.world_size, launch.local_rank
    init_method = "env://"  # torchrun's (without a launcher there is one process: no rendezvous)
    if launch.launcher == "mpi":
        rank, world_size, local_rank, init_method = _mpi_rendezvous(launch)
    elif launch.launcher == "slurm":
        host, port = slurm_rendezvous()
        init_method = f"tcp://{host}:{port}"

    device = choose_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        _store, rank, world_size = next(dist.rendezvous(init_method, rank, world_size,
                                                        timeout=timeout))
        # device_id binds the NCCL communicator to this rank's GPU eagerly
        dist.init_process_group(backend=backend, store=_store, rank=rank, world_size=world_size,
                                timeout=timeout, device_id=device if backend == "nccl" else None)
        _main_work_group = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=max(timeout_s, MAIN_WORK_TIMEOUT_S)))
        _watchdog = threading.Thread(target=_watch, args=(rank,), name="ramvid-abort-watchdog",
                                     daemon=True)
        _watchdog.start()
    return DistInfo(rank, world_size, local_rank, device, launch.launcher)


@contextmanager
def process_group(timeout_s=DEFAULT_TIMEOUT_S, one_line=()):
    """`with process_group() as info:` the job's process group (`setup_dist`) around a block run
    under `abort_on_failure(one_line)`, closed however the block ends (`cleanup`)."""
    info = setup_dist(timeout_s=timeout_s)
    try:
        with abort_on_failure(one_line):
            yield info
    finally:
        cleanup()


def get_rank():
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier(long_wait=False):
    """Wait for every rank; long_wait=True: for up to MAIN_WORK_TIMEOUT_S (after file work that
    takes some ranks much longer than others), not the collective timeout."""
    if get_world_size() > 1:
        dist.barrier(group=_main_work_group if long_wait else None)


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...]; a one-element list without a process group."""
    if get_world_size() == 1:
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def run_on_main(fn):
    """Rank 0 calls fn() while the other ranks wait up to MAIN_WORK_TIMEOUT_S for its (picklable)
    result, which every rank returns; an exception on rank 0 is raised on every rank. Every rank
    must call this."""
    if get_world_size() == 1:
        return fn()
    outcome, error = None, None
    if get_rank() == 0:
        try:
            outcome = (True, fn())
        except Exception as e:
            e.on_every_rank = True  # for abort_on_failure: every rank ends alike, no abort
            outcome, error = (False, e), e
        try:
            pickle.dumps(outcome)
        except Exception:  # the others must still learn that rank 0 failed, and why
            outcome = (False, RuntimeError(f"rank 0: {outcome[1]!r} cannot be sent to the others"))
    box = [outcome]
    dist.broadcast_object_list(box, src=0, group=_main_work_group)
    ok, value = box[0]
    if not ok:
        raise error or value
    return value


def error_line(error):
    """`prog: error: <first line of the message>`, how a command reports a user's mistake."""
    text = str(error).strip() or type(error).__name__
    return f"{Path(sys.argv[0]).name}: error: {text.splitlines()[0]}"


def abort_job(exit_code=1, message="", user_error=False):
    """Print `message` and end this rank now. A rank that fails on its own ends every other rank
    of the job too: their watchdogs (`_watch`) wake on the store keys it sets (under MPI,
    MPI_Abort also ends them at once). A rank that another one's failure ends says so instead,
    unless its own error is a `user_error`: a mistake every rank found (e.g. a data folder that
    differs between nodes) is printed by each rank that found it."""
    with _ending:  # never given back: a second thread that ends this rank waits for the exit
        if _failed_elsewhere is not None and not user_error:
            failed, exit_code = _failed_elsewhere
            message = f"[rank {get_rank()}] ending: rank {failed} failed\n"
        sys.stderr.write(message)
        sys.stdout.flush()
        sys.stderr.flush()
        if _failed_elsewhere is None and _store is not None:
            others = [f"{STOP_KEY}{r}" for r in range(get_world_size()) if r != get_rank()]
            try:
                _store.multi_set(others, [f"{get_rank()} {exit_code}"] * len(others))
                time.sleep(1)  # the others read it before this rank (maybe the store's host) exits
            except Exception:  # the store's host has died: the others' collectives fail anyway
                pass
            if "mpi4py.MPI" in sys.modules:  # imported by an MPI launch's rendezvous only
                sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(exit_code)
        os._exit(exit_code)


def _watch(rank):
    """Thread on every rank of a job: waits for this rank's stop key; when another rank's
    `abort_job` sets it, this rank ends too (after ABORT_GRACE_S for its main thread to unwind),
    instead of waiting for the failed rank until the collective timeout."""
    global _failed_elsewhere
    try:
        store = dist.TCPStore(_store.host, _store.port, is_master=False)  # a connection of its own
        store.wait([f"{STOP_KEY}{rank}"], datetime.timedelta(days=365))
        value = store.get(f"{STOP_KEY}{rank}").decode()
    except Exception:  # rank 0, the store's host, died without a word: collectives fail instead
        return
    if value != "done":
        _failed_elsewhere = tuple(map(int, value.split()))
        time.sleep(ABORT_GRACE_S)
        abort_job()


@contextmanager
def abort_on_failure(one_line=()):
    """Around the work of every rank of a job: an error on one rank ends every rank within seconds
    (`abort_job`), never a hang. The failing rank prints its error once, prefixed with its rank:
    one line (`error_line`) for a UsageError (exit code 2) and the `one_line` types ((type, exit
    code), ...), else its traceback (exit code 1). An error of a single process, or one that
    `run_on_main` raised on every rank, ends every rank alike, printed once (by rank 0). A
    SystemExit with code 0 passes; an inner abort_on_failure leaves everything to the outer one."""
    global _guarded
    if _guarded:
        yield
        return
    _guarded = True
    try:
        yield
    except BaseException as e:
        if isinstance(e, SystemExit) and not e.code:
            raise
        code = next((c for kind, c in ((UsageError, 2), *one_line) if isinstance(e, kind)), None)
        line = error_line(e) if code else f"failed:\n{traceback.format_exc()}"
        if get_world_size() > 1 and not getattr(e, "on_every_rank", False):
            abort_job(code or 1, f"[rank {get_rank()}] {line}\n", user_error=bool(code))
        if get_rank() > 0:
            raise SystemExit(code or 1) from None
        if code is None:
            raise
        sys.stderr.write(line + "\n")
        raise SystemExit(code) from None
    finally:
        _guarded = False


def cleanup():
    """Leave the process group: stop this rank's watchdog, then wait for every rank (so that
    rank 0, whose process may host the store, outlives the others' use of it)."""
    global _main_work_group, _store, _watchdog
    if dist.is_available() and dist.is_initialized():
        if _watchdog is not None:
            _store.set(f"{STOP_KEY}{get_rank()}", "done")
            _watchdog.join()
            barrier(long_wait=True)
        dist.destroy_process_group()
    _main_work_group = _store = _watchdog = None
