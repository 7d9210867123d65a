import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from vin.data import video_io
from vin.data.video_io import (
    BAR_WIDTH,
    BOUNDARY_COLOR,
    LABEL_HEIGHT,
    PAD,
    TITLE_HEIGHT,
    frame_strip,
    from_uint8,
    read_video,
    strips_figure,
    to_uint8,
    upscale,
    write_video,
)

PALETTE = np.array([(0, 0, 0), (255, 255, 255), (220, 30, 40), (20, 200, 60), (30, 60, 210), (128, 128, 0)], np.uint8)


def flat_frames(n=6, h=16, w=16):
    """n <= 8 frames, each one flat palette colour (with identical consecutive frames on purpose)."""
    colours = PALETTE[[0, 1, 1, 2, 3, 4, 5, 5][:n]]
    return np.broadcast_to(colours[:, None, None, :], (n, h, w, 3)).copy()


def listing(d):
    return sorted(os.listdir(d))


def test_uint8_round_trip_and_range():
    rng = np.random.default_rng(0)
    frames = PALETTE[rng.integers(0, len(PALETTE), (3, 8, 8))]
    video = from_uint8(frames)
    assert video.shape == (3, 3, 8, 8) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    np.testing.assert_array_equal(to_uint8(video), frames)
    # clamping and rounding
    out = to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0]).view(1, 5, 1, 1).expand(3, 5, 1, 1))
    assert out[:, 0, 0, 0].tolist() == [0, 0, 128, 255, 255]
    grey = to_uint8(torch.zeros(1, 2, 4, 4))
    assert grey.shape == (2, 4, 4, 3) and (grey == 128).all()


@pytest.mark.parametrize("shape", [(2, 3, 4, 8, 8), (3, 8, 8), (4, 2, 8, 8), (2, 2, 8, 8)])
def test_to_uint8_bad_shapes(shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        to_uint8(torch.zeros(shape))


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8, 4), np.uint8)]
)
def test_from_uint8_rejects(bad):
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(bad)


def test_upscale_nearest():
    frames = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
    big = upscale(frames, 3)
    assert big.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(big[:, ::3, ::3], frames)
    np.testing.assert_array_equal(big[:, 2, 5], frames[:, 0, 1])
    with pytest.raises(ValueError):
        upscale(frames, 0)


def test_mp4_round_trip(tmp_path):
    frames = flat_frames(8)
    out = write_video(tmp_path / "v.mp4", frames, fps=8, scale=2)
    assert out == tmp_path / "v.mp4"
    back = read_video(out)
    assert back.shape == (8, 32, 32, 3)
    err = np.abs(back.astype(int) - upscale(frames, 2).astype(int)).mean(axis=(1, 2, 3))
    assert err.max() < 8, err
    assert listing(tmp_path) == ["v.mp4"]


def test_mp4_odd_size_is_padded(tmp_path):
    frames = flat_frames(3, h=9, w=11)
    back = read_video(write_video(tmp_path / "odd.mp4", frames, fps=4))
    assert back.shape == (3, 10, 12, 3)


def test_gif_round_trip_exact(tmp_path):
    frames = flat_frames(8)  # has identical consecutive frames, which must not be merged
    frames[3, :4, :4] = PALETTE[4]  # and a non-flat frame
    back = read_video(write_video(tmp_path / "v.gif", frames, fps=10, scale=2))
    np.testing.assert_array_equal(back, upscale(frames, 2))
    with Image.open(tmp_path / "v.gif") as im:
        assert im.info["loop"] == 0 and im.info["duration"] == 100


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"\.avi.*\.mp4"):
        write_video(tmp_path / "v.avi", flat_frames(2), fps=4)
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", ["v.gif", "v.mp4", "s.png"])
def test_bad_input_leaves_existing_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"old contents")
    bad = flat_frames(2).astype(np.float32)
    with pytest.raises(ValueError):
        if name.endswith(".png"):
            frame_strip(bad, path)
        else:
            write_video(path, bad, fps=4)
    assert path.read_bytes() == b"old contents"
    assert listing(tmp_path) == [name]


def test_failure_during_encode_leaves_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "v.mp4"
    path.write_bytes(b"old contents")

    def boom(tmp, frames, fps):
        tmp.write_bytes(b"partial")
        raise RuntimeError("encoder died")

    monkeypatch.setattr(video_io, "_write_mp4", boom)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_video(path, flat_frames(2), fps=4)
    assert path.read_bytes() == b"old contents"
    assert listing(tmp_path) == ["v.mp4"]


def tile_origin(k, cols, tile_w, tile_h, top):
    r, c = divmod(k, cols)
    return PAD + c * (tile_w + PAD), top + PAD + r * (tile_h + PAD)


@pytest.mark.parametrize("title", [None, "a title"])
def test_frame_strip_layout_and_boundaries(tmp_path, title):
    n, h, w, scale, every, cols = 23, 8, 10, 3, 2, 5
    frames = np.full((n, h, w, 3), (30, 60, 210), np.uint8)
    out = frame_strip(
        frames, tmp_path / "s.png", boundaries=[0, 8, 15], every=every, scale=scale, max_columns=cols, title=title
    )
    shown = list(range(0, n, every))  # 12 frames -> 3 rows of 5
    rows = math.ceil(len(shown) / cols)
    tile_w, tile_h = w * scale, h * scale + LABEL_HEIGHT
    top = TITLE_HEIGHT if title else 0
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (top + PAD + rows * (tile_h + PAD), PAD + cols * (tile_w + PAD), 3)
    marked = {8, 16}  # boundary 15 falls between shown frames 14 and 16; 0 is not a boundary
    for k, i in enumerate(shown):
        x, y = tile_origin(k, cols, tile_w, tile_h, top)
        np.testing.assert_array_equal(img[y : y + h * scale, x : x + tile_w], upscale(frames, scale)[i])
        left = img[y : y + h * scale, x - BAR_WIDTH : x]
        if i in marked:
            assert (left == BOUNDARY_COLOR).all(), i
        else:
            assert (left == 255).all(), i
    assert listing(tmp_path) == ["s.png"]


def test_strips_figure(tmp_path):
    a = flat_frames(8, h=8, w=8)
    b = 255 - a
    out = strips_figure([("VIN", a), ("no global tokens", b)], tmp_path / "f.png", boundaries=[3], every=2, scale=2)
    img = np.asarray(Image.open(out).convert("RGB"))
    tile_h = 8 * 2 + LABEL_HEIGHT
    assert img.shape[0] == PAD + 2 * (tile_h + PAD)
    for r, frames in enumerate([a, b]):
        y = PAD + r * (tile_h + PAD)
        band = img[y : y + 16]  # frame pixels only (no label text)
        red_cols = np.flatnonzero(np.all(band == BOUNDARY_COLOR, axis=-1).all(axis=0))
        assert len(red_cols) == BAR_WIDTH and np.ptp(red_cols) == BAR_WIDTH - 1  # one bar: boundary 3 -> frame 4
        x = red_cols[-1] + 1
        np.testing.assert_array_equal(band[:, x : x + 16], np.broadcast_to(frames[4, 0, 0], (16, 16, 3)))
        # frames 0, 2, 4, 6 shown: frame 6's tile follows frame 4's, then the right margin
        assert img.shape[1] == x + 2 * (16 + PAD)
    with pytest.raises(ValueError):
        strips_figure([], tmp_path / "g.png")
    assert listing(tmp_path) == ["f.png"]
