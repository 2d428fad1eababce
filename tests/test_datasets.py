"""The synthetic sprite set and the real-dataset converters (datasets/)."""
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import google_crc32c
import numpy as np
import pytest

from datasets import bair, kinetics600, synthetic, ucf101
from datasets.bair import TFRecordError, masked_crc32c, parse_example, read_records
from ramvid.data import class_name_of, probe, read_window
from ramvid.errors import UsageError
from ramvid.video_io import video_writer, write_video

REPO = Path(__file__).resolve().parents[1]


def read_video(path):
    """Every frame of `path`: uint8 (T, H, W, 3), through the loader's own reader."""
    return read_window(path, 0, probe(path).num_frames)


# ---------------------------------------------------------------- synthetic sprites

def test_same_seed_same_clips_and_other_seeds_or_splits_differ():
    a = synthetic.make_clips(6, image_size=16, num_frames=16, seed=0)
    b = synthetic.make_clips(6, image_size=16, num_frames=16, seed=0)
    np.testing.assert_array_equal(a.videos, b.videos)
    np.testing.assert_array_equal(a.centers, b.centers)
    assert a.labels == b.labels
    other_seed = synthetic.make_clips(6, image_size=16, num_frames=16, seed=1)
    test_split = synthetic.make_clips(6, image_size=16, num_frames=16, seed=0, split="test")
    for other in (other_seed, test_split):
        assert all(not np.array_equal(x, y) for x, y in zip(a.videos, other.videos))


def test_sprites_move_with_constant_velocity_and_bounce_elastically():
    size, frames = 32, 24
    clips = synthetic.make_clips(40, image_size=size, num_frames=frames, seed=3)
    bounces = 0
    for i in range(40):
        for k in range(clips.num_sprites[i]):
            # Step-by-step billiard dynamics, independent of the generator's closed form.
            low, high = clips.radii[i, k], size - clips.radii[i, k]
            position, velocity = clips.centers[i, k, 0].copy(), clips.velocities[i, k].copy()
            for t in range(1, frames):
                position += velocity
                for axis in range(2):
                    for wall in (low, high):
                        if (position[axis] - wall) * (1 if wall == high else -1) > 0:
                            position[axis] = 2 * wall - position[axis]
                            velocity[axis] = -velocity[axis]
                            bounces += 1
                np.testing.assert_allclose(clips.centers[i, k, t], position, atol=1e-9)
    assert bounces > 20  # the clips do exercise the walls
    # One frame does not tell the motion: directions and speeds vary from clip to clip.
    v = clips.velocities[:, 0]
    assert ((v > 0).any(axis=0) & (v < 0).any(axis=0)).all()
    speed = np.linalg.norm(v, axis=1)
    assert speed.min() >= 0.03 * size - 1e-9 and speed.max() <= 0.07 * size + 1e-9


@pytest.mark.parametrize("size", [32, 64])
def test_frames_show_the_main_sprite_on_top_at_its_centre(size):
    clips = synthetic.make_clips(20, image_size=size, num_frames=16, seed=5)
    overlapping_frames = 0
    for i in range(20):
        is_main = (clips.videos[i] == clips.colors[i, 0]).all(axis=-1)  # (T, H, W)
        counts = is_main.sum(axis=(1, 2))
        ys, xs = np.arange(size) + 0.5, np.arange(size) + 0.5
        centroid = np.stack([(is_main.sum(2) * ys).sum(1), (is_main.sum(1) * xs).sum(1)], 1)
        np.testing.assert_allclose(centroid / counts[:, None], clips.centers[i, 0], atol=0.5)
        for k in range(1, clips.num_sprites[i]):
            gap = np.linalg.norm(clips.centers[i, 0] - clips.centers[i, k], axis=1)
            close = gap < 0.5 * (clips.radii[i, 0] + clips.radii[i, k])
            overlapping_frames += close.sum()
            # Drawn on top, the main sprite keeps (up to rasterisation) its full area.
            assert (counts[close] >= 0.85 * np.median(counts)).all()
    assert overlapping_frames > 0


@pytest.mark.parametrize("size", [16, 32, 64])
def test_written_clips_decode_to_the_generated_arrays(tmp_path, size):
    written = synthetic.generate(tmp_path, num_train=4, num_test=2, image_size=size,
                                 num_frames=16, seed=7)
    for split, count in (("train", 4), ("test", 2)):
        clips = synthetic.make_clips(count, image_size=size, num_frames=16, seed=7, split=split)
        assert [class_name_of(p) for p in written[split]] == clips.labels
        for path, video in zip(written[split], clips.videos):
            with av.open(str(path)) as container:
                decoded = np.stack([f.to_ndarray(format="rgb24")
                                    for f in container.decode(video=0)])
            assert decoded.shape == (16, size, size, 3)
            # The codec is lossless: the measured round-trip error is exactly 0.
            assert np.abs(decoded.astype(int) - video).max() == 0


def test_lossy_writer_is_close_but_the_default_is_exact(tmp_path):
    video = synthetic.make_clips(1, image_size=32, num_frames=8, seed=1).videos[0]
    write_video(tmp_path / "exact.mp4", video)
    write_video(tmp_path / "lossy.mp4", video, crf=18)
    assert np.array_equal(read_video(tmp_path / "exact.mp4"), video)
    lossy = read_video(tmp_path / "lossy.mp4").astype(int)
    assert np.abs(lossy - video).mean() < 8 and np.abs(lossy - video).max() > 0


def test_writer_restamps_decoded_frames_at_its_own_rate(tmp_path):
    """Frames decoded from another file (as Kinetics-600 clips are re-encoded) get consecutive
    timestamps at the written rate. Seen to catch: video_writer setting only `frame.pts = None`
    (the encoder's frame count is then read in the source's time base, 1/10240 s here, and
    every timestamp rounds to 0: ramvid's loader counted 1 frame in each converted clip)."""
    source = tmp_path / "source.mp4"
    write_tiny_video(source, [10 * i for i in range(12)], codec="libx264")
    with av.open(str(source)) as container, \
            video_writer(tmp_path / "copy.mp4", 64, 48, 10, crf=18) as write:
        for frame in container.decode(video=0):
            write(frame)
    with av.open(str(tmp_path / "copy.mp4")) as container:
        stream = container.streams.video[0]
        times = sorted(p.pts * stream.time_base for p in container.demux(stream) if p.size)
    assert times == [Fraction(k, 10) for k in range(12)]
    assert probe(tmp_path / "copy.mp4").num_frames == 12


def test_writer_passes_encoder_options_through(tmp_path):
    """`video_writer(..., g="10")` reaches the encoder: a keyframe at least every 10 frames
    (x264's own default is 250). Seen to catch: video_writer dropping its `options` (the loader
    benchmark's --gop was then ignored)."""
    levels = np.linspace(0, 250, 30).astype(np.uint8)
    path = tmp_path / "gop.mp4"
    with video_writer(path, 32, 32, 10, crf=23, preset="ultrafast", g="10") as write:
        for level in levels:
            frame = np.full((32, 32, 3), level, np.uint8)
            write(av.VideoFrame.from_ndarray(frame, format="rgb24"))
    with av.open(str(path)) as container:
        keys = [i for i, frame in enumerate(container.decode(video=0)) if frame.key_frame]
    assert keys[0] == 0 and max(np.diff(keys + [len(levels)])) <= 10, keys


def run_script(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_synthetic_cli_as_script_and_module(tmp_path):
    out = tmp_path / "sprites"
    result = run_script("datasets/synthetic.py", "--out_dir", str(out), "--num_train", "6",
                        "--num_test", "3", "--image_size", "16", "--num_frames", "16")
    assert result.returncode == 0, result.stderr
    assert "train: 6 clips" in result.stdout and "test: 3 clips" in result.stdout
    assert len(list((out / "train").glob("*.mp4"))) == 6
    assert {class_name_of(p) for p in out.glob("*/*.mp4")} <= set(synthetic.SHAPES)

    again = run_script("-m", "datasets.synthetic", "--out_dir", str(out), "--num_train", "2")
    assert again.returncode == 2
    assert again.stderr.startswith("synthetic.py: error:") and "--overwrite True" in again.stderr
    assert "Traceback" not in again.stderr and len(list(out.glob("*/*.mp4"))) == 9

    replaced = run_script("-m", "datasets.synthetic", "--out_dir", str(out), "--num_train", "2",
                          "--num_test", "1", "--overwrite", "True")
    assert replaced.returncode == 0, replaced.stderr
    assert len(list(out.glob("*/*.mp4"))) == 3  # no stale clips of the larger set remain

    bad = run_script("datasets/synthetic.py", "--out_dir", str(out), "--image_size", "4")
    assert bad.returncode == 2 and "--image_size" in bad.stderr and "Traceback" not in bad.stderr


def test_class_prefixes():
    assert class_name_of("data/sprites/train/circle_00012.mp4") == "circle"
    assert kinetics600.class_tokens(["playing guitar", "massaging person's head",
                                     "passing American football (in game)"]) == {
        "playing guitar": "PlayingGuitar", "massaging person's head": "MassagingPersonsHead",
        "passing American football (in game)": "PassingAmericanFootballInGame"}
    assert ucf101.output_name("HandstandPushups", "v_HandStandPushups_g01_c01.avi") == \
        "HandstandPushups_g01_c01.avi"
    with pytest.raises(UsageError, match="both become class"):
        kinetics600.class_tokens(["tai chi", "tai_chi"])


# ---------------------------------------------------------------- BAIR TFRecords

def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, payload):
    """A length-delimited protobuf field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def example_bytes(features):
    """Serialize a tf.train.Example: {name: bytes | list[float] | list[int]}."""
    entries = b""
    for name, value in features.items():
        if isinstance(value, bytes):
            feature = field(1, field(1, value))  # bytes_list
        elif isinstance(value[0], float):
            feature = field(2, field(1, struct.pack(f"<{len(value)}f", *value)))  # packed floats
        else:
            feature = field(3, field(1, b"".join(varint(v % 2 ** 64) for v in value)))
        entries += field(1, field(1, name.encode()) + field(2, feature))
    return field(1, entries)


def masked(data):
    crc = google_crc32c.value(data)
    return ((crc >> 15 | crc << 17) + 0xA282EAD8) % 2 ** 32


def tfrecord_bytes(records):
    out = b""
    for data in records:
        length = struct.pack("<Q", len(data))
        out += length + struct.pack("<I", masked(length)) + data + struct.pack("<I", masked(data))
    return out


def bair_sequence(rng, steps=30):
    frames = rng.integers(0, 256, (steps, 64, 64, 3), dtype=np.uint8)
    features = {}
    for i, frame in enumerate(frames):
        features[f"{i}/action"] = [float(v) for v in rng.normal(size=4).astype(np.float32)]
        features[f"{i}/endeffector_pos"] = [float(v) for v in rng.normal(size=3).astype(np.float32)]
        features[f"{i}/image_aux1/encoded"] = frame.tobytes()
    return frames, example_bytes(features)


def test_crc32c_check_value_and_example_parsing():
    """Catches: another kind of feature read as a bytes list (break: take Feature field 3, the
    int64 list, for field 1)."""
    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert masked_crc32c(b"123456789") == masked(b"123456789")
    features = {"f": [0.5, -2.0], "img": b"\x00\xff", "n": [3, -7, 2 ** 40], "e": b""}
    # Float and int64 features (packed lists) are skipped over, not read.
    assert parse_example(example_bytes(features)) == {"f": [], "img": [b"\x00\xff"], "n": [],
                                                      "e": [b""]}


@pytest.fixture
def bair_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "softmotion30_44k"
    sequences = {}
    for split, name, count in (("train", "traj_0_to_255", 2), ("test", "traj_0_to_255", 1)):
        (root / split).mkdir(parents=True)
        pairs = [bair_sequence(rng) for _ in range(count)]
        (root / split / f"{name}.tfrecords").write_bytes(tfrecord_bytes([d for _, d in pairs]))
        sequences[split] = [f for f, _ in pairs]
    return root, sequences


def test_bair_converts_every_sequence_losslessly(bair_dir, tmp_path):
    root, sequences = bair_dir
    written = bair.convert(root, tmp_path / "bair", progress=False)
    assert written == {"train": 2, "test": 1}
    for split, frames in sequences.items():
        paths = sorted((tmp_path / "bair" / split).glob("*.mp4"))
        names = [f"bair_traj_0_to_255_{k:03d}.mp4" for k in range(len(frames))]
        assert [p.name for p in paths] == names
        for path, expected in zip(paths, frames):
            np.testing.assert_array_equal(read_video(path), expected)


def test_bair_reports_a_corrupted_record_by_file_and_offset(bair_dir, tmp_path, capsys):
    root, _ = bair_dir
    path = root / "train" / "traj_0_to_255.tfrecords"
    data = bytearray(path.read_bytes())
    second = 16 + struct.unpack("<Q", data[:8])[0]  # byte offset of the second record
    data[second + 12 + 1000] ^= 0x01  # one bit of an image in the second record
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=f"{path}: data checksum mismatch .* at byte {second}"):
        list(read_records(path))
    data[second + 12 + 1000] ^= 0x01
    data[second + 2] ^= 0x01  # the length field
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=f"length checksum mismatch .* at byte {second}"):
        list(read_records(path))

    with pytest.raises(SystemExit) as exit_info:
        bair.main(["--bair_dir", str(root), "--out_dir", str(tmp_path / "o")])
    message = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert exit_info.value.code == 2 and ": error: " in message and str(path) in message


# ---------------------------------------------------------------- UCF-101

def write_tiny_video(path, frames, fps=10, codec="mpeg4"):
    """A real encoded video whose frame i is uniformly grey at level frames[i]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for level in frames:
            image = np.full((48, 64, 3), level, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def test_ucf101_split_arrangement(tmp_path, capsys):
    ucf = tmp_path / "UCF-101"
    videos = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
              "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
              "HandstandPushups/v_HandStandPushups_g01_c01.avi", "YoYo/v_YoYo_g25_c03.avi"]
    for relative in videos:
        write_tiny_video(ucf / relative, [100, 120])
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    # The official lists use Windows line ends; the test list has no label column.
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nYoYo/v_YoYo_g25_c03.avi 101\r\n"
        "YoYo/v_YoYo_g24_c01.avi 101\r\n")
    (lists / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
        "HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n")

    written, missing = ucf101.arrange(ucf, lists, tmp_path / "out", split=1, mode="symlink")
    assert written == {"train": 2, "test": 2} and missing == ["YoYo/v_YoYo_g24_c01.avi"]
    assert "YoYo/v_YoYo_g24_c01.avi" in capsys.readouterr().err
    train = sorted((tmp_path / "out" / "train").iterdir())
    test = sorted((tmp_path / "out" / "test").iterdir())
    assert [p.name for p in train] == ["ApplyEyeMakeup_g08_c01.avi", "YoYo_g25_c03.avi"]
    assert [class_name_of(p) for p in test] == ["ApplyEyeMakeup", "HandstandPushups"]
    assert all(p.is_symlink() and p.resolve().parent.parent == ucf.resolve() for p in train + test)
    assert read_video(train[0]).shape == (2, 48, 64, 3)

    ucf101.arrange(ucf, lists, tmp_path / "copied", split=1, mode="copy")
    copied = sorted((tmp_path / "copied" / "test").iterdir())
    assert not any(p.is_symlink() for p in copied)
    assert copied[1].read_bytes() == (ucf / videos[2]).read_bytes()

    with pytest.raises(UsageError, match="trainlist02.txt"):
        ucf101.arrange(ucf, lists, tmp_path / "other", split=2)


# ---------------------------------------------------------------- Kinetics-600

def test_kinetics_trims_resizes_and_skips_missing_or_broken(tmp_path, capsys):
    clips = tmp_path / "downloads"
    levels = [10 + 6 * i for i in range(40)]  # frame i (at i / 10 s) is grey level 10 + 6 i
    write_tiny_video(clips / "abcdefghijk.mp4", levels, codec="libx264")  # whole 4 s video
    write_tiny_video(clips / "x_y-z012345_000010_000012.mp4", levels[:20], codec="libx264")  # cut
    (clips / "brokenbroke.mp4").write_bytes(b"not a video at all")
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "playing guitar,abcdefghijk,1,3,train\n"
        "tai chi,x_y-z012345,10,12,validate\n"
        "abseiling,missingmiss,0,10,train\n"
        "abseiling,brokenbroke,0,10,train\n")
    out = tmp_path / "kinetics"

    outcomes = kinetics600.convert(csv_path, clips, out, short_side=32, progress=False)
    assert outcomes == {"written": 2, "missing": 1, "broken": 1}
    err = capsys.readouterr().err
    assert "missingmiss" in err and "brokenbroke.mp4" in err

    trimmed = read_video(out / "train" / "PlayingGuitar_abcdefghijk_000001_000003.mp4")
    assert trimmed.shape == (20, 32, 42, 3)  # [1 s, 3 s) at 10 fps; short side 48 -> 32
    first_and_last = trimmed[[0, -1]].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(first_and_last, [levels[10], levels[29]], atol=3)
    whole = read_video(out / "validate" / "TaiChi_x_y-z012345_000010_000012.mp4")
    assert whole.shape == (20, 32, 42, 3)
    assert {class_name_of(p) for p in out.glob("*/*.mp4")} == {"PlayingGuitar", "TaiChi"}

    again = kinetics600.convert(csv_path, clips, out, short_side=32, progress=False)
    assert again == {"existing": 2, "missing": 1, "broken": 1}  # a rerun resumes
