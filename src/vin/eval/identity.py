"""Exact identity consistency in the synthetic sprite world (`vin.data.synthetic`).

Per frame, every pixel is mapped to its nearest palette colour (``nearest_palette``; textured
background pixels, the colour darkened x0.8, map to the same index for all 8 colours, which
:func:`check_texture_palette` verifies). Then:

* the **background** is the most common palette index (textured pixels included);
* the **sprites** are the other palette indices that cover at least ``min_area`` pixels after a 2x2
  erosion. Anti-aliased edges are a ramp 1 px wide whose blended colours can be nearest to a third
  palette colour (a green sprite on white has a cyan rim); a 1-px-wide band contains no 2x2 block,
  so the erosion removes it, while the smallest sprite (a small triangle or diamond, 7 px across at
  32x32) keeps >= 8 px. The default ``min_area`` is ``MIN_AREA_AT_32`` = 3 px at 32x32, scaled by
  (min(H, W) / 32)^2 like the sprites (rendered at another size, the rim stays 1 px wide).
* A video upscaled with nearest neighbour (``vin generate`` writes 8x) would have 8-px rims, so by
  default the upscale is detected and undone first (`vin.eval.resolution`). H.264's yuv420 halves
  the chroma resolution, which blurs colours over 2 px at edges of native-size videos; at the 8x
  scale of ``vin generate`` the chroma blocks lie inside the 8x8 pixel blocks and leave colours
  alone, and the block median removes the remaining compression noise.

The video's majority background and majority sprite set (most common over frames; ties go to the
first seen) are its identity; ``identity_consistency`` reports the fraction of frames (and of
chunks, by each chunk's own majority) that agree with it. ``caption_adherence`` compares the
per-frame identities with the colours a caption names (``caption_colours``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import cv2
import numpy as np

from vin.data.synthetic import PALETTE_NAMES, PALETTE_RGB, TEXTURE_DARKEN, TEXTURE_WORDS, nearest_palette
from vin.eval.resolution import detect_upscale, downscale

MIN_AREA_AT_32 = 3  # eroded pixels at 32x32; the smallest sprite keeps >= 8, rims 0
_KERNEL = np.ones((2, 2), np.uint8)


def check_texture_palette() -> bool:
    """True if every palette colour darkened by TEXTURE_DARKEN maps back to itself."""
    dark = np.rint(PALETTE_RGB.astype(np.float32) * TEXTURE_DARKEN).astype(np.uint8)
    return bool((nearest_palette(dark) == np.arange(len(PALETTE_RGB))).all())


def default_min_area(height: int, width: int) -> int:
    return max(1, round(MIN_AREA_AT_32 * (min(height, width) / 32.0) ** 2))


def core_area(mask: np.ndarray) -> int:
    """Pixels of the boolean `mask` left after a 2x2 erosion: 0 for a 1-px-wide anti-aliasing rim."""
    return int(cv2.erode(mask.astype(np.uint8), _KERNEL, borderType=cv2.BORDER_CONSTANT, borderValue=0).sum())


def frame_identity(indices: np.ndarray, min_area: int) -> tuple[int, tuple[int, ...]]:
    """(background index, sorted sprite indices) of one frame of palette indices (H, W)."""
    counts = np.bincount(indices.ravel(), minlength=len(PALETTE_RGB))
    background = int(counts.argmax())
    sprites = []
    for c in np.flatnonzero(counts):
        if c == background or counts[c] < min_area:
            continue
        if core_area(indices == c) >= min_area:
            sprites.append(int(c))
    return background, tuple(sprites)


TEXTURE_MIN_DARK = 0.15  # fraction of background pixels that must be darkened for a texture (a pattern: 1/2)
STRIPE_PURITY = 0.85  # stripes: each column is (nearly) all dark or all light; a checkerboard's columns are half


def frame_texture(frame: np.ndarray, indices: np.ndarray, background: int) -> str:
    """The background texture of one frame, "plain", "stripes" or "checker" (see
    `vin.data.synthetic.TEXTURES`): among the background's pixels, those darker than halfway to
    TEXTURE_DARKEN are the pattern; too few is plain, a pattern whose columns are each (nearly) all
    dark or all light is stripes, anything else checker. Phase and period are not assumed."""
    mask = indices == background
    if mask.sum() < 2:
        return "plain"
    lum = frame.astype(np.float32).sum(axis=-1)
    dark = lum < (1.0 + TEXTURE_DARKEN) / 2 * float(PALETTE_RGB[background].astype(np.float32).sum())
    if dark[mask].mean() < TEXTURE_MIN_DARK:
        return "plain"
    n = mask.sum(axis=0)  # background pixels per column
    p = (dark & mask).sum(axis=0) / np.maximum(n, 1)
    purity = float((np.maximum(p, 1 - p) * n).sum() / n.sum())
    return "stripes" if purity >= STRIPE_PURITY else "checker"


def _majority(values: Sequence):
    return Counter(values).most_common(1)[0][0]  # ties: first seen (Counter keeps insertion order)


def _windows(t: int, chunks: Sequence[Sequence[int]] | Sequence[int] | None) -> list[tuple[int, int]]:
    """Chunk windows from a layout [(start, end), ...] or from boundaries [b1, b2, ...]."""
    if not chunks:
        return [(0, t)]
    if all(isinstance(c, (int, np.integer)) for c in chunks):
        edges = [0, *sorted(int(b) for b in chunks), t]
        return [(s, e) for s, e in zip(edges[:-1], edges[1:]) if e > s]
    return [(int(s), int(e)) for s, e in chunks]


def _split_caption(caption: str) -> tuple[list[str], list[str]]:
    """(sprite words, background phrase) of a sprite-world caption: the background phrase is the
    one after the last "on", and only if it says "background" ("a red circle on blue": none)."""
    from vin.models.text import caption_words

    words = caption_words(caption)
    cut = len(words) - 1 - words[::-1].index("on") if "on" in words else len(words)
    return words[:cut], (words[cut:] if "background" in words[cut:] else [])


def caption_texture(caption: str) -> str | None:
    """The background texture a sprite-world caption names ("... on a blue striped background" ->
    "stripes"), or None."""
    by_word = {word: texture for texture, word in TEXTURE_WORDS.items()}
    named = [by_word[w] for w in _split_caption(caption)[1] if w in by_word]
    return named[0] if named else None


def caption_colours(caption: str) -> tuple[str | None, tuple[str, ...]]:
    """(background colour, sprite colours) that a sprite-world caption names, e.g.
    "a large red circle and a square on a blue striped background" -> ("blue", ("red",)).
    The background phrase is the one after the last "on"; it names a background colour only if it
    says "background" ("a red circle on blue" names no colour at all)."""
    colours = set(PALETTE_NAMES)
    sprite_words, phrase = _split_caption(caption)
    background = [w for w in phrase if w in colours]
    sprites = tuple(dict.fromkeys(w for w in sprite_words if w in colours))
    return (background[0] if background else None), sprites


def caption_adherence(identity: dict, caption: str) -> dict:
    """Fractions of frames that show what the caption names: ``caption_background`` (the frame's
    background is the named colour) and ``caption_sprites`` (every named sprite colour is among
    the frame's sprites); None where the caption names no such colour or is a per-chunk schedule
    ("a; b"). ``identity`` is :func:`identity_consistency`'s result."""
    if ";" in caption:
        return {"caption_background": None, "caption_sprites": None, "caption_texture": None}
    background, sprites = caption_colours(caption)
    texture = caption_texture(caption)
    bgs, sps = identity["per_frame_background"], identity["per_frame_sprites"]
    t = len(bgs)
    return {
        "caption_background": None if background is None else sum(b == background for b in bgs) / t,
        "caption_sprites": None if not sprites else sum(set(sprites) <= set(s) for s in sps) / t,
        "caption_texture": None if texture is None else sum(x == texture for x in identity["per_frame_texture"]) / t,
    }


def _names(indices: Sequence[int]) -> list[str]:
    return [PALETTE_NAMES[i] for i in indices]


def identity_consistency(frames: np.ndarray, chunks: Sequence[Sequence[int]] | Sequence[int] | None = None,
                         min_area: int | None = None, undo_upscale: bool = True,
                         indices: np.ndarray | None = None) -> dict:
    """Identity of a sprite-world video and how consistently every frame and chunk keeps it.

    ``chunks``: chunk windows ``[(start, end), ...]`` or boundaries ``[b1, b2, ...]`` (None: one
    chunk). ``undo_upscale``: detect a nearest-neighbour upscale and judge the frames at their
    original size (``upscale_undone`` reports the factor). Returns the majority ``background``
    (name), ``sprites`` (names) and background ``texture``, the fractions of
    frames whose background / sprite set / both / texture equal the majority (``frames_background``,
    ``frames_sprites``, ``frames_both``, ``frames_texture``), the same for chunks judged by each chunk's own majority
    (``chunks_background``, ``chunks_sprites``, ``chunks_both``), the per-chunk majorities and the
    per-frame identities (``per_frame_background``, ``per_frame_sprites``, ``per_frame_texture``).
    ``indices``: the frames' ``nearest_palette`` indices, when the caller has them already (only
    with ``undo_upscale=False``: they must be of the frames as judged)."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) uint8 frames, got {getattr(frames, 'shape', type(frames).__name__)}")
    if indices is not None and (undo_upscale or indices.shape != frames.shape[:3]):
        raise ValueError(f"indices must be (T, H, W) = {frames.shape[:3]} and come with undo_upscale=False")
    factor = detect_upscale(frames) if undo_upscale else 1
    frames = downscale(frames, factor)
    t, h, w, _ = frames.shape
    min_area = default_min_area(h, w) if min_area is None else int(min_area)
    indices = nearest_palette(frames) if indices is None else indices
    per_frame = [frame_identity(indices[i], min_area) for i in range(t)]
    textures = [frame_texture(frames[i], indices[i], b) for i, (b, _) in enumerate(per_frame)]
    maj_tex = _majority(textures)
    bgs = [b for b, _ in per_frame]
    sprites = [s for _, s in per_frame]
    maj_bg, maj_sp = _majority(bgs), _majority(sprites)
    windows = _windows(t, chunks)
    chunk_majorities = [(_majority(bgs[s:e]), _majority(sprites[s:e])) for s, e in windows]
    n = len(windows)
    return {
        "background": PALETTE_NAMES[maj_bg],
        "sprites": _names(maj_sp),
        "min_area": min_area,
        "upscale_undone": factor,
        "frames_background": sum(b == maj_bg for b in bgs) / t,
        "frames_sprites": sum(s == maj_sp for s in sprites) / t,
        "frames_both": sum(b == maj_bg and s == maj_sp for b, s in per_frame) / t,
        "texture": maj_tex,
        "frames_texture": sum(x == maj_tex for x in textures) / t,
        "chunks": [list(wd) for wd in windows],
        "chunks_background": sum(b == maj_bg for b, _ in chunk_majorities) / n,
        "chunks_sprites": sum(s == maj_sp for _, s in chunk_majorities) / n,
        "chunks_both": sum(b == maj_bg and s == maj_sp for b, s in chunk_majorities) / n,
        "chunk_majorities": [{"background": PALETTE_NAMES[b], "sprites": _names(s)} for b, s in chunk_majorities],
        "per_frame_background": [PALETTE_NAMES[b] for b in bgs],
        "per_frame_sprites": [_names(s) for s in sprites],
        "per_frame_texture": textures,
    }
