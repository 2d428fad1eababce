"""One writer per run folder: a lock file that names its holder.

A training log dir, or a sampling or evaluation run folder, is written by one process at a time
(rank 0 under a launcher), which holds the folder's lock from before its first write:

    with FolderLock(log_dir, what="training run", break_lock=args.break_lock):
        ...

The lock is the file `.ramvid.lock`, created with O_CREAT|O_EXCL: atomic on local disks and on
the shared file systems runs live on (NFS v3 and later, Lustre, GPFS), where flock() is missing or
local to one client. It holds its `LockHolder` as JSON; a heartbeat thread touches it every
`heartbeat_s` seconds, so its age says when the holder was last seen alive.

A lock whose holder is gone is taken over with a warning: on the same host, boot and pid
namespace when its pid no longer runs, is a zombie or now belongs to a process started at another
time (a recycled pid); elsewhere the pid cannot be checked, so only with break_lock=True. A taker
first creates `.ramvid.lock.takeover-TOKEN` exclusively (TOKEN: the stale lock's), checks under
that claim that the lock still holds TOKEN, deletes it, drops the claim and competes for a fresh
O_EXCL create like any starter: of several takers one deletes the stale lock, and none can delete
a lock created meanwhile.
"""
import json
import os
import secrets
import shlex
import socket
import sys
import threading
import time
import warnings
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import UsageError

LOCK_NAME = ".ramvid.lock"
HEARTBEAT_S = 30.0
# The launchers' job ids, so that a message can say which job holds a folder.
JOB_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "PBS_JOBID", "LSB_JOBID")
# How long to wait for a lock file that does not parse yet (its creator writes it right after
# creating it) or for another process's take-over of a stale lock (milliseconds when all is well).
SETTLE_S = 5.0
RETRY_S = 0.05


@dataclass(frozen=True)
class LockHolder:
    """Who holds a folder's lock, as its lock file says; `age_s`: seconds since its last
    heartbeat; token None: the file does not parse."""
    what: str = "run"
    host: str = "?"
    pid: int = 0
    proc_start: int | None = None  # clock ticks after boot (Linux /proc/PID/stat field 22)
    boot_id: str | None = None
    pid_ns: str | None = None
    started: str = "?"
    job: str = ""
    command: str = ""
    token: str | None = None
    age_s: float = 0.0

    def describe(self):
        """One line for messages: who holds the lock, since when, last heartbeat."""
        if self.token is None:
            return (f"an unreadable lock file (being written, or its writer was killed while "
                    f"writing it; last modified {format_duration(self.age_s)} ago)")
        job = f", {self.job}" if self.job else ""
        return (f"pid {self.pid} on host {self.host} ({self.what}{job}), started {self.started}, "
                f"last heartbeat {format_duration(self.age_s)} ago, command: {self.command}")


def read_lock(folder):
    """The LockHolder of `folder`'s lock, or None when the folder is not locked."""
    path = Path(folder) / LOCK_NAME
    try:
        with open(path, "rb") as f:
            age_s = time.time() - os.fstat(f.fileno()).st_mtime
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"{path}: cannot read this run folder's lock file "
                         f"({e.strerror})") from None
    try:
        return LockHolder(**json.loads(data), age_s=age_s)
    except (ValueError, TypeError):
        return LockHolder(age_s=age_s)


class FolderLock:
    """The lock on one run folder: `with FolderLock(folder, ...):`, or acquire() and release().

    `folder` must exist (creating it is the caller's job). `what` names the run in messages
    ("training run", "sampling run"). acquire() raises UsageError (one line, picklable) when the
    folder is held by a live or uncheckable run (break_lock: see the module's docstring)."""

    def __init__(self, folder, what="run", break_lock=False, heartbeat_s=HEARTBEAT_S):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.break_lock = break_lock
        self.heartbeat_s = heartbeat_s
        self._token = None
        self._stop = None
        self._heartbeat = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()

    def acquire(self):
        """Take the lock, removing a stale one with a warning; returns self."""
        token = secrets.token_hex(16)
        deadline = time.monotonic() + SETTLE_S
        while not self._create(token):
            holder = read_lock(self.folder)
            if holder is None:
                continue  # released after our create failed
            if holder.token is None and time.monotonic() < deadline:
                time.sleep(RETRY_S)
                continue
            why = self._stale_reason(holder)
            if self._take_over(holder):
                warnings.warn(f"{self.folder}: removed the stale lock of {holder.describe()} "
                              f"({why})")
            elif time.monotonic() < deadline:
                time.sleep(RETRY_S)
            else:
                raise UsageError(
                    f"{self._claim_path(holder)}: another process has been taking over the stale "
                    f"lock of {self.folder} for {SETTLE_S:.0f} s; if no other run is starting, "
                    f"delete that file and start again")
        self._token = token
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, args=(token, self._stop),
                                           name="ramvid-lock-heartbeat", daemon=True)
        self._heartbeat.start()
        return self

    def release(self):
        """Stop the heartbeat and delete the lock file if it still holds this lock's token (after
        a take-over with --break_lock it belongs to another run). Does nothing when not held."""
        if self._token is None:
            return
        self._stop.set()
        self._heartbeat.join()
        holder = read_lock(self.folder)
        if holder is not None and holder.token == self._token:
            self.path.unlink(missing_ok=True)
        self._token = None

    def _create(self, token):
        """Create the lock file holding this process's record; False when one exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # minus the umask
        except FileExistsError:
            return False
        except OSError as e:
            raise UsageError(f"{self.folder}: cannot create the lock file {LOCK_NAME} "
                             f"({e.strerror}); the folder must exist and be writable") from None
        try:
            os.write(fd, self._record(token))
        except BaseException:
            self.path.unlink()  # never leave a lock that names nobody
            raise
        finally:
            os.close(fd)
        return True

    def _record(self, token):
        host, boot_id, pid_ns = _pid_space()
        stat = _proc_stat(os.getpid())
        return json.dumps({
            "what": self.what, "host": host, "pid": os.getpid(),
            "proc_start": None if stat is None else stat[1], "boot_id": boot_id, "pid_ns": pid_ns,
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "job": " ".join(f"{name}={os.environ[name]}" for name in JOB_VARIABLES
                            if name in os.environ),
            "command": shlex.join(sys.argv), "token": token,
        }, indent=1).encode()

    def _stale_reason(self, holder):
        """Why `holder` is gone; UsageError naming it while it runs or may run."""
        checkable = (holder.host, holder.boot_id, holder.pid_ns) == _pid_space()
        if holder.token is not None and checkable:
            try:
                os.kill(holder.pid, 0)
            except ProcessLookupError:
                return f"pid {holder.pid} no longer runs"
            except PermissionError:
                pass  # it runs, under another user
            # Without /proc (or with other users' processes hidden) only the pid counts.
            state, start = _proc_stat(holder.pid) or (None, holder.proc_start)
            if state == "Z":
                return f"pid {holder.pid} has exited"
            if holder.proc_start is not None and start != holder.proc_start:
                return f"pid {holder.pid} is now another process (a recycled pid)"
            raise UsageError(f"{self.folder} is in use by {holder.describe()}; wait for that "
                             f"run to end or stop it, or use another folder")
        if self.break_lock:
            return "--break_lock True"
        where = ("" if holder.token is None else
                 "; this host cannot check that process (another host, boot or container)")
        raise UsageError(f"{self.folder} is locked by {holder.describe()}{where}. If no run uses "
                         f"this folder any more, start again with --break_lock True")

    def _claim_path(self, holder):
        return self.folder / f"{LOCK_NAME}.takeover-{holder.token or 'unreadable'}"

    def _take_over(self, holder):
        """Delete `holder`'s stale lock file unless another process is taking it over or it has
        changed since it was read; True when this call deleted it."""
        claim = self._claim_path(holder)
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        try:
            current = read_lock(self.folder)
            if current is None or current.token != holder.token:
                return False
            self.path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)
            claim.unlink()

    def _beat(self, token, stop):
        while not stop.wait(self.heartbeat_s):
            try:
                holder = read_lock(self.folder)
                if holder is None or holder.token != token:
                    now = "deleted" if holder is None else f"now held by {holder.describe()}"
                    warnings.warn(f"{self.path}: this {self.what} has lost its lock ({now}); "
                                  f"another run may write to {self.folder}")
                    return
                os.utime(self.path)
            except OSError:
                pass  # a file server hiccup; the next beat tries again


def format_duration(seconds):
    """"45 s", "12 min", "3.5 h": a lock's age, a run's estimated time."""
    seconds = max(seconds, 0.0)  # this host's clock may lag the file server's
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _pid_space():
    """Where a pid names one process: (host name, boot id, pid namespace); the last two are None
    without /proc."""
    boot_id = pid_ns = None
    with suppress(OSError):
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with suppress(OSError):
        pid_ns = os.readlink("/proc/self/ns/pid")
    return socket.gethostname(), boot_id, pid_ns


def _proc_stat(pid):
    """(state letter, start time in clock ticks after boot) of a process, or None without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2, the command name, may hold spaces and parentheses; the fields after it are plain.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])  # fields 3 and 22
