"""The embedded synthetic data set: coloured sprites bouncing in a box.

    python datasets/synthetic.py --out_dir data/sprites --num_train 400 --num_test 64 --seed 0

Sprites move with constant velocity and bounce off the walls: one frame fixes where they are,
two the whole clip, so prediction and infilling are well posed (docs/DATASETS.md).
"""
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as `python datasets/synthetic.py`: import from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.common import OUT_DIR, OVERWRITE, prepare_split_dir  # noqa: E402
from ramvid.data import class_name_of  # noqa: E402
from ramvid.errors import UsageError  # noqa: E402
from ramvid.video_io import write_video  # noqa: E402
from ramvid.flags import Flag, at_least, parse, positive, user_errors  # noqa: E402

SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUND = np.array([16, 16, 24], np.uint8)
PALETTE = np.array([  # saturated colours, far from the background and from each other
    [230, 60, 50], [60, 200, 70], [70, 110, 240], [240, 210, 50],
    [200, 70, 220], [60, 210, 220], [245, 140, 40], [235, 235, 235],
], np.uint8)
SPLIT_IDS = {"train": 0, "test": 1, "val": 2}
# Sprite size and speed as fractions of the frame size, so the motion looks the same at any size.
RADIUS_RANGE = (0.14, 0.22)  # circumradius: every shape fits in the circle of this radius
SPEED_RANGE = (0.03, 0.07)  # pixels per frame / image_size
SHAPE_COLORS = PALETTE[:len(SHAPES)]  # with color_by_shape: circle red, square green, ...


@dataclass
class SpriteClips:
    """Clips and the ground truth behind them. S = max_sprites; absent sprites are padding."""
    videos: np.ndarray  # (N, T, H, W, 3) uint8
    labels: list  # class of each clip: the shape name of its main sprite
    num_sprites: np.ndarray  # (N,) how many sprites each clip shows
    shapes: np.ndarray  # (N, S) index into SHAPES
    colors: np.ndarray  # (N, S, 3) uint8
    radii: np.ndarray  # (N, S) circumradius in pixels
    centers: np.ndarray  # (N, S, T, 2) (y, x) in pixels; pixel i covers [i, i + 1)
    velocities: np.ndarray  # (N, S, 2) initial (y, x) velocity in pixels per frame


def shape_mask(shape, dy, dx, radius):
    """Pixels inside a sprite; dy, dx are pixel-centre offsets from its centre (centroid)."""
    name = SHAPES[shape]
    if name == "circle":
        return dy ** 2 + dx ** 2 <= radius ** 2
    if name == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) <= radius / np.sqrt(2)
    if name == "diamond":
        return np.abs(dy) + np.abs(dx) <= radius
    # triangle: equilateral, pointing up, vertices on the circumcircle
    return (dy <= radius / 2) & (np.abs(dx) <= (dy + radius) / np.sqrt(3))


def sample_clip(seed, split, index, image_size, num_frames, max_sprites, speed, radius,
                color_by_shape):
    """Draw clip `index` of `split` and render it; returns a dict of per-clip arrays and its
    label. Each clip has its own generator seeded by (seed, split, index): any clip can be
    reproduced alone and the splits never share one."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    n = int(rng.integers(1, max_sprites + 1))
    shapes = rng.integers(0, len(SHAPES), n)
    colors = PALETTE[rng.choice(len(PALETTE), n, replace=False)]
    if color_by_shape:  # drawn anyway, so the other draws do not depend on this choice
        colors = SHAPE_COLORS[shapes]
    radii = rng.uniform(*radius, n) * image_size
    low, high = radii[:, None], image_size - radii[:, None]  # (n, 1): the centre stays inside
    start = rng.uniform(low, high, (n, 2))
    speed = rng.uniform(*speed, n) * image_size
    angle = rng.uniform(0, 2 * np.pi, n)
    velocity = speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)  # (n, 2)
    t = np.arange(num_frames)[None, :, None]
    path = start[:, None] + velocity[:, None] * t  # (n, T, 2) without walls
    # Folded into [low, high]: elastic reflections at the walls.
    low, high = low[:, None], high[:, None]  # (n, 1, 1)
    span = high - low
    centers = low + span - np.abs(span - np.mod(path - low, 2 * span))  # (n, T, 2)

    grid = np.arange(image_size) + 0.5
    video = np.empty((num_frames, image_size, image_size, 3), np.uint8)
    video[:] = BACKGROUND
    for k in reversed(range(n)):  # back to front: sprite 0 ends up on top
        dy = grid[None, :, None] - centers[k, :, 0, None, None]  # (T, H, 1)
        dx = grid[None, None, :] - centers[k, :, 1, None, None]  # (T, 1, W)
        video[shape_mask(shapes[k], dy, dx, radii[k])] = colors[k]
    return dict(video=video, shapes=shapes, colors=colors, radii=radii, centers=centers,
                velocities=velocity, label=SHAPES[shapes[0]])  # the class: the main sprite's shape


def make_clips(num_clips, image_size=32, num_frames=20, seed=0, split="train", max_sprites=3,
               speed=SPEED_RANGE, radius=RADIUS_RANGE, color_by_shape=False):
    """Render `num_clips` clips as arrays, without writing files."""
    check_sizes(image_size, num_frames, max_sprites, speed, radius)
    s, t = max_sprites, num_frames
    out = SpriteClips(
        videos=np.empty((num_clips, t, image_size, image_size, 3), np.uint8), labels=[],
        num_sprites=np.zeros(num_clips, np.int64), shapes=np.full((num_clips, s), -1),
        colors=np.zeros((num_clips, s, 3), np.uint8), radii=np.full((num_clips, s), np.nan),
        centers=np.full((num_clips, s, t, 2), np.nan),
        velocities=np.full((num_clips, s, 2), np.nan))
    for i in range(num_clips):
        clip = sample_clip(seed, split, i, image_size, num_frames, max_sprites, speed, radius,
                           color_by_shape)
        n = len(clip["shapes"])
        out.videos[i] = clip["video"]
        out.labels.append(clip["label"])
        out.num_sprites[i] = n
        for field in ("shapes", "colors", "radii", "centers", "velocities"):
            getattr(out, field)[i, :n] = clip[field]
    return out


def check_sizes(image_size, num_frames, max_sprites, speed, radius):
    if image_size < 8:
        raise UsageError(f"--image_size must be at least 8, got {image_size}")
    if num_frames < 2:
        raise UsageError(f"--num_frames must be at least 2 (motion needs two), got {num_frames}")
    if not 1 <= max_sprites <= len(PALETTE):
        raise UsageError(f"--max_sprites must be in 1..{len(PALETTE)}, got {max_sprites}")
    if not 0 <= speed[0] <= speed[1]:
        raise UsageError(f"--speed must be 'min,max' with 0 <= min <= max, got {speed}")
    if not 0 < radius[0] <= radius[1] < 0.5:
        raise UsageError(f"--radius must be 'min,max' with 0 < min <= max < 0.5, got {radius}")


def generate(out_dir, num_train=400, num_test=64, image_size=32, num_frames=20, seed=0,
             max_sprites=3, fps=10, overwrite=False, speed=SPEED_RANGE, radius=RADIUS_RANGE,
             color_by_shape=False, num_val=0):
    """Write `out_dir/train`, `out_dir/test` (and `out_dir/val` when num_val > 0) as lossless
    .mp4 clips named `<shape>_<index>.mp4`. Returns {split: [paths]}.
    """
    check_sizes(image_size, num_frames, max_sprites, speed, radius)
    counts = {"train": num_train, "test": num_test, "val": num_val}
    for split, count in counts.items():
        if not 0 <= count <= 99999:
            raise UsageError(f"--num_{split} must be in 0..99999, got {count}")
    if not num_val:
        del counts["val"]
    split_dirs = {split: prepare_split_dir(out_dir, split, overwrite) for split in counts}
    written = {split: [] for split in counts}
    for split, count in counts.items():
        for i in range(count):  # one clip at a time keeps memory flat for large sets
            clip = sample_clip(seed, split, i, image_size, num_frames, max_sprites, speed,
                               radius, color_by_shape)
            path = split_dirs[split] / f"{clip['label']}_{i:05d}.mp4"
            write_video(path, clip["video"], fps=fps)
            written[split].append(path)
    return written


def fraction_pair(text):
    """'a,b' -> (a, b) floats; a single number gives (a, a)."""
    try:
        values = [float(v) for v in str(text).split(",")]
        if len(values) in (1, 2):
            return values[0], values[-1]
    except ValueError:
        pass
    raise ValueError(f"expected 'min,max' numbers, got {text!r}")


FLAGS = (
    OUT_DIR,
    Flag("num_train", 400, "training clips (out_dir/train)", check=at_least(0)),
    Flag("num_test", 64, "held-out clips for scoring (out_dir/test)", check=at_least(0)),
    Flag("num_val", 0, "also write out_dir/val: clips for choosing settings, not scoring",
         check=at_least(0)),
    Flag("image_size", 32, "frame height and width", check=positive),
    Flag("num_frames", 20, "frames per clip", check=positive),
    Flag("max_sprites", 3, "each clip shows 1..this many", check=positive),
    Flag("speed", ",".join(map(str, SPEED_RANGE)),
         "'min,max' pixels per frame as a fraction of the frame size", convert=fraction_pair),
    Flag("radius", ",".join(map(str, RADIUS_RANGE)),
         "'min,max' sprite circumradius as a fraction of the frame size", convert=fraction_pair),
    Flag("color_by_shape", False, "each shape has one fixed colour instead of a random one"),
    Flag("fps", 10, "frame rate written into the videos", check=positive),
    Flag("seed", 0, "the whole data set is a function of this seed"),
    OVERWRITE,
)


def main(argv=None):
    with user_errors():
        args = parse(__doc__.split("\n\n")[0], FLAGS, argv)

        start = time.time()
        written = generate(**vars(args))  # the flags are generate's parameters
        seconds = time.time() - start
        for split, paths in written.items():
            classes = Counter(class_name_of(p) for p in paths)
            summary = ", ".join(f"{name} {classes[name]}" for name in sorted(classes)) or "no clips"
            print(f"{split}: {len(paths)} clips in {Path(args.out_dir) / split} ({summary})")
        print(f"{args.image_size}x{args.image_size}, {args.num_frames} frames at {args.fps} fps, "
              f"lossless H.264 (.mp4), seed {args.seed}; {seconds:.1f} s")


if __name__ == "__main__":
    main()
