"""The run-folder lock: one writer per folder, across real processes.

Every test was seen to fail on the deliberate break named in its docstring.
"""
import json
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from ramvid import runlock
from ramvid.errors import UsageError
from ramvid.runlock import LOCK_NAME, FolderLock, read_lock

REPO = Path(__file__).resolve().parents[1]

# A process that holds the lock on argv[2] until a line arrives on stdin, then leaves the block as
# argv[3] says: "exit" normally, "raise" with an exception, "interrupt" with Ctrl-C.
HOLDER = r"""
import os, signal, sys, time, types
# The lock needs none of the package's imports (torch): load ramvid.runlock on its own.
package = types.ModuleType("ramvid")
package.__path__ = [os.path.join(sys.argv[1], "ramvid")]
sys.modules["ramvid"] = package
from ramvid.runlock import FolderLock

with FolderLock(sys.argv[2], what="training run", heartbeat_s=0.05):
    print("locked", flush=True)
    sys.stdin.readline()
    if sys.argv[3] == "raise":
        raise RuntimeError("leaving by an exception")
    if sys.argv[3] == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
"""


def start_holder(folder, how="exit"):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(REPO), str(folder), how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    assert line == "locked\n", proc.communicate()[1]
    return proc


def this_host():
    """This process's pid space, read here without the module under test."""
    return {"host": socket.gethostname(),
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "pid_ns": os.readlink("/proc/self/ns/pid")}


def dead_pid():
    """The pid of a process that has ended and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(folder, age_s=0.0, **fields):
    """A lock file as another run would have left it; returns its token."""
    record = {"what": "training run", **this_host(), "pid": dead_pid(), "proc_start": 123,
              "started": "2024-01-01T00:00:00+00:00", "job": "SLURM_JOB_ID=77",
              "command": "video_train.py --log_dir x", "token": secrets.token_hex(16), **fields}
    path = Path(folder) / LOCK_NAME
    path.write_text(json.dumps(record))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return record["token"]


def test_second_process_is_refused_naming_the_holder(tmp_path):
    """A second process on a held folder gets a one-line, picklable UsageError naming host and pid
    of the first, and leaves the first one's lock alone.
    Break seen red: the lock file opened without O_EXCL (the second acquire succeeds)."""
    holder = start_holder(tmp_path)
    try:
        token = read_lock(tmp_path).token
        with pytest.raises(UsageError) as caught:
            FolderLock(tmp_path, what="sampling run").acquire()
        message = str(caught.value)
        assert f"pid {holder.pid} on host {socket.gethostname()} (training run" in message
        assert "\n" not in message
        assert str(pickle.loads(pickle.dumps(caught.value))) == message
        assert read_lock(tmp_path).token == token
    finally:
        holder.communicate("\n")
    assert holder.returncode == 0


@pytest.mark.parametrize("how, returncode, says", [
    ("exit", 0, ""),
    ("raise", 1, "RuntimeError: leaving by an exception"),
    ("interrupt", -signal.SIGINT, "KeyboardInterrupt"),
])
def test_released_on_every_exit(tmp_path, how, returncode, says):
    """Leaving the block normally, by an exception or by Ctrl-C deletes the lock file.
    Break seen red: __exit__ releasing only when no exception is passing (raise, interrupt) and
    not releasing at all (all three)."""
    holder = start_holder(tmp_path, how)
    assert read_lock(tmp_path).pid == holder.pid
    _, stderr = holder.communicate("\n", timeout=20)
    assert holder.returncode == returncode and says in stderr
    assert read_lock(tmp_path) is None
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("reaped", [True, False])
def test_sigkilled_holder_is_taken_over(tmp_path, reaped):
    """A SIGKILLed holder leaves its lock behind; the next acquire on this host takes it over with
    a warning naming the dead pid, also before the killed process is reaped (a zombie).
    Breaks seen red: a pid that kill(pid, 0) cannot find counted as running (reaped); the zombie
    check dropped (not reaped)."""
    holder = start_holder(tmp_path)
    holder.kill()
    if reaped:
        holder.wait()
    else:
        stat = Path(f"/proc/{holder.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed holder never became a zombie"
            time.sleep(0.01)
    assert read_lock(tmp_path).pid == holder.pid
    try:
        with pytest.warns(UserWarning, match=f"removed the stale lock of pid {holder.pid} "):
            lock = FolderLock(tmp_path).acquire()
        assert read_lock(tmp_path).pid == os.getpid()
        lock.release()
    finally:
        holder.wait()


@pytest.mark.parametrize("elsewhere, says", [
    ({"host": "gpu-node-17"}, "on host gpu-node-17 "),
    ({"boot_id": "a-boot-before-a-restart"}, "another host, boot or container"),
    ({"pid_ns": "pid:[1]"}, "another host, boot or container"),
])
def test_lock_from_elsewhere_needs_break_lock(tmp_path, elsewhere, says):
    """A lock whose pid cannot be checked from here (another host, an earlier boot, another pid
    namespace) is refused with its heartbeat age and the --break_lock flag, even when that pid
    does not run here; with break_lock it is taken over with a warning.
    Break seen red: only the host name compared (boot id and pid namespace ignored: rows 2, 3)
    and the host ignored too (all rows: the dead pid is taken over without break_lock)."""
    token = write_lock(tmp_path, age_s=300, **elsewhere)
    with pytest.raises(UsageError) as caught:
        FolderLock(tmp_path).acquire()
    message = str(caught.value)
    assert says in message
    assert "last heartbeat 5 min ago" in message and "--break_lock True" in message
    assert read_lock(tmp_path).token == token
    with pytest.warns(UserWarning, match=r"removed the stale lock .*\(--break_lock True\)"):
        lock = FolderLock(tmp_path, break_lock=True).acquire()
    assert read_lock(tmp_path).pid == os.getpid()
    lock.release()


def test_live_holder_here_is_not_broken(tmp_path):
    """break_lock never takes over a holder seen running on this host.
    Break seen red: break_lock checked before the same-host pid check."""
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(UsageError, match=f"in use by pid {holder.pid} "):
            FolderLock(tmp_path, break_lock=True).acquire()
    finally:
        holder.communicate("\n")


def test_recycled_pid_counts_as_stale(tmp_path):
    """A lock naming this host and a running pid, but a process start time other than that pid's,
    was left by a process whose pid has been reused: it is taken over.
    Break seen red: the start time comparison dropped (the running pid holds the folder)."""
    write_lock(tmp_path, pid=os.getppid(), proc_start=1)
    with pytest.warns(UserWarning, match=f"pid {os.getppid()} is now another process"):
        lock = FolderLock(tmp_path).acquire()
    lock.release()


def test_without_proc_only_the_pid_counts(tmp_path, monkeypatch):
    """Without /proc (no start times, boot id or pid namespace) a running pid holds the folder and
    a pid that no longer runs is taken over.
    Break seen red: _stale_reason without its fallback for a missing /proc (TypeError)."""
    monkeypatch.setattr(runlock, "_pid_space", lambda: (socket.gethostname(), None, None))
    monkeypatch.setattr(runlock, "_proc_stat", lambda pid: None)
    with FolderLock(tmp_path):
        assert read_lock(tmp_path).proc_start is None
        with pytest.raises(UsageError, match=f"in use by pid {os.getpid()} "):
            FolderLock(tmp_path).acquire()
    write_lock(tmp_path, boot_id=None, pid_ns=None, proc_start=None)
    with pytest.warns(UserWarning, match="no longer runs"):
        FolderLock(tmp_path).acquire().release()


def test_concurrent_takers_of_a_stale_lock(tmp_path):
    """Four threads take over one stale lock at once, 60 times over: each time exactly one holds
    the folder, only one warns that it removed the stale lock, and the others name the winner.
    Breaks seen red: the lock file opened without O_EXCL; the take-over deleting the lock without
    first re-reading it under the claim (a fresh winner's lock deleted)."""
    takers = 4
    for round_ in range(60):
        folder = tmp_path / str(round_)
        folder.mkdir()
        write_lock(folder)
        start, done = threading.Barrier(takers), threading.Barrier(takers)
        held, refused = [], []

        def take():
            lock = FolderLock(folder)
            start.wait()
            try:
                held.append(lock.acquire())
            except UsageError as e:
                refused.append(str(e))
            done.wait()  # winners hold until every taker has tried
            if lock in held:
                lock.release()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            threads = [threading.Thread(target=take) for _ in range(takers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert len(held) == 1, f"round {round_}: {len(held)} takers hold the folder"
        assert all(f"in use by pid {os.getpid()} " in message for message in refused)
        assert sum("removed the stale lock" in str(w.message) for w in caught) == 1
        assert os.listdir(folder) == []


def test_heartbeat_refreshes_the_mtime(tmp_path):
    """The holder touches its lock file every heartbeat_s.
    Break seen red: the heartbeat thread not touching the file."""
    with FolderLock(tmp_path, heartbeat_s=0.05):
        path = tmp_path / LOCK_NAME
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        assert read_lock(tmp_path).age_s > 999
        deadline = time.monotonic() + 5
        while read_lock(tmp_path).age_s > 100:
            assert time.monotonic() < deadline, "the heartbeat did not touch the lock file"
            time.sleep(0.02)


def test_a_taken_lock_is_not_deleted_by_its_former_holder(tmp_path):
    """When another run takes the lock (--break_lock from another host), the former holder warns
    from its heartbeat and, on release, leaves the new holder's file alone.
    Breaks seen red: release without the token check (file deleted); heartbeat without the
    ownership check (no warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lock = FolderLock(tmp_path, heartbeat_s=0.05).acquire()
        (tmp_path / LOCK_NAME).unlink()
        token = write_lock(tmp_path, host="gpu-node-17")
        deadline = time.monotonic() + 5
        while not any("has lost its lock" in str(w.message) for w in caught):
            assert time.monotonic() < deadline, "the former holder did not warn"
            time.sleep(0.02)
        lock.release()
    assert read_lock(tmp_path).token == token


@pytest.mark.parametrize("umask", [0o002, 0o027])
def test_lock_file_honours_the_umask(tmp_path, umask):
    """The lock file is created 0o666 minus the umask (so a group sharing the folder can read it).
    Breaks seen red: created 0o600; fchmod 0o666 after creating."""
    before = os.umask(umask)
    try:
        with FolderLock(tmp_path):
            mode = (tmp_path / LOCK_NAME).stat().st_mode & 0o777
    finally:
        os.umask(before)
    assert mode == 0o666 & ~umask


def test_unreadable_lock_needs_break_lock(tmp_path, monkeypatch):
    """A lock file that stays unparseable (its writer killed between create and write) is refused
    without break_lock, naming the flag, and taken over with it.
    Break seen red: an unreadable lock taken over without break_lock."""
    monkeypatch.setattr(runlock, "SETTLE_S", 0.2)
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(UsageError, match=r"unreadable lock file.*--break_lock True"):
        FolderLock(tmp_path).acquire()
    with pytest.warns(UserWarning, match="removed the stale lock of an unreadable lock file"):
        FolderLock(tmp_path, break_lock=True).acquire().release()
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_lock(tmp_path, monkeypatch):
    """A lock file that cannot be written (disk full) is deleted again: no lock naming nobody.
    Break seen red: the unlink after a failed write dropped."""
    def disk_full(self, token):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(FolderLock, "_record", disk_full)
    with pytest.raises(OSError, match="No space left"):
        FolderLock(tmp_path).acquire()
    assert os.listdir(tmp_path) == []


def test_stuck_take_over_is_reported(tmp_path, monkeypatch):
    """A take-over claim on a stale lock that never goes away (its taker killed in the middle) is
    waited for, then reported naming the claim file; the stale lock stays.
    Break seen red: an existing claim ignored (the stale lock is taken over regardless)."""
    monkeypatch.setattr(runlock, "SETTLE_S", 0.2)
    token = write_lock(tmp_path)
    claim = tmp_path / f"{LOCK_NAME}.takeover-{token}"
    claim.touch()
    with pytest.raises(UsageError, match=f"{claim}: another process has been taking over"):
        FolderLock(tmp_path).acquire()
    assert read_lock(tmp_path).token == token


def test_missing_folder_is_a_usage_error(tmp_path):
    """The folder must exist; a missing one is a one-line UsageError naming it.
    Break seen red: only FileExistsError caught around the create (FileNotFoundError escapes)."""
    with pytest.raises(UsageError, match=f"{tmp_path / 'missing'}: cannot create the lock file"):
        FolderLock(tmp_path / "missing").acquire()
