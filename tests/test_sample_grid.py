"""Video grids: layout, borders marking given frames, and files that read back."""
import av
import numpy as np
import pytest
from PIL import Image

from ramvid.video_io import (GENERATED_COLOR, GIVEN_COLOR, animated_grid, filmstrip, grid_obs_mask,
                               save_video_grid)


def videos(n=3, t=4, h=8, w=10, c=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, t, h, w, c), dtype=np.uint8)


def test_filmstrip_places_every_frame_inside_its_border():
    v = videos()
    mask = grid_obs_mask(3, 4, cond_frames=[0, 3])
    image = filmstrip(v, mask, border=2, gap=1)
    tile_h, tile_w = 8 + 4, 10 + 4
    assert image.shape == (3 * tile_h + 4, 4 * tile_w + 5, 3)
    for i in range(3):
        for t in range(4):
            top, left = 1 + i * (tile_h + 1), 1 + t * (tile_w + 1)
            assert np.array_equal(image[top + 2:top + 10, left + 2:left + 12], v[i, t])
            want = GIVEN_COLOR if t in (0, 3) else GENERATED_COLOR
            assert tuple(image[top, left]) == want and tuple(image[top + 11, left + 13]) == want


def test_animated_grid_per_sample_mask_and_grayscale():
    v = videos(n=5, c=1)
    mask = np.zeros((5, 4), bool)
    mask[2, 1] = True  # only video 2 has a given frame, at t = 1
    frames = animated_grid(v, grid_obs_mask(5, 4, obs_mask=mask), columns=3, border=1, gap=0)
    assert frames.shape == (4, 2 * 10, 3 * 12, 3)
    # Video 2 is row 0, column 2; grayscale frames are repeated over RGB.
    assert tuple(frames[1, 0, 24]) == GIVEN_COLOR and tuple(frames[0, 0, 24]) == GENERATED_COLOR
    assert np.array_equal(frames[1, 1:9, 25:35], np.repeat(v[2, 1], 3, axis=-1))


def test_saved_files_read_back(tmp_path):
    v = videos(n=2, t=5, h=7, w=9)  # odd sizes: mp4 pads to even
    gif = save_video_grid(tmp_path / "g.gif", v, cond_frames=[0], scale=1)
    mp4 = save_video_grid(tmp_path / "g.mp4", v, cond_frames=[0], scale=1)
    png = save_video_grid(tmp_path / "g.png", v, cond_frames=[0])
    with Image.open(gif) as image:
        assert image.n_frames == 5
    with av.open(str(mp4)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape[0] % 2 == 0 and decoded[0].shape[1] % 2 == 0
    with Image.open(png) as image:
        scale = 64 // 7  # small frames are enlarged to be visible
        assert image.size == (5 * (9 * scale + 4) + 6 * 2, 2 * (7 * scale + 4) + 3 * 2)


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="N x T x H x W x C"):
        save_video_grid(tmp_path / "x.gif", np.zeros((2, 4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        save_video_grid(tmp_path / "x.gif", np.zeros((2, 4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="gif, mp4, png"):
        save_video_grid(tmp_path / "x.avi", videos())
