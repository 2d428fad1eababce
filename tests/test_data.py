"""The video loader on real encoded files whose frames carry their own index.

Frame i of every test video is a solid grey of level 10 + 6 i, which survives compression
(+-1 level) and resizing, so each decoded frame tells which frame it is.
"""
import collections
import contextlib
import dataclasses
import threading
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from ramvid.errors import UsageError
from ramvid.data import (
    ShortVideoError,
    VideoClipDataset,
    VideoSkippedWarning,
    list_videos,
    load_data,
    probe,
    read_window,
)
from ramvid.data.clips import RandomClipDataset
from ramvid.data.decode import _failure_reason, decode_window, stream_meta

GOP = 4
WIDTH, HEIGHT = 64, 48
SEQ_LEN = 8
IMAGE_SIZE = 16


def level(i):
    return 10 + 6 * i


def frame_indices(frames):
    """Frame index carried by each uint8 frame (T, H, W, C) or [-1, 1] video (C, T, H, W)."""
    if isinstance(frames, torch.Tensor):
        means = ((frames + 1) * 127.5).mean(dim=(0, 2, 3)).numpy()
    else:
        means = frames.reshape(len(frames), -1).mean(axis=1)
    return [int(round((m - 10) / 6)) for m in means]


H264 = dict(codec="libx264", options={"x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0"})
MPEG4 = dict(codec="mpeg4", context={"gop_size": GOP, "max_b_frames": 2, "bit_rate": 2_000_000})
GIF = dict(codec="gif", pix_fmt="rgb8")
VP8 = dict(codec="libvpx", options={"g": str(GOP)})


def encode(path, num_frames, codec, options=None, context=None, pix_fmt=None, muxer_options=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=muxer_options or {}) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height = WIDTH, HEIGHT
        if pix_fmt:
            stream.pix_fmt = pix_fmt
        stream.options = options or {}
        for name, value in (context or {}).items():
            setattr(stream.codec_context, name, value)
        for i in range(num_frames):
            rgb = np.full((HEIGHT, WIDTH, 3), level(i), np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def make_truncated(path):
    """An mp4 cut in half: the index (moov atom) written at the end is lost."""
    encode(path, 40, **H264)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.mp4").touch()
    make_truncated(folder / "truncated.mp4")
    encode(folder / "short.mp4", 5, **H264)
    (folder / "letter.avi").write_text("not a video, just text " * 50)
    return ["empty.mp4", "truncated.mp4", "short.mp4", "letter.avi"]


# The good data set: every container the loader claims, sorted order = this order.
GOOD = {
    "ant_3.gif": (24, GIF),
    "cat_1.mp4": (40, H264),
    "dog_2.avi": (30, MPEG4),
    "sub/cat_4.webm": (32, VP8),
    "sub/emu_5.MKV": (28, H264),
}


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    for name, (frames, spec) in GOOD.items():
        encode(root / name, frames, **spec)
    (root / "notes.txt").write_text("ignored")
    (root / "sub" / "labels.json").write_text("{}")
    return root


def good_frames(root, path):
    return GOOD[str(Path(path).relative_to(root))][0]


def test_list_videos_is_recursive_sorted_and_case_insensitive(good_dir):
    found = [str(p.relative_to(good_dir)) for p in list_videos(good_dir)]
    assert found == sorted(GOOD)
    with pytest.raises(UsageError, match="not a directory"):
        list_videos(good_dir / "missing")


@pytest.mark.parametrize("name", sorted(GOOD))
def test_probe_counts_frames_of_every_container(good_dir, name):
    info = probe(good_dir / name)
    assert (info.num_frames, info.fps, info.width, info.height) == (GOOD[name][0], 10.0, 64, 48)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_read_window_returns_exactly_the_requested_frames(good_dir, name):
    total = GOOD[name][0]
    for start in (0, 1, 5, 13, total - SEQ_LEN):
        window = read_window(good_dir / name, start, SEQ_LEN)
        assert window.shape == (SEQ_LEN, HEIGHT, WIDTH, 3) and window.dtype == np.uint8
        assert frame_indices(window) == list(range(start, start + SEQ_LEN)), start


@pytest.mark.parametrize("name", ["cat_1.mp4", "dog_2.avi", "sub/cat_4.webm", "sub/emu_5.MKV"])
def test_late_window_is_reached_by_seeking_not_by_decoding_from_the_start(good_dir, name):
    path = good_dir / name
    start = GOOD[name][0] - SEQ_LEN - 1
    decoded = [0]
    frames = decode_window(path, stream_meta(path), start, SEQ_LEN, lambda f: f, decoded)
    assert len(frames) == SEQ_LEN
    # One GOP before the window plus a few failed landings at most, never the whole prefix.
    assert decoded[0] <= SEQ_LEN + 3 * GOP < start + SEQ_LEN


def test_variable_frame_rate_is_read_by_timestamps(tmp_path):
    # Frames 0..11 last 1, 1, 10, 1, 1, 10, ... hundredths of a second, then every frame 4:
    # early frames collide under index = time * mean rate; only a pts table places them.
    path = tmp_path / "vfr.mp4"
    durations = [1, 1, 10] * 4 + [4] * 28
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = WIDTH, HEIGHT
        stream.codec_context.time_base = Fraction(1, 100)
        stream.options = H264["options"]
        pts = 0
        for i, duration in enumerate(durations):
            frame = av.VideoFrame.from_ndarray(
                np.full((HEIGHT, WIDTH, 3), level(i), np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 100)
            container.mux(stream.encode(frame))
            pts += duration
        container.mux(stream.encode())
    assert probe(path).num_frames == 40
    for start in (0, 2, 9, 30, 32):
        assert frame_indices(read_window(path, start, SEQ_LEN)) == list(range(start, start + 8))
    # Had the header been taken for constant-rate, the first window itself switches the file.
    constant = dataclasses.replace(stream_meta(path), pts_table=None, fps=Fraction(25))
    window = decode_window(path, constant, 0, SEQ_LEN, lambda f: f.to_ndarray(format="rgb24"))
    assert frame_indices(np.stack(window)) == list(range(SEQ_LEN))
    assert constant.pts_table is not None and constant.num_frames == 40


def test_read_window_outside_the_video_is_an_error(good_dir):
    with pytest.raises(ShortVideoError, match="cat_1.mp4"):
        read_window(good_dir / "cat_1.mp4", 35, SEQ_LEN)
    with pytest.raises(ValueError):
        read_window(good_dir / "cat_1.mp4", -1, SEQ_LEN)


def test_header_that_overstates_the_length_is_corrected_never_padded(tmp_path):
    # moov first (faststart), then the frame data cut: the header still claims 40 frames.
    path = encode(tmp_path / "cut.mp4", 40, **H264, muxer_options={"movflags": "faststart"})
    data = path.read_bytes()
    frames_at = data.find(b"mdat")
    path.write_bytes(data[: frames_at + (len(data) - frames_at) * 6 // 10])
    decodable = []
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                decodable.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError:
            pass
    assert SEQ_LEN <= len(decodable) < 40
    assert probe(path).num_frames >= len(decodable)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        items = RandomClipDataset(tmp_path, IMAGE_SIZE, SEQ_LEN, seed=0)
        starts = []
        for k in range(12):
            indices = frame_indices(items[k][0])
            assert indices == list(range(indices[0], indices[0] + SEQ_LEN))
            assert indices[-1] < len(decodable)
            starts.append(indices[0])
        read_window(path, len(decodable) - SEQ_LEN, SEQ_LEN)
        with pytest.raises(ShortVideoError):
            read_window(path, len(decodable) - SEQ_LEN + 1, SEQ_LEN)
    assert probe(path).num_frames == len(decodable)
    assert len(set(starts)) > 1


def test_bad_files_are_skipped_with_one_warning_each(tmp_path, good_dir):
    bad = make_bad_files(tmp_path)
    encode(tmp_path / "fine.mp4", 20, **H264)
    (tmp_path / "readme.txt").write_text("not a video extension: ignored silently")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = load_data(data_dir=tmp_path, batch_size=2, image_size=IMAGE_SIZE,
                           seq_len=SEQ_LEN, num_workers=0)
        video, cond = next(loader)
        load_data(data_dir=tmp_path, batch_size=2, image_size=IMAGE_SIZE, seq_len=SEQ_LEN)
    skipped = [str(w.message) for w in caught if issubclass(w.category, VideoSkippedWarning)]
    assert len(skipped) == len(bad)
    for name in bad:
        assert sum(name in message for message in skipped) == 1, name
    assert any("moov atom not found" in m for m in skipped if "truncated" in m)
    assert loader.paths == [tmp_path / "fine.mp4"]
    assert video.shape == (2, 3, SEQ_LEN, IMAGE_SIZE, IMAGE_SIZE) and cond == {}
    for clip in video:
        first = frame_indices(clip)[0]
        assert frame_indices(clip) == list(range(first, first + SEQ_LEN))


def test_directory_without_usable_video_names_the_directory_and_the_files(tmp_path):
    make_bad_files(tmp_path / "bad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UsageError) as error:
            load_data(data_dir=tmp_path / "bad", batch_size=1, image_size=8, seq_len=SEQ_LEN)
    message = str(error.value)
    assert str(tmp_path / "bad") in message and "found 4 files" in message
    assert "0 of >= 8 frames" in message and "short.mp4 (5 frames" in message
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(UsageError, match="found 1 files, none of them a video"):
        load_data(data_dir=tmp_path / "text", batch_size=1, image_size=8, seq_len=SEQ_LEN)


def test_resize_and_crop_follows_the_box_halving_then_bicubic_recipe():
    from ramvid.data import preprocess_frame

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (201, 301, 3), dtype=np.uint8))
    # 301x201 -> box 151x101 -> box 76x51 (51 < 2*40 stops) -> bicubic 60x40 -> crop x 10..50
    expected = image.reduce(2).reduce(2)
    assert expected.size == (76, 51)
    expected = expected.resize((60, 40), Image.BICUBIC).crop((10, 0, 50, 40))
    assert np.array_equal(preprocess_frame(image, 40), np.asarray(expected))
    gray = preprocess_frame(image, 40, rgb=False)
    assert gray.shape == (40, 40, 1)
    assert np.array_equal(gray[:, :, 0], np.asarray(expected.convert("L")))


def test_centre_crop_keeps_the_centre():
    stripe = np.zeros((128, 256), np.uint8)
    stripe[:, 96:160] = 255  # the central quarter of the width
    out = preprocess_frame_gray(stripe, 32)  # 256x128 -> 64x32, crop columns 16..48
    assert out[:, 8:24].min() > 200 and out[:, :7].max() < 50 and out[:, 25:].max() < 50


def preprocess_frame_gray(array, size):
    from ramvid.data import preprocess_frame

    return preprocess_frame(Image.fromarray(array).convert("RGB"), size, rgb=False)[:, :, 0]


@pytest.mark.parametrize("rgb", [True, False])
def test_clip_equals_raw_frames_through_pillow(good_dir, rgb):
    dataset = VideoClipDataset(good_dir, IMAGE_SIZE, SEQ_LEN, rgb=rgb, start=3)
    video, label = dataset[1]  # cat_1.mp4, frames 3..10
    assert video.dtype == torch.float32 and label == -1
    assert video.shape == (3 if rgb else 1, SEQ_LEN, IMAGE_SIZE, IMAGE_SIZE)
    raw = read_window(good_dir / "cat_1.mp4", 3, SEQ_LEN)
    for t, frame in enumerate(raw):
        image = Image.fromarray(frame)
        # 64x48 -> (48 >= 32) box 32x24 -> bicubic 21x16 -> crop x 2..18
        image = image.reduce(2).resize((21, 16), Image.BICUBIC)
        image = np.array(image.crop((2, 0, 18, 16)).convert("RGB" if rgb else "L"))
        expected = torch.from_numpy(image.reshape(16, 16, -1)).permute(2, 0, 1) / 127.5 - 1
        assert torch.equal(video[:, t], expected.float())
    assert frame_indices(video) == list(range(3, 3 + SEQ_LEN))


def test_class_labels_are_numbered_over_all_files_in_sorted_order(good_dir):
    names = ["ant", "cat", "dog", "emu"]
    clips = VideoClipDataset(good_dir, 8, SEQ_LEN, class_cond=True)
    assert clips.class_names == names and clips.num_classes == 4
    assert [clips[i][1] for i in range(5)] == [0, 1, 2, 1, 3]  # ant, cat, dog, cat (webm), emu
    rank1 = VideoClipDataset(good_dir, 8, SEQ_LEN, class_cond=True, rank=1, world_size=2)
    assert rank1.class_names == names
    assert [rank1[i][1] for i in range(2)] == [1, 1]  # cat_1.mp4, sub/cat_4.webm
    loader = load_data(data_dir=good_dir, batch_size=5, image_size=8, seq_len=SEQ_LEN,
                       class_cond=True, num_workers=0)
    assert loader.class_names == names and loader.num_classes == 4
    _, cond = next(loader)
    assert cond["y"].dtype == torch.long and set(cond["y"].tolist()) <= {0, 1, 2, 3}


def test_ranks_get_interleaved_disjoint_shards(good_dir):
    everything = list_videos(good_dir)
    shards = [
        load_data(data_dir=good_dir, batch_size=1, image_size=8, seq_len=SEQ_LEN, rank=r,
                  world_size=2, num_workers=0).paths
        for r in range(2)
    ]
    assert shards == [everything[0::2], everything[1::2]]
    with pytest.raises(UsageError, match="5 video files for 6 ranks"):
        load_data(data_dir=good_dir, batch_size=1, image_size=8, seq_len=SEQ_LEN,
                  rank=0, world_size=6)
    with pytest.raises(UsageError, match="rank 2 is outside world size 2"):
        load_data(data_dir=good_dir, batch_size=1, image_size=8, seq_len=SEQ_LEN,
                  rank=2, world_size=2)


def take(loader, n):
    return [next(loader)[0] for _ in range(n)]


def training_loader(root, **overrides):
    flags = dict(data_dir=root, batch_size=3, image_size=8, seq_len=SEQ_LEN, seed=7)
    return load_data(**{**flags, **overrides})


def test_training_items_do_not_depend_on_the_number_of_workers(good_dir):
    serial = take(training_loader(good_dir, num_workers=0), 4)
    parallel = take(training_loader(good_dir, num_workers=2), 4)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))
    starts = {frame_indices(clip)[0] for batch in serial for clip in batch}
    assert len(starts) > 3  # windows really are random
    for batch in serial:
        for clip in batch:
            first = frame_indices(clip)[0]
            assert frame_indices(clip) == list(range(first, first + SEQ_LEN))
    other_seed = take(training_loader(good_dir, num_workers=0, seed=8), 4)
    assert not all(torch.equal(a, b) for a, b in zip(serial, other_seed))


def test_each_epoch_visits_every_file_once(good_dir):
    items = RandomClipDataset(good_dir, 8, SEQ_LEN, seed=3)
    for epoch in range(2):
        visited = [items._entry_for(epoch * 5 + k).path for k in range(5)]
        assert sorted(visited) == list_videos(good_dir)


def test_resumed_loader_continues_with_the_same_items(good_dir):
    first = training_loader(good_dir, num_workers=2)
    take(first, 2)
    state = first.state_dict()
    assert state["items_consumed"] == 6
    expected = take(first, 2)
    resumed = training_loader(good_dir, num_workers=0)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, take(resumed, 2)))


def test_sampling_clips_read_each_file_once_in_sorted_order(good_dir):
    clips = VideoClipDataset(good_dir, 8, SEQ_LEN, start=2)
    assert len(clips) == 5
    videos = [clips[i][0] for i in range(5)]
    assert [frame_indices(c) for c in videos] == [list(range(2, 2 + SEQ_LEN))] * 5
    again = VideoClipDataset(good_dir, 8, SEQ_LEN, start=2)
    assert all(torch.equal(a, again[i][0]) for i, a in enumerate(videos))
    # Each clip comes from its own file: the gif is first and has 24 frames, so start=20
    # gives its last window (16..23) while the longer files start at 20.
    late = VideoClipDataset(good_dir, 8, SEQ_LEN, start=20)
    assert [frame_indices(late[i][0])[0] for i in range(5)] == [16, 20, 20, 20, 20]


def test_workers_survive_the_stop_signal_meant_for_the_main_process(good_dir):
    """Launchers signal the whole process group; training must still get its next batch."""
    import os
    import signal
    import time

    loader = training_loader(good_dir, num_workers=2)
    take(loader, 1)
    workers = loader._batches._workers  # the DataLoader iterator's worker processes
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
    time.sleep(0.5)  # time for a worker to die if it were going to
    assert all(w.is_alive() for w in workers)
    assert take(loader, 2)[1].shape[0] == 3


def test_a_bad_files_reason_is_its_own_while_other_probes_fail(tmp_path):
    """Probes run in threads: the reason given for the truncated file is FFmpeg's line for that
    file even while other threads fail on another bad file at the same moment. Seen red (39
    of 1000) with the reason read from the exception's "last error log", which is the
    whole process's last line."""
    make_bad_files(tmp_path)
    done = threading.Event()

    def fail_elsewhere():
        while not done.is_set():
            with contextlib.suppress(av.FFmpegError, OSError):
                av.open(str(tmp_path / "letter.avi")).close()

    others = [threading.Thread(target=fail_elsewhere) for _ in range(3)]
    for thread in others:
        thread.start()
    reasons = collections.Counter()
    try:
        for _ in range(1000):
            try:
                av.open(str(tmp_path / "truncated.mp4")).close()
            except (av.FFmpegError, OSError) as error:
                reasons[_failure_reason(tmp_path / "truncated.mp4", error)] += 1
    finally:
        done.set()
        for thread in others:
            thread.join()
    assert reasons == {"moov atom not found": 1000}
