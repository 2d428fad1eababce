"""Checkpoint files: crash-safe writes, refusing untrusted pickles, finding a complete set."""
import errno
import os
import pickle
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from ramvid import checkpoint as ck


def test_file_names():
    paths = ck.checkpoint_paths("/x", 200000, ["0.9999"])
    assert paths["model"].name == "model200000.pt"
    assert paths["ema"]["0.9999"].name == "ema_0.9999_200000.pt"
    assert ck.checkpoint_paths("/x", 42, [])["opt"].name == "opt000042.pt"
    assert ck.step_from_model_path("/x/model001234.pt") == 1234
    with pytest.raises(ValueError, match="modelNNNNNN.pt"):
        ck.step_from_model_path("/x/ema_0.9999_001234.pt")


def test_model_file_is_a_plain_state_dict(tmp_path):
    net = torch.nn.Linear(3, 2)
    paths = ck.save_checkpoint(tmp_path, 7, net.state_dict(), {"0.99": net.state_dict()},
                               {"optimizer": {}, "step": 7})
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(torch.load(paths["model"], weights_only=True))
    assert torch.equal(fresh.weight, net.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ema_0.99_000007.pt", "model000007.pt", "opt000007.pt"]


def _no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_failed_rename_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model000010.pt"
    ck.atomic_save({"w": torch.ones(3)}, path)

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.os, "replace", disk_full)
    with pytest.raises(ck.CheckpointError, match=r"model000010\.pt: No space left"):
        ck.atomic_save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(ck.load_checkpoint_file(path)["w"], torch.ones(3))
    assert _no_temp_files(tmp_path)


def test_crash_mid_write_leaves_no_truncated_final_file(tmp_path, monkeypatch):
    path = tmp_path / "opt000010.pt"
    ck.atomic_save({"step": 1}, path)
    real_save = torch.save

    def dies_halfway(obj, f):
        real_save(obj, f)
        f.truncate(40)  # a partial file, as if the process died while writing
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ck.torch, "save", dies_halfway)
    with pytest.raises(ck.CheckpointError, match="opt000010.pt"):
        ck.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert ck.load_checkpoint_file(path) == {"step": 1}
    assert _no_temp_files(tmp_path)
    with pytest.raises(ck.CheckpointError, match=r"new\.pt"):
        ck.atomic_save({"step": 2}, tmp_path / "missing_dir" / "new.pt")


def test_atomic_path_leaves_the_old_file_or_the_complete_new_one(tmp_path):
    """An exception mid-write leaves the old bytes and no temporary file; a block that ends
    replaces them, and until then the temporary file is hidden beside the final one and does not
    end in its suffix (a `*.mp4` glob must not take it for a finished file). Seen red with the
    temporary file kept on an exception (no `finally` in atomic_path) and with the temporary
    name ending in the final suffix."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"old")
    with pytest.raises(ZeroDivisionError), ck.atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        1 / 0
    assert path.read_bytes() == b"old" and _no_temp_files(tmp_path)
    with ck.atomic_path(path) as tmp:
        tmp.write_bytes(b"new")
        assert (tmp.parent, tmp.suffix, tmp.name[0]) == (tmp_path, ".tmp", ".")
        assert list(tmp_path.glob("*.mp4")) == [path]
        assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"new" and _no_temp_files(tmp_path)


def test_what_a_killed_writer_leaves_is_removed_and_nothing_else(tmp_path):
    """A process killed inside `atomic_path` blocks leaves one temporary file per block;
    remove_stale_temp_files deletes exactly those, whatever the suffix, and keeps final files,
    the run lock and other names. Seen red with the clean-up's glob narrowed to `.pt` files."""
    (tmp_path / "model000010.pt").write_bytes(b"old")
    for name in (".ramvid.lock", "notes.tmp", "6x6x16x16x3.npz"):
        (tmp_path / name).write_bytes(b"kept")
    names = ["model000010.pt", "args.json", "6x6x16x16x3.npz", "progress.csv", "grid.mp4",
             "README"]
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys\n"
        "from contextlib import ExitStack\n"
        "from ramvid.checkpoint import atomic_path\n"
        "with ExitStack() as stack:\n"
        "    for name in sys.argv[1:]:\n"
        "        stack.enter_context(atomic_path(name)).write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"), *(str(tmp_path / n) for n in names)],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    kept = {"model000010.pt", ".ramvid.lock", "notes.tmp", "6x6x16x16x3.npz"}
    left = {p.name for p in tmp_path.iterdir()} - kept
    assert len(left) == len(names)  # one per block
    assert {p.name for p in ck.remove_stale_temp_files(tmp_path)} == left
    assert {p.name for p in tmp_path.iterdir()} == kept
    assert (tmp_path / "model000010.pt").read_bytes() == b"old"


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_with_code_is_refused_and_not_executed(tmp_path, writer):
    marker = tmp_path / "code_ran"
    path = tmp_path / "model000001.pt"
    payload = {"weight": torch.ones(2), "evil": _RunsCode(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ck.CheckpointError) as info:
        ck.load_checkpoint_file(path)
    message = str(info.value)
    assert "refusing to load" in message and str(path) in message and "\n" not in message
    assert not marker.exists()


def test_missing_and_truncated_files_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "LOAD_BACKOFF_S", 0.0)
    with pytest.raises(ck.CheckpointError, match="not found: .*nothing.pt"):
        ck.load_checkpoint_file(tmp_path / "nothing.pt")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(100)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ck.CheckpointError, match="cannot read checkpoint .*cut.pt"):
        ck.load_checkpoint_file(cut)


def _write_set(folder, step, rates, skip=()):
    state = {"w": torch.full((2,), float(step))}
    paths = ck.checkpoint_paths(folder, step, rates)
    files = {"model": paths["model"], "opt": paths["opt"],
             **{f"ema_{r}": p for r, p in paths["ema"].items()}}
    for key, path in files.items():
        if key not in skip:
            torch.save({"optimizer": {}, "step": step} if key == "opt" else state, path)
    return files


def test_latest_checkpoint_passes_over_incomplete_sets_and_stops_at_an_unreadable_one(
        tmp_path, monkeypatch):
    """A set lacking a file (a save interrupted before its opt file) is passed over; a complete
    set that cannot be parsed raises one line naming the file and what to do, never falling
    back to an older set. Seen red with unreadable sets skipped like incomplete ones (step 4
    returned: the progress after it silently lost)."""
    monkeypatch.setattr(ck, "LOAD_BACKOFF_S", 0.0)
    rates = ["0.9999", "0.99"]
    assert ck.load_latest_checkpoint(tmp_path, rates) is None
    _write_set(tmp_path, 2, rates)
    _write_set(tmp_path, 4, rates)
    _write_set(tmp_path, 6, rates, skip=("opt",))
    ckpt = ck.load_latest_checkpoint(tmp_path, rates)
    assert ckpt.step == 4 and torch.equal(ckpt.emas["0.99"]["w"], torch.full((2,), 4.0))
    files = _write_set(tmp_path, 6, rates)
    files["opt"].write_bytes(files["opt"].read_bytes()[:100])  # complete, but cut short
    with pytest.raises(ck.CheckpointError, match=r"opt000006\.pt \(3 attempts\): .*move the "
                       r"files of step 6 out of") as error:
        ck.load_latest_checkpoint(tmp_path, rates)
    assert "\n" not in str(error.value)


def test_a_failed_read_is_tried_again_after_growing_pauses(tmp_path, monkeypatch):
    """Two transient EIO errors (NFS, Lustre): the third read succeeds after pauses of 1 s and
    2 s; three failures end with one line naming the file and the error. Seen red without the
    retry (the first EIO raised)."""
    path = tmp_path / "model000001.pt"
    torch.save({"w": torch.ones(2)}, path)
    failures, pauses, real_load = [2], [], torch.load

    def flaky_load(*args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ck.torch, "load", flaky_load)
    monkeypatch.setattr(ck.time, "sleep", pauses.append)
    assert torch.equal(ck.load_checkpoint_file(path)["w"], torch.ones(2))
    assert pauses == [1.0, 2.0]
    failures[0] = 3
    with pytest.raises(ck.CheckpointError, match=r"model000001\.pt \(3 attempts\): \[Errno 5\] "
                       r"Input/output error$"):
        ck.load_checkpoint_file(path)


@pytest.mark.parametrize("umask", [0o022, 0o007], ids=["umask022", "umask007"])
def test_checkpoint_files_honour_the_umask(tmp_path, umask):
    """Colleagues sharing a project folder read the checkpoints as the umask allows (0644 under
    umask 022, 0660 under 007). Seen red with mkstemp's temporary files, which keep mode 0600
    through the rename."""
    previous = os.umask(umask)
    try:
        ck.save_checkpoint(tmp_path, 1, {"w": torch.ones(1)}, {"0.9": {"w": torch.ones(1)}},
                           {"optimizer": {}})
    finally:
        os.umask(previous)
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o666 & ~umask}


def test_explicit_resume_tolerates_missing_opt_and_ema(tmp_path):
    _write_set(tmp_path, 3, ["0.9"], skip=("opt", "ema_0.9"))
    with pytest.warns(UserWarning, match="not found"):
        ckpt = ck.load_training_checkpoint(tmp_path, 3, ["0.9"], require_all=False)
    assert ckpt.opt is None and ckpt.emas == {}
    with pytest.raises(ck.CheckpointError, match="ema_0.9_000003.pt"):
        ck.load_training_checkpoint(tmp_path, 3, ["0.9"], require_all=True)


def test_rng_state_round_trips_through_weights_only(tmp_path):
    path = tmp_path / "rng.pt"
    ck.atomic_save({"rng": ck.rng_state()}, path)
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    ck.set_rng_state(ck.load_checkpoint_file(path)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_a_rank_loads_only_what_it_needs(tmp_path):
    """Ranks > 0 read only the opt file (model=False, no EMA rates): no model or EMA tensors
    are loaded onto their device. Catches a load that ignores the selection."""
    _write_set(tmp_path, 5, ["0.9"])
    ckpt = ck.load_training_checkpoint(tmp_path, 5, (), model=False)
    assert ckpt.model is None and ckpt.emas == {} and ckpt.opt["step"] == 5


def test_pruning_keeps_the_newest_complete_sets_and_never_a_newer_incomplete_one(tmp_path):
    """Expected from the rule: the newest `keep` complete sets stay, every multiple of
    keep_every stays, older sets go; a set still being written (incomplete, newest) stays.
    Catches counting incomplete sets as kept ones or deleting the set being written."""
    for step in (1, 2, 3, 4, 5):
        _write_set(tmp_path, step, ["0.9"])
    _write_set(tmp_path, 6, ["0.9"], skip=("opt",))  # being written
    assert list(ck.sets_to_prune(tmp_path, ["0.9"], keep=2)) == [1, 2, 3]
    assert list(ck.sets_to_prune(tmp_path, ["0.9"], keep=2, keep_every=2)) == [1, 3]
    assert ck.sets_to_prune(tmp_path, ["0.9"], keep=0) == {}
    ck.delete_checkpoint_files(ck.sets_to_prune(tmp_path, ["0.9"], keep=4))
    assert sorted(ck.checkpoint_files(tmp_path)) == [2, 3, 4, 5, 6]
