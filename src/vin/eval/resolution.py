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
UPSCALE_RECON_TOL = 1.5  # grey levels: mean |frame - nearest upscale of its block medians| (H.264: < 1)


def _check(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 \
            or 0 in frames.shape:
        raise ValueError(f"expected non-empty (T, H, W, 3) uint8 frames, got {getattr(frames, 'shape', type(frames).__name__)}")
    return frames


def _profiles(frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per axis (H, W): for each neighbour pair (j, j+1) along it, the mean |difference| and the
    number of strong differences (> UPSCALE_STRONG_EDGE in some channel), over everything else."""
    f = frames.astype(np.int16)
    out = []
    for axis in (1, 2):
        d = np.abs(np.diff(f, axis=axis))
        others = tuple(a for a in (0, 1, 2, 3) if a != axis)
        strong = (d.max(axis=-1) > UPSCALE_STRONG_EDGE).sum(axis=tuple(a for a in (0, 1, 2) if a != axis))
        out.append((d.mean(axis=others), strong))
    return out


def _looks_upscaled(profiles: list[tuple[np.ndarray, np.ndarray]], k: int, n_frames: int) -> bool:
    """Block evidence for factor k. With enough strong edges (>= one per frame), nearly all of them
    must lie on k-block edges; otherwise the mean difference inside blocks (worst offset) must be
    tiny and UPSCALE_EDGE_RATIO times below the one across block edges."""
    strong_inside = strong_edge = 0
    inside = edge = 0.0
    for mean, strong in profiles:
        pos = np.arange(len(mean)) % k  # pair (j, j+1) straddles a block edge iff j % k == k - 1
        strong_inside += int(strong[pos != k - 1].sum())
        strong_edge += int(strong[pos == k - 1].sum())
        inside = max(inside, max(float(mean[pos == o].mean()) for o in range(k - 1)))
        edge = max(edge, float(mean[pos == k - 1].mean()))
    if strong_inside + strong_edge >= n_frames:
        return strong_inside <= UPSCALE_STRONG_INSIDE_RATIO * strong_edge
    return inside <= UPSCALE_INSIDE_TOL and edge >= UPSCALE_EDGE_RATIO * max(inside, 0.1)


def _reconstructs(frames: np.ndarray, k: int) -> bool:
    """The frames are (close to) the nearest-neighbour upscale of their own k-block medians: rules
    out grainy or textured video whose few sharp edges happen to lie on the grid (letterbox bars)."""
    t, h, w, c = frames.shape
    small = downscale(frames, k).astype(np.int16)
    blocks = frames.astype(np.int16).reshape(t, h // k, k, w // k, k, c)
    return float(np.abs(blocks - small[:, :, None, :, None]).mean()) <= UPSCALE_RECON_TOL


def detect_upscale(frames: np.ndarray, max_factor: int = MAX_UPSCALE) -> int:
    """The integer factor k by which ``frames`` look nearest-neighbour upscaled (1 if none): the
    largest k in max_factor..2 dividing H and W at which the frames look blocky and are reproduced
    by upscaling their own block medians (UPSCALE_RECON_TOL). Where the frames have sharp edges
    (UPSCALE_STRONG_EDGE), nearly all of them must fall on k-block edges: an upscale moves every
    edge onto the grid, while a native frame with block-aligned textures (4-px stripes) still has
    its anti-aliased sprite edges off it, and H.264 at vin's quality does not create sharp edges
    inside blocks. Frames with few sharp edges fall back to the mean differences: inside blocks (the
    worst offset's mean |difference| <= UPSCALE_INSIDE_TOL) against across block edges
    (UPSCALE_EDGE_RATIO times more, so a flat video is not called upscaled). Checking every offset
    inside a block, not the mean, keeps a video upscaled by 8 from passing as upscaled by 16. Looks
    at <= 16 evenly spaced frames."""
    f = _check(frames)
    t, h, w, _ = f.shape
    sample = f[np.unique(np.linspace(0, t - 1, min(t, UPSCALE_SAMPLE_FRAMES)).round().astype(int))]
    profiles = _profiles(sample)
    for k in range(min(max_factor, h // 2, w // 2), 1, -1):  # >= 2 blocks: an edge to compare
        if h % k or w % k:
            continue
        if _looks_upscaled(profiles, k, len(sample)) and _reconstructs(sample, k):
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
