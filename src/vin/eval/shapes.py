"""Sprite shapes in the synthetic sprite world (`vin.data.synthetic`): how cleanly a video draws
them, and whether each sprite keeps its shape.

The identity metrics (`vin.eval.identity`) judge colours only; a palette-coloured blob passes them.
Here every sprite region of a frame is fitted with the world's own shapes:

* A **region** is a connected (8-neighbour) set of pixels of one palette colour other than the
  frame's background, kept if it holds at least ``min_area`` pixels after the 2x2 erosion of
  `vin.eval.identity.core_area` (a 1-px anti-aliasing rim holds none).
* Its **fit** is the best intersection over union (IoU) between the region and the 8 templates of
  the world (`SHAPES` x `SIZES`, rasterised as `render` draws them: a pixel is inside where its
  centre's signed distance is <= 0, i.e. coverage >= 1/2), each centred on a 5x5 grid of
  half-pixel offsets (+-1 px) around the region's bounding-box centre (every shape is centred on
  its bounding box). The template of the best IoU gives the region's (shape, size). Template
  pixels off the frame count in the union: a sprite cut by the border is not clean (the world
  never draws one).

Per video: ``shape_iou``, the mean best IoU over all regions of all frames (single rendered
sprites score 0.95 on average and are given the right shape and size 98 % of the time, small
squares sometimes read as small circles; a blob of the wrong outline scores far less);
``shape_clean``, the share of regions with best IoU >= ``CLEAN_IOU``; ``shape_consistency``, for
each colour the share of the frames showing it whose largest region of that colour fits the
colour's majority (shape, size), pooled over colours (1: no sprite ever changes shape or size).
None where no frame has a region. ``shape_present``, the share of frames with at least one
region: a frame whose sprites vanished (or shattered into specks below ``min_area``) counts
nowhere in the three above; every frame of the world shows a sprite, so it scores 1.

What they do not judge: a sprite partly hidden behind another keeps a smaller region, so the
rendered world itself stays below 1 on the fits; a missing second sprite leaves a frame present
(the identity and caption measures see it).
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import cv2
import numpy as np

from vin.data.synthetic import PALETTE_NAMES, SHAPES, SIZES, shape_sdf
from vin.eval.identity import core_area

CLEAN_IOU = 0.8  # a region this close to a template is a clean sprite (see tests: data >= it unoccluded)
_OFFSETS = np.arange(-1.0, 1.01, 0.5)  # sub-pixel search around the bounding-box centre


class Region(NamedTuple):
    """One fitted sprite region of a frame."""

    colour: int  # palette index
    shape: str
    size: str
    iou: float
    area: int  # pixels


def _templates(h: int, w: int) -> list[tuple[str, str, float]]:
    scale = min(h, w) / 32.0
    return [(shape, size, px * scale / 2.0) for shape in SHAPES for size, px in SIZES.items()]


def fit_region(mask: np.ndarray) -> tuple[str, str, float]:
    """(shape, size, IoU) of the template that best fits the boolean region `mask` (H, W).

    Templates are laid out on a window around the region that may reach past the frame: template
    pixels off the frame count in the union (the world never draws a sprite cut by the border)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.min() + xs.max() + 1) / 2.0, (ys.min() + ys.max() + 1) / 2.0
    area = int(mask.sum())
    # no template reaches further than the largest half extent + 1 px (the offset) from the centre
    reach = int(np.ceil(max(r for *_, r in _templates(h, w)) + 2))
    x0, y0 = int(cx) - reach, int(cy) - reach
    size = 2 * reach + 1
    window = np.zeros((size, size), dtype=bool)  # the region's pixels in the window, False off the frame
    wy0, wy1, wx0, wx1 = max(0, y0), min(h, y0 + size), max(0, x0), min(w, x0 + size)
    window[wy0 - y0:wy1 - y0, wx0 - x0:wx1 - x0] = mask[wy0:wy1, wx0:wx1]
    px = np.arange(x0, x0 + size, dtype=np.float32) + 0.5
    py = np.arange(y0, y0 + size, dtype=np.float32) + 0.5
    dx = px[None, None, None, :] - (cx + _OFFSETS)[None, :, None, None]  # (1, O, 1, S)
    dy = py[None, None, :, None] - (cy + _OFFSETS)[:, None, None, None]  # (O, 1, S, 1)
    best = ("", "", -1.0)
    for shape, size_name, r in _templates(h, w):
        inside = shape_sdf(shape, dx, dy, r) <= 0  # (O, O, S, S)
        inter = (inside & window).sum(axis=(-2, -1))  # region pixels outside the window meet no template
        union = inside.sum(axis=(-2, -1)) + area - inter
        iou = float((inter / np.maximum(union, 1)).max())
        if iou > best[2]:
            best = (shape, size_name, iou)
    return best


def frame_regions(indices: np.ndarray, background: int, min_area: int) -> list[Region]:
    """The fitted sprite regions of one frame of palette indices (H, W) with the given background."""
    out = []
    for c in np.flatnonzero(np.bincount(indices.ravel())):
        if c == background:
            continue
        n, labels = cv2.connectedComponents((indices == c).astype(np.uint8), connectivity=8)
        for k in range(1, n):
            region = labels == k
            if core_area(region) < min_area:
                continue
            shape, size, iou = fit_region(region)
            out.append(Region(int(c), shape, size, iou, int(region.sum())))
    return out


def shape_quality(indices: np.ndarray, backgrounds: list[int], min_area: int) -> dict:
    """Shape metrics of a video given as palette indices (T, H, W) and each frame's background
    index: ``shape_iou``, ``shape_clean``, ``shape_consistency``, ``shape_present`` (see the module
    docstring) and ``per_frame_shapes``, per frame ``[[colour name, shape, size, iou], ...]``."""
    per_frame = [frame_regions(indices[i], backgrounds[i], min_area) for i in range(len(indices))]
    regions = [r for rs in per_frame for r in rs]
    largest: dict[int, list[tuple[str, str]]] = {}  # colour -> (shape, size) of its largest region, per frame shown
    for rs in per_frame:
        for c in {r.colour for r in rs}:
            top = max((r for r in rs if r.colour == c), key=lambda r: r.area)
            largest.setdefault(c, []).append((top.shape, top.size))
    shown = sum(len(v) for v in largest.values())
    kept = sum(Counter(v).most_common(1)[0][1] for v in largest.values())
    return {
        "shape_iou": float(np.mean([r.iou for r in regions])) if regions else None,
        "shape_clean": sum(r.iou >= CLEAN_IOU for r in regions) / len(regions) if regions else None,
        "shape_consistency": kept / shown if shown else None,
        "shape_present": sum(bool(rs) for rs in per_frame) / len(per_frame) if per_frame else None,
        "per_frame_shapes": [[[PALETTE_NAMES[r.colour], r.shape, r.size, round(r.iou, 4)] for r in rs]
                             for rs in per_frame],
    }
