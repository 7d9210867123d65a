"""Undoing the nearest-neighbour upscale of written videos (``vin generate --scale``, 8 by default),
so metrics run at the generated resolution."""

from __future__ import annotations

import numpy as np

MAX_UPSCALE = 16
UPSCALE_INSIDE_TOL = 1.0  # grey levels: mean |difference| of neighbours inside blocks, at worst offset
UPSCALE_EDGE_RATIO = 4.0  # ... and block edges must differ at least this many times more
UPSCALE_SAMPLE_FRAMES = 16
# Strong edges (> UPSCALE_STRONG_EDGE grey levels in some channel between neighbours): in a real
# k-upscale they sit on block edges only; at most this fraction of them may fall inside blocks.
UPSCALE_STRONG_EDGE = 64
UPSCALE_STRONG_INSIDE_RATIO = 0.03


def _check(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 \
            or 0 in frames.shape:
        raise ValueError(f"expected non-empty (T, H, W, 3) uint8 frames, got {getattr(frames, 'shape', type(frames).__name__)}")
    return frames


def _upscale_evidence(frames: np.ndarray, k: int) -> tuple[float, float]:
    """(worst mean |neighbour difference| at an offset inside k-blocks, mean at block edges)."""
    f = frames.astype(np.int16)
    inside, edge = 0.0, 0.0
    for axis in (1, 2):
        d = np.abs(np.diff(f, axis=axis)).mean(axis=tuple(a for a in (0, 1, 2, 3) if a != axis))
        pos = np.arange(len(d)) % k  # pair (j, j+1) straddles a block edge iff j % k == k - 1
        inside = max(inside, max(float(d[pos == o].mean()) for o in range(k - 1)))
        edge = max(edge, float(d[pos == k - 1].mean()))
    return inside, edge


def _strong_edges(frames: np.ndarray, k: int) -> tuple[int, int]:
    """(strong neighbour differences at offsets inside k-blocks, at block edges), both axes."""
    f = frames.astype(np.int16)
    inside, edge = 0, 0
    for axis in (1, 2):
        strong = np.moveaxis(np.abs(np.diff(f, axis=axis)).max(axis=-1) > UPSCALE_STRONG_EDGE, axis, 0)
        at_edge = np.arange(strong.shape[0]) % k == k - 1
        inside, edge = inside + int(strong[~at_edge].sum()), edge + int(strong[at_edge].sum())
    return inside, edge


def _looks_upscaled(sample: np.ndarray, k: int) -> bool:
    strong_inside, strong_edge = _strong_edges(sample, k)
    if strong_edge >= len(sample):  # enough sharp edges to judge by where they fall
        return strong_inside <= UPSCALE_STRONG_INSIDE_RATIO * strong_edge
    inside, edge = _upscale_evidence(sample, k)
    return inside <= UPSCALE_INSIDE_TOL and edge >= UPSCALE_EDGE_RATIO * max(inside, 0.1)


def detect_upscale(frames: np.ndarray, max_factor: int = MAX_UPSCALE) -> int:
    """The integer factor k by which ``frames`` look nearest-neighbour upscaled (1 if none): the
    largest k in max_factor..2 dividing H and W at which the frames look blocky. Where the frames
    have sharp edges (UPSCALE_STRONG_EDGE), nearly all of them must fall on k-block edges: an
    upscale moves every edge onto the grid, while a native frame with block-aligned textures (4-px
    stripes) still has its anti-aliased sprite edges off it, and H.264 at vin's quality does not
    create sharp edges inside blocks. Smooth frames without sharp edges fall back to the mean
    differences: inside blocks (the worst offset's mean |difference| <= UPSCALE_INSIDE_TOL) against
    across block edges (UPSCALE_EDGE_RATIO times more, so a flat video is not called upscaled).
    Checking every offset inside a block, not the mean, keeps a video upscaled by 8 from passing as
    upscaled by 16. Looks at <= 16 evenly spaced frames."""
    f = _check(frames)
    t, h, w, _ = f.shape
    sample = f[np.unique(np.linspace(0, t - 1, min(t, UPSCALE_SAMPLE_FRAMES)).round().astype(int))]
    for k in range(min(max_factor, h // 2, w // 2), 1, -1):  # >= 2 blocks: an edge to compare
        if h % k or w % k:
            continue
        if _looks_upscaled(sample, k):
            return k
    return 1


def downscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Undo a nearest-neighbour upscale: each factor x factor block -> its per-channel median."""
    f = _check(frames)
    if factor == 1:
        return f
    t, h, w, c = f.shape
    if h % factor or w % factor:
        raise ValueError(f"cannot downscale {h}x{w} frames by {factor}: not a divisor of both sides")
    blocks = f.reshape(t, h // factor, factor, w // factor, factor, c)
    return np.rint(np.median(blocks, axis=(2, 4))).astype(np.uint8)
