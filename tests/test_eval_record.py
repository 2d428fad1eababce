"""video_eval.py reads the sample run's record (sample_args.json): which frames were given and
how many samples each clip has come from there; flags that contradict it are errors; a file
without a record needs the flags and the report says where the settings came from."""
import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sample_fixtures import load_npz, load_script, make_checkpoint, make_videos, run_script, runs_as

pytestmark = pytest.mark.usefixtures("one_thread")
PER_CLIP, CLIPS = 2, 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A prediction run with given frames 0 and 1, 2 samples for each of the 3 clips."""
    root = tmp_path_factory.mktemp("eval_record")
    ckpt, data = make_checkpoint(root / "run"), make_videos(root / "data")
    monkeypatch = pytest.MonkeyPatch()
    try:
        monkeypatch.setattr("sys.argv", ["video_sample.py"])
        return run_script("video_sample", [
            "--model_path", ckpt, "--data_dir", data, "--cond_frames", "0,1,", "--save_gt", "True",
            "--samples_per_clip", PER_CLIP, "--num_samples", PER_CLIP * CLIPS,
            "--timestep_respacing", 3, "--save_video", "none", "--progress", "False"],
            root / "predict", monkeypatch)
    finally:
        monkeypatch.undo()


_argv0 = runs_as("video_eval")


def _psnr_by_hand(samples, gt, first_scored):
    """Best- and mean-of-N PSNR over frames first_scored.. on the [0, 1] scale (numpy only)."""
    s = samples.reshape(CLIPS, PER_CLIP, *samples.shape[1:])[:, :, first_scored:] / 255.0
    g = gt.reshape(CLIPS, PER_CLIP, *gt.shape[1:])[:, :1, first_scored:] / 255.0
    mse = ((s - g) ** 2).mean(axis=(3, 4, 5))  # (clips, samples, frames)
    per_sample = (-10 * np.log10(np.maximum(mse, 1e-10))).mean(axis=2)
    return per_sample.max(axis=1).mean(), per_sample.mean()


def _error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("video_eval").main([str(a) for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("video_eval.py: error:") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_record_decides_given_frames_and_samples_per_clip(run, capsys):
    """Catches an evaluation that scores the copied frame 1 (PSNR far too high), or that
    takes the 6 samples as 6 clips x 1 (best-of-N equal to the mean)."""
    load_script("video_eval").main(["--samples", str(run), "--fvd", "False"])
    results = json.loads((run / "eval.json").read_text())
    assert results["cond_frames"] == [0, 1] and results["samples_per_clip"] == PER_CLIP
    assert results["num_clips"] == CLIPS
    assert results["settings_from"] == str(run / "sample_args.json")
    samples = load_npz(run / "6x6x16x16x3.npz")["arr_0"]
    gt = load_npz(run / "gt_6x6x16x16x3.npz")["arr_0"]
    best, mean = _psnr_by_hand(samples, gt, first_scored=2)
    assert results["psnr_best"] == pytest.approx(best, rel=1e-5)
    assert results["psnr_mean"] == pytest.approx(mean, rel=1e-5)
    assert results["psnr_best"] > results["psnr_mean"]
    assert "taken from " + str(run / "sample_args.json") in capsys.readouterr().out


@pytest.mark.parametrize("flags, both", [
    (["--protocol", "bair"], ["--protocol bair gives frames [0]", "records given frames [0, 1]"]),
    (["--cond_frames", "0,"], ["--cond_frames 0,", "given frames [0, 1] (--cond_frames 0,1,)"]),
    (["--samples_per_clip", "1"], ["--samples_per_clip 1", f"drew {PER_CLIP} samples per clip"]),
])
def test_flags_that_contradict_the_record_are_errors(run, capsys, flags, both):
    """Catches flags that silently override the record (the README trap: --protocol bair on a
    run with two given frames scores frame 1, a copy of the ground truth)."""
    err = _error(["--samples", run / "6x6x16x16x3.npz", "--fvd", "False", *flags], capsys)
    for text in both:
        assert text in err


def test_without_a_record_the_flags_are_required(run, tmp_path, capsys):
    """Catches a foreign npz evaluated with guessed settings."""
    for name in ("6x6x16x16x3.npz", "gt_6x6x16x16x3.npz"):
        shutil.copy(run / name, tmp_path / name)
    files = ["--samples", tmp_path / "6x6x16x16x3.npz", "--gt", tmp_path / "gt_6x6x16x16x3.npz",
             "--fvd", "False"]
    assert "--cond_frames is required without a sample record" in _error(files, capsys)
    err = _error(files + ["--cond_frames", "0,1,"], capsys)
    assert "--samples_per_clip is required without a sample record" in err
    load_script("video_eval").main([str(a) for a in files + [
        "--cond_frames", "0,1,", "--samples_per_clip", PER_CLIP]])
    results = json.loads((tmp_path / "6x6x16x16x3_eval.json").read_text())
    assert results["settings_from"].startswith("the command line")
    best, _ = _psnr_by_hand(load_npz(run / "6x6x16x16x3.npz")["arr_0"],
                            load_npz(run / "gt_6x6x16x16x3.npz")["arr_0"], first_scored=2)
    assert results["psnr_best"] == pytest.approx(best, rel=1e-5)


def test_a_file_that_disagrees_with_its_record_is_refused(run, tmp_path, capsys):
    """Catches a samples file swapped under a record that describes another run (4 of the 6
    samples kept): the record's clip and sample counts would be applied to the wrong array.
    Seen red with the shape check removed; the shape is read from the npz header only."""
    shutil.copy(run / "sample_args.json", tmp_path / "sample_args.json")
    samples = load_npz(run / "6x6x16x16x3.npz")["arr_0"]
    np.savez(tmp_path / "6x6x16x16x3.npz", samples[:4])
    err = _error(["--samples", tmp_path / "6x6x16x16x3.npz", "--fvd", "False"], capsys)
    assert "records 6 samples of 6 frames, the file holds shape (4, 6, 16, 16, 3)" in err


def test_sample_files_are_read_from_disk_clip_by_clip(tmp_path):
    """Expected: the values np.load reads, without the file in memory (tracemalloc sees numpy's
    allocations). Catches loading a whole samples or repeated ground-truth file (5 GB for BAIR's
    256 x 100 samples) before scoring it, and a map at the wrong offset (values differ)."""
    import tracemalloc

    from ramvid.metrics.command import load_clips, one_row_per_clip
    from ramvid.sample.files import write_npz

    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (40, 8, 32, 32, 3), dtype=np.uint8)   # 40 clips
    repeated = np.repeat(clips, 5, axis=0)                             # 5 rows each: 4.9 MB
    path = write_npz(tmp_path / "gt_repeated.npz", [repeated, np.arange(200)])
    tracemalloc.start()
    try:
        mapped = load_clips(path, "--gt")
        one_per_clip = one_row_per_clip(mapped, len(repeated), 5, path, note=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * clips.nbytes, peak  # the one row per clip it returns, a clip or two more
    with np.load(path) as data:
        np.testing.assert_array_equal(mapped, data["arr_0"])
    np.testing.assert_array_equal(one_per_clip, clips)

    np.savez_compressed(tmp_path / "foreign.npz", clips)  # compressed: read whole, same values
    np.testing.assert_array_equal(load_clips(tmp_path / "foreign.npz", "--samples"), clips)


def test_a_failed_write_leaves_the_earlier_eval_json(run, monkeypatch):
    """A disk that fills while eval.json is written leaves the earlier eval.json whole, never a
    truncated file. Seen red with eval.json written in place (half of it left behind)."""
    load_script("video_eval").main(["--samples", str(run), "--fvd", "False"])
    before = (run / "eval.json").read_bytes()
    real_write = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises((OSError, SystemExit)):
        load_script("video_eval").main(["--samples", str(run), "--fvd", "False"])
    monkeypatch.undo()
    assert (run / "eval.json").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.startswith(".eval.json")]
