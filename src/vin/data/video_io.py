"""Video and frame-strip I/O: tensors <-> uint8 frames, mp4/gif files, PNG contact sheets.

Frames on disk are always ``(F, H, W, 3)`` uint8 RGB numpy arrays; model tensors are ``(C, F, H, W)``
float in [-1, 1]. Every write goes through :func:`vin.fileio.atomic_path`, so an existing output is
never half-overwritten and inputs are validated before anything touches the disk.
"""

from __future__ import annotations

import functools
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
from PIL import GifImagePlugin, Image, ImageDraw, ImageFont, ImageSequence

from vin.fileio import atomic_path

__all__ = ["to_uint8", "from_uint8", "upscale", "write_video", "read_video", "frame_strip", "strips_figure"]

VIDEO_SUFFIXES = (".mp4", ".gif")
MP4_CRF = 12  # x264 quality (lower = better); tiny frames stay clean and files stay small anyway

# Contact-sheet layout, in output pixels (tests compute expected sizes from these).
PAD = 6  # outer margin and gap between tiles; the boundary bar lives in the gap left of a frame
BAR_WIDTH = 4  # width of the red chunk-boundary bar (<= PAD)
LABEL_HEIGHT = 16  # strip of text under each frame holding its index
TITLE_HEIGHT = 22  # band on top for an optional title
FONT_SIZE = 12  # Pillow's bundled default font; falls back to its fixed bitmap font without FreeType
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
BOUNDARY_COLOR = (255, 0, 0)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(C, F, H, W) float in [-1, 1] (C = 3, or 1 -> grey replicated) -> (F, H, W, 3) uint8.

    Values are clamped and rounded; NaN maps to 0 (mid grey) so a diverged sample still renders.
    """
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[0] not in (1, 3):
        shape = tuple(video.shape) if hasattr(video, "shape") else type(video).__name__
        raise ValueError(f"to_uint8 expects a (C, F, H, W) tensor with C in (1, 3), no batch dim; got {shape}")
    x = video.detach().to("cpu", torch.float32)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1, -1)
    x = ((x.nan_to_num(0.0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().numpy()


def from_uint8(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, F, H, W) float32 in [-1, 1]; exact inverse of :func:`to_uint8`."""
    _check_frames(frames)
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour integer upscale: (F, H, W, 3) -> (F, H*scale, W*scale, 3)."""
    _check_frames(frames)
    scale = _check_positive_int(scale, "scale")
    if scale == 1:
        return frames
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int, scale: int = 1) -> Path:
    """Write (F, H, W, 3) uint8 frames to ``.mp4`` (H.264/yuv420p via PyAV) or ``.gif`` (Pillow, loops).

    Frames are upscaled by ``scale`` (nearest). mp4 needs even sizes: an odd height/width is padded by
    repeating the last row/column. Returns the path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"unsupported video suffix {path.suffix!r} for {path}; supported: {VIDEO_SUFFIXES}")
    _check_frames(frames)
    fps = _check_positive_int(fps, "fps")
    frames = upscale(frames, scale)
    with atomic_path(path) as tmp:
        if suffix == ".mp4":
            _write_mp4(tmp, frames, fps)
        else:
            _write_gif(tmp, frames, fps)
    return path


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    f, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w", format="mp4") as container:
        if codec == "libx264":
            stream = container.add_stream(codec, rate=Fraction(fps), options={"crf": str(MP4_CRF)})
        else:
            stream = container.add_stream(codec, rate=Fraction(fps))
            stream.bit_rate = 20_000_000
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    # Pillow's save(save_all=True) silently merges identical consecutive frames, which would change
    # the frame count; assemble the file from its per-frame encoder instead (one palette per frame).
    duration = max(10, round(1000 / fps))  # GIF stores centiseconds
    images = [Image.fromarray(fr).quantize(256, dither=Image.Dither.NONE) for fr in frames]
    header, _ = GifImagePlugin.getheader(images[0], info={"loop": 0, "duration": duration})
    with open(path, "wb") as fp:
        fp.writelines(header)
        for im in images:
            fp.writelines(GifImagePlugin.getdata(im, duration=duration, include_color_table=True))
        fp.write(b";")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read an mp4 (PyAV) or gif (Pillow) file -> (F, H, W, 3) uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    if path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            out = [np.asarray(fr.convert("RGB")) for fr in ImageSequence.Iterator(im)]
    else:
        with av.open(str(path)) as container:
            out = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
    if not out:
        raise ValueError(f"{path} contains no video frames")
    return np.stack(out)


def frame_strip(
    frames: np.ndarray,
    path: str | os.PathLike,
    boundaries: Sequence[int] = (),
    every: int = 1,
    scale: int = 4,
    max_columns: int = 16,
    title: str | None = None,
) -> Path:
    """PNG contact sheet of frames 0, every, 2*every, ... from (F, H, W, 3) uint8 frames.

    Tiles (frame upscaled by ``scale`` plus its index underneath) are laid out in rows of at most
    ``max_columns``. A red bar left of a tile marks the first shown frame at or after each chunk
    boundary in ``boundaries`` (index 0 is not a boundary). Size: width = PAD + cols*(W*scale + PAD),
    height = [TITLE_HEIGHT] + PAD + rows*(H*scale + LABEL_HEIGHT + PAD).
    """
    _check_frames(frames)
    max_columns = _check_positive_int(max_columns, "max_columns")
    indices, marked = _sample(len(frames), boundaries, every)
    big = upscale(frames, scale)
    cols = min(len(indices), max_columns)
    rows = math.ceil(len(indices) / cols)
    tile_w, tile_h = big.shape[2], big.shape[1] + LABEL_HEIGHT
    top = TITLE_HEIGHT if title else 0
    canvas = Image.new("RGB", (PAD + cols * (tile_w + PAD), top + PAD + rows * (tile_h + PAD)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        _text(draw, (PAD, (TITLE_HEIGHT + PAD) // 2), title, anchor="lm")
    for k, i in enumerate(indices):
        r, c = divmod(k, cols)
        _tile(canvas, draw, big[i], i, i in marked, PAD + c * (tile_w + PAD), top + PAD + r * (tile_h + PAD))
    return _save_png(canvas, path)


def strips_figure(
    rows: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike,
    boundaries: Sequence[int] = (),
    every: int = 1,
    scale: int = 4,
    title: str | None = None,
) -> Path:
    """Several labelled one-row strips stacked vertically in one PNG (e.g. two methods, same prompt).

    Each entry is ``(label, frames (F, H, W, 3) uint8)``; the label is written left of its strip and
    frames are sampled with ``every`` and marked at ``boundaries`` exactly as in :func:`frame_strip`.
    """
    if not rows:
        raise ValueError("strips_figure needs at least one (label, frames) row")
    for _, frames in rows:
        _check_frames(frames)
    label_w = PAD + max(math.ceil(_font().getlength(label)) for label, _ in rows) + PAD
    sampled = [(label, upscale(fr, scale), *_sample(len(fr), boundaries, every)) for label, fr in rows]
    width = label_w + max(len(ix) * (big.shape[2] + PAD) for _, big, ix, _ in sampled) + PAD
    top = TITLE_HEIGHT if title else 0
    height = top + PAD + sum(big.shape[1] + LABEL_HEIGHT + PAD for _, big, _, _ in sampled)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        _text(draw, (PAD, (TITLE_HEIGHT + PAD) // 2), title, anchor="lm")
    y = top + PAD
    for label, big, indices, marked in sampled:
        _text(draw, (PAD, y + big.shape[1] // 2), label, anchor="lm")
        for k, i in enumerate(indices):
            _tile(canvas, draw, big[i], i, i in marked, label_w + PAD + k * (big.shape[2] + PAD), y)
        y += big.shape[1] + LABEL_HEIGHT + PAD
    return _save_png(canvas, path)


def _sample(n: int, boundaries: Sequence[int], every: int) -> tuple[list[int], set[int]]:
    """Shown frame indices, and the shown indices to mark (first shown at/after each boundary)."""
    every = _check_positive_int(every, "every")
    indices = list(range(0, n, every))
    marked = set()
    for b in boundaries:
        if 0 < b < n:
            marked.add(-(-b // every) * every)  # ceil to the sampling grid
    return indices, {m for m in marked if m < n}


def _tile(canvas: Image.Image, draw: ImageDraw.ImageDraw, frame: np.ndarray, index: int, mark: bool, x: int, y: int):
    h, w = frame.shape[:2]
    canvas.paste(Image.fromarray(frame), (x, y))
    if mark:
        draw.rectangle((x - BAR_WIDTH, y, x - 1, y + h + LABEL_HEIGHT - 1), fill=BOUNDARY_COLOR)
    color = BOUNDARY_COLOR if mark else TEXT_COLOR
    _text(draw, (x + w // 2, y + h + LABEL_HEIGHT // 2), str(index), anchor="mm", fill=color)


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (TypeError, ImportError, OSError):  # old Pillow or no FreeType
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, anchor: str, fill=TEXT_COLOR) -> None:
    """Draw text whose left ("l") or middle ("m") horizontally, middle vertically, sits at xy.

    Positions from the ink bounding box rather than ``anchor=`` so the bitmap fallback font works too.
    """
    left, t, right, b = draw.textbbox((0, 0), text, font=_font())
    x = xy[0] - left if anchor[0] == "l" else xy[0] - (left + right) // 2
    draw.text((x, xy[1] - (t + b) // 2), text, fill=fill, font=_font())


def _save_png(canvas: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"expected (F, H, W, 3) uint8 frames as a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"expected non-empty (F, H, W, 3) uint8 frames, got {frames.dtype} of shape {frames.shape}")


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
