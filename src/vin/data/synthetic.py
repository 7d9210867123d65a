"""A procedural sprite world: a no-download benchmark for long-video consistency.

Each video is a fixed background plus a few moving sprites:

* The background is one of 8 palette colours (`PALETTE`) with a texture from `TEXTURES`
  ("plain", "stripes", "checker"; the pattern is the colour darkened by `TEXTURE_DARKEN`).
* 1..N sprites, each with its own palette colour (distinct, never the background colour), a
  shape from `SHAPES` and a size from `SIZES`. Sprites move in straight lines and bounce off
  the walls; their position is an analytic triangle wave of the frame index, so any frame
  range renders independently and exactly (`render(s, c, a, n) == render(s, c, 0, a + n)[a:]`).
  Edges are anti-aliased (coverage from a signed distance with a 1 px linear ramp), so
  motion is smooth at sub-pixel speeds.

Why it tests long videos: background colour and texture and every sprite's colour, shape and
size must persist over the whole video, while a model generates it in short chunks. Captions
(`make_caption`) always name the shapes but deliberately omit some colours, sizes and the
background, so a chunk that does not see the earlier video cannot know them. Bouncing motion
crosses chunk boundaries, so positions and velocities must carry over too. `nearest_palette`
maps pixels back to palette indices for exact identity-consistency metrics.

Everything is deterministic per seed and pure numpy (torch only in `make_batch`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

from vin.config import DataConfig

PALETTE = MappingProxyType(
    {
        "red": (220, 20, 60),
        "green": (30, 190, 40),
        "blue": (30, 60, 230),
        "yellow": (245, 235, 30),
        "cyan": (40, 225, 235),
        "magenta": (210, 40, 220),
        "white": (245, 245, 245),
        "orange": (255, 125, 0),
    }
)
PALETTE_NAMES: tuple[str, ...] = tuple(PALETTE)
PALETTE_RGB: np.ndarray = np.array(list(PALETTE.values()), dtype=np.uint8)  # (8, 3)
PALETTE_RGB.flags.writeable = False

TEXTURES = ("plain", "stripes", "checker")
TEXTURE_WORDS = MappingProxyType({"plain": "plain", "stripes": "striped", "checker": "checkered"})
TEXTURE_DARKEN = 0.8  # pattern pixels are the background colour times this
TEXTURE_PERIOD = 8  # pixels at 32x32
SHAPES = ("square", "circle", "triangle", "diamond")
SIZES = MappingProxyType({"small": 7, "large": 11})  # full extent in pixels at 32x32
EDGE_MARGIN = 1.0  # pixels kept between a sprite's extent and the frame border
VOCABULARY: tuple[str, ...] = (
    ("a", "an", "and", "on", "background")
    + SHAPES
    + tuple(SIZES)
    + PALETTE_NAMES
    + tuple(TEXTURE_WORDS.values())
)


@dataclass(frozen=True)
class SpriteSpec:
    """One sprite: palette index, shape, size name, start centre (px), velocity (px/frame)."""

    colour: int
    shape: str
    size: str
    x0: float
    y0: float
    vx: float
    vy: float


@dataclass(frozen=True)
class VideoSpec:
    """A whole video: background palette index, texture name and sprites (drawn in order)."""

    background: int
    texture: str
    sprites: tuple[SpriteSpec, ...]


def _scale(cfg: DataConfig) -> float:
    return min(cfg.height, cfg.width) / 32.0


def _radius(sprite: SpriteSpec, cfg: DataConfig) -> float:
    """Half the sprite's extent in pixels."""
    return SIZES[sprite.size] * _scale(cfg) / 2.0


def _reflect(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold unbounded positions `p` into [lo, hi] by mirror reflection (a triangle wave)."""
    span = hi - lo
    u = np.mod(p - lo, 2.0 * span)
    return lo + span - np.abs(u - span)


def sample_spec(rng: np.random.Generator, cfg: DataConfig) -> VideoSpec:
    """Draw a random video: background, texture and min_sprites..max_sprites sprites."""
    if not 1 <= cfg.min_sprites <= cfg.max_sprites <= len(PALETTE_NAMES) - 1:
        raise ValueError("need 1 <= min_sprites <= max_sprites <= 7")
    background = int(rng.integers(len(PALETTE_NAMES)))
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    n = int(rng.integers(cfg.min_sprites, cfg.max_sprites + 1))
    others = [c for c in range(len(PALETTE_NAMES)) if c != background]
    colours = rng.permutation(others)[:n]
    s = _scale(cfg)
    sprites = []
    for colour in colours:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
        m = SIZES[size] * s / 2.0 + EDGE_MARGIN
        x0, y0 = rng.uniform(m, cfg.width - m), rng.uniform(m, cfg.height - m)
        speed = rng.uniform(cfg.min_speed, cfg.max_speed) * s
        angle = rng.uniform(0.0, 2.0 * np.pi)
        vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        sprites.append(SpriteSpec(int(colour), shape, size, x0, y0, float(vx), float(vy)))
    return VideoSpec(background, texture, tuple(sprites))


def sprite_centres(spec: VideoSpec, cfg: DataConfig, start: int, num_frames: int) -> np.ndarray:
    """Sprite centres (x, y) in pixels for frames start..start+num_frames-1: (S, F, 2) float64.

    Each centre stays within [r + EDGE_MARGIN, size - r - EDGE_MARGIN] per axis (r: half extent).
    """
    t = np.arange(start, start + num_frames, dtype=np.float64)
    out = np.empty((len(spec.sprites), num_frames, 2))
    for i, sp in enumerate(spec.sprites):
        m = _radius(sp, cfg) + EDGE_MARGIN
        out[i, :, 0] = _reflect(sp.x0 + sp.vx * t, m, cfg.width - m)
        out[i, :, 1] = _reflect(sp.y0 + sp.vy * t, m, cfg.height - m)
    return out


def shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape of half extent r centred at dx = dy = 0;
    y points down. `render` covers a pixel by clip(0.5 - sdf, 0, 1) of its centre."""
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - r) * np.float32(1 / np.sqrt(2))
    if shape == "triangle":  # apex at the top, base at the bottom, both at distance r
        side = (2.0 * np.abs(dx) - dy - r) * np.float32(1 / np.sqrt(5))
        return np.maximum(dy - r, side)
    raise ValueError(f"unknown shape {shape!r}")


def _background(spec: VideoSpec, cfg: DataConfig) -> np.ndarray:
    """The textured background, (H, W, 3) float32 in 0..255."""
    half = max(1, round(TEXTURE_PERIOD * _scale(cfg) / 2))
    ys, xs = np.mgrid[: cfg.height, : cfg.width]
    if spec.texture == "plain":
        dark = np.zeros((cfg.height, cfg.width), dtype=bool)
    elif spec.texture == "stripes":
        dark = (xs // half) % 2 == 1
    elif spec.texture == "checker":
        dark = (xs // half + ys // half) % 2 == 1
    else:
        raise ValueError(f"unknown texture {spec.texture!r}")
    factor = np.where(dark, TEXTURE_DARKEN, 1.0).astype(np.float32)
    return factor[..., None] * PALETTE_RGB[spec.background].astype(np.float32)


def render(spec: VideoSpec, cfg: DataConfig, start: int, num_frames: int) -> np.ndarray:
    """Render frames start..start+num_frames-1: uint8 array (num_frames, H, W, 3)."""
    h, w = cfg.height, cfg.width
    img = np.broadcast_to(_background(spec, cfg), (num_frames, h, w, 3)).copy()
    xs = np.arange(w, dtype=np.float32) + 0.5  # pixel centres
    ys = np.arange(h, dtype=np.float32) + 0.5
    centres = sprite_centres(spec, cfg, start, num_frames).astype(np.float32)
    for sp, c in zip(spec.sprites, centres):
        dx = xs[None, None, :] - c[:, 0, None, None]  # (F, 1, W)
        dy = ys[None, :, None] - c[:, 1, None, None]  # (F, H, 1)
        cover = np.clip(0.5 - shape_sdf(sp.shape, dx, dy, _radius(sp, cfg)), 0.0, 1.0)
        img += cover[..., None] * (PALETTE_RGB[sp.colour].astype(np.float32) - img)
    return np.rint(img).clip(0, 255).astype(np.uint8)


def _with_article(words: list[str]) -> str:
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def make_caption(spec: VideoSpec, rng: np.random.Generator, keep_prob: float) -> str:
    """Short caption; shapes always named, each colour/size/background attribute w.p. keep_prob.

    e.g. "a large red circle and a square on a blue striped background".
    """
    keep = rng.random(2 * len(spec.sprites) + 2) < keep_prob
    phrases = []
    for i, sp in enumerate(spec.sprites):
        words = [sp.size] if keep[2 * i] else []
        words += [PALETTE_NAMES[sp.colour]] if keep[2 * i + 1] else []
        phrases.append(_with_article([*words, sp.shape]))
    caption = " and ".join(phrases)
    bg_colour = [PALETTE_NAMES[spec.background]] if keep[-2] else []
    texture = [TEXTURE_WORDS[spec.texture]] if keep[-1] else []
    if bg_colour or texture:
        words = texture + bg_colour if spec.texture == "plain" else bg_colour + texture
        caption += " on " + _with_article([*words, "background"])
    return caption


def make_batch(
    seed: int, index: int, batch_size: int, num_frames: int, cfg: DataConfig,
    rows: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, list[str], list[VideoSpec]]:
    """Batch `index` of stream `seed`: video (B, 3, F, H, W) float32 in [-1, 1], captions, specs.

    `rows=(lo, hi)` returns only videos lo..hi-1 of that batch (what one data-parallel process
    trains on), identical to the same rows of the whole batch; only those videos are rendered.
    """
    rng = np.random.default_rng([seed, index])
    specs = [sample_spec(rng, cfg) for _ in range(batch_size)]
    captions = [make_caption(s, rng, cfg.caption_keep_prob) for s in specs]
    if rows is not None:
        lo, hi = rows
        if not 0 <= lo < hi <= batch_size:
            raise ValueError(f"rows {rows} are not a non-empty slice of a batch of {batch_size}")
        specs, captions = specs[lo:hi], captions[lo:hi]
    frames = np.stack([render(s, cfg, 0, num_frames) for s in specs])  # (B, F, H, W, 3)
    video = np.ascontiguousarray(frames.transpose(0, 4, 1, 2, 3)).astype(np.float32)
    video /= np.float32(127.5)
    video -= np.float32(1.0)
    return torch.from_numpy(video), captions, specs


class SyntheticVideoStream:
    """Endless batches `(index, video (B, 3, F, H, W), captions)` from `start_index` on.

    The length F of batch `index` is drawn deterministically from `frames_choices`, so a
    resumed stream (start_index=k) reproduces batches k, k+1, ... exactly.
    """

    def __init__(
        self,
        cfg: DataConfig,
        seed: int,
        batch_size: int,
        frames_choices: tuple[int, ...],
        start_index: int = 0,
        rows: tuple[int, int] | None = None,
    ) -> None:
        if not frames_choices:
            raise ValueError("frames_choices must not be empty")
        self.cfg, self.seed, self.batch_size = cfg, seed, batch_size
        self.frames_choices, self.start_index = tuple(frames_choices), start_index
        self.rows = rows  # this process's slice of every batch (data-parallel training)

    def num_frames(self, index: int) -> int:
        """The clip length of batch `index`."""
        rng = np.random.default_rng([self.seed, index, 1])
        return self.frames_choices[int(rng.integers(len(self.frames_choices)))]

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, list[str]]]:
        return self.batches(self.start_index, 1)

    def batches(self, first: int, stride: int) -> Iterator[tuple[int, torch.Tensor, list[str]]]:
        """Batches first, first + stride, first + 2 stride, ... of the stream (one worker's share
        when `stride` workers render it together, `vin.data.prefetch`)."""
        index = first
        while True:
            f = self.num_frames(index)
            video, captions, _ = make_batch(self.seed, index, self.batch_size, f, self.cfg, self.rows)
            yield index, video, captions
            index += stride


def nearest_palette(frames: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour per pixel: (..., 3) uint8 -> (...) int64."""
    x = np.asarray(frames, dtype=np.float32)
    c = PALETTE_RGB.astype(np.float32)
    # |x - c|^2 - |x|^2; every term is an integer below 2^24, so float32 is exact here.
    d = (c * c).sum(-1) - 2.0 * (x @ c.T)
    return d.argmin(-1)
