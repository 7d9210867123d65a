"""Known answers for the sprite-shape metrics (`vin.eval.shapes`): templates fit themselves
exactly, rendered sprites are recognised, blobs are not clean, and a shape change is counted."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from vin.config import DataConfig
from vin.data.synthetic import PALETTE_RGB, SHAPES, SIZES, SpriteSpec, VideoSpec, nearest_palette, render, sample_spec, shape_sdf
from vin.eval.evaluate import evaluate_frames
from vin.eval.identity import default_min_area
from vin.eval.shapes import CLEAN_IOU, fit_region, frame_regions, shape_quality

CFG = DataConfig()  # 32x32
MIN_AREA = default_min_area(32, 32)


def template(shape: str, size: str, cx: float, cy: float, n: int = 32) -> np.ndarray:
    xs = np.arange(n, dtype=np.float32) + 0.5
    return shape_sdf(shape, xs[None, :] - cx, xs[:, None] - cy, SIZES[size] / 2.0) <= 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", list(SIZES))
def test_a_template_fits_itself_exactly(shape, size):
    # centred on a half-pixel grid point, so one of the searched offsets is the true centre
    for cx, cy in [(16.0, 16.0), (10.5, 20.0), (21.5, 11.5)]:
        assert fit_region(template(shape, size, cx, cy)) == (shape, size, 1.0)


def test_rendered_single_sprites_are_recognised_and_clean():
    """One sprite per frame at random sub-pixel positions, through the palette mapping: the fitted
    (shape, size) is right in nearly every frame (a 7-px square can look like a 7-px circle once its
    blended corners map to other colours) and every fit is close."""
    rng = np.random.default_rng(0)
    cfg = replace(CFG, min_sprites=1, max_sprites=1)
    right, ious = 0, []
    for _ in range(60):
        spec = sample_spec(rng, cfg)
        sprite = spec.sprites[0]
        frames = nearest_palette(render(spec, cfg, 0, 4))
        for idx in frames:
            regions = frame_regions(idx, spec.background, MIN_AREA)
            assert [r.colour for r in regions] == [sprite.colour]
            right += (regions[0].shape, regions[0].size) == (sprite.shape, sprite.size)
            ious.append(regions[0].iou)
    assert right / len(ious) >= 0.95
    assert min(ious) >= 0.7 and np.mean(ious) >= 0.93
    assert np.mean(np.array(ious) >= CLEAN_IOU) >= 0.95


def test_a_blob_is_not_a_clean_sprite():
    yy, xx = np.mgrid[:32, :32] + 0.5
    blob = (xx - 16) ** 2 / 9.0**2 + (yy - 15) ** 2 / 5.0**2 <= 1  # an 18x10 ellipse: no template's outline
    _, _, iou = fit_region(blob)
    assert iou < CLEAN_IOU
    two = template("circle", "small", 8.0, 8.0) | template("square", "small", 13.0, 8.0)  # two sprites merged
    assert fit_region(two)[2] < CLEAN_IOU


def test_rims_are_not_regions():
    """A green sprite on white has a cyan anti-aliasing rim: one region, the green one."""
    spec = VideoSpec(6, "plain", (SpriteSpec(1, "triangle", "large", 15.3, 16.7, 0.0, 0.0),))
    idx = nearest_palette(render(spec, CFG, 0, 1))[0]
    assert len(np.unique(idx)) > 2  # the rim is there
    regions = frame_regions(idx, 6, MIN_AREA)
    assert [(r.colour, r.shape, r.size) for r in regions] == [(1, "triangle", "large")]


def test_shape_consistency_counts_a_change_of_shape():
    bg = np.full((32, 32), 2)
    circle = np.where(template("circle", "large", 16.0, 16.0), 0, bg)
    square = np.where(template("square", "large", 16.0, 16.0), 0, bg)
    small = np.where(template("diamond", "small", 8.0, 8.0), 3, bg)
    both = np.where(template("diamond", "small", 8.0, 8.0), 3, circle)
    frames = np.stack([circle] * 6 + [square] * 2)
    q = shape_quality(frames, [2] * 8, MIN_AREA)
    assert (q["shape_iou"], q["shape_clean"], q["shape_consistency"]) == (1.0, 1.0, 0.75)
    assert q["per_frame_shapes"][7] == [["red", "square", "large", 1.0]]
    assert q["shape_present"] == 1.0
    # two colours pooled: red shown in 4 frames (3 circles, 1 square), yellow in 3 (always a diamond)
    q = shape_quality(np.stack([both, both, circle, square, small]), [2] * 5, MIN_AREA)
    assert q["shape_consistency"] == pytest.approx(6 / 7)
    empty = shape_quality(np.stack([bg, bg]), [2, 2], MIN_AREA)
    assert (empty["shape_iou"], empty["shape_clean"], empty["shape_consistency"]) == (None, None, None)
    assert empty["shape_present"] == 0.0


def test_shape_present_counts_the_frames_whose_sprites_vanished():
    """Frames without a region (background only, or a sprite shattered into specks below
    min_area) count nowhere in the fits; shape_present is the share of frames with one."""
    bg = np.full((32, 32), 2)
    circle = np.where(template("circle", "large", 16.0, 16.0), 0, bg)
    specks = bg.copy()
    specks[4:32:6, 4:32:6] = 0  # 25 isolated red pixels: no core left after the erosion
    q = shape_quality(np.stack([circle, bg, circle, specks]), [2] * 4, MIN_AREA)
    assert q["shape_present"] == 0.5
    assert (q["shape_iou"], q["shape_clean"], q["shape_consistency"]) == (1.0, 1.0, 1.0)  # as if 2 frames long


def smear(frames: np.ndarray, background: int) -> np.ndarray:
    """Every sprite stretched 6 px sideways (a grey dilation by a 1x7 line in palette-index space):
    circles become stadiums, squares rectangles, no outline of the world."""
    out = []
    for idx in nearest_palette(frames):
        painted = idx.copy()
        for c in np.unique(idx):
            if c != background:
                grown = cv2.dilate((idx == c).astype(np.uint8), np.ones((1, 7), np.uint8)).astype(bool)
                painted[grown & (painted == background)] = c
        out.append(PALETTE_RGB[painted])
    return np.stack(out)


def test_the_rendered_world_scores_high_and_a_smeared_one_low():
    """Whole videos of the world (occlusions included) against the same videos with every sprite
    smeared sideways: the metric separates them."""
    rng = np.random.default_rng(3)
    clean, smeared = [], []
    for _ in range(6):
        spec = sample_spec(rng, CFG)
        frames = render(spec, CFG, 0, 16)
        clean.append(evaluate_frames(frames, [8])["metrics"])
        smeared.append(evaluate_frames(smear(frames, spec.background), [8])["metrics"])
    assert np.mean([m["shape_iou"] for m in clean]) >= 0.9
    assert np.mean([m["shape_clean"] for m in clean]) >= 0.9
    assert np.mean([m["shape_consistency"] for m in clean]) >= 0.9
    assert [m["shape_present"] for m in clean] == [1.0] * 6  # every frame of the world shows a sprite
    assert [m["shape_present"] for m in smeared] == [1.0] * 6
    assert np.mean([m["shape_iou"] for m in smeared]) < 0.8
    assert np.mean([m["shape_clean"] for m in smeared]) < 0.5
    assert evaluate_frames(frames, None, synthetic=False)["metrics"]["shape_iou"] is None


def test_a_region_wider_than_the_search_window_is_scored_whole():
    """The fit looks at a window around the region's centre; pixels of the region outside it still
    count in the union. An 11x30 bar: the best template is the large square, which at the bar's
    centre (x on a pixel edge, y on a pixel centre) takes 12 x 11 pixels, all of them in the bar:
    IoU 132 / 330 (a window-cropped union would give 132 / 187)."""
    bar = np.zeros((32, 32), dtype=bool)
    bar[10:21, 1:31] = True
    shape, size, iou = fit_region(bar)
    assert (shape, size) == ("square", "large") and iou == pytest.approx(132 / 330)


def test_a_sprite_cut_by_the_border_is_not_clean():
    """Template pixels off the frame count in the union: half a large circle is not a clean sprite."""
    half = template("circle", "large", 0.0, 16.0)
    assert half.sum() > 0 and fit_region(half)[2] < CLEAN_IOU
    assert fit_region(template("circle", "large", 6.0, 16.0)) == ("circle", "large", 1.0)  # inside, touching the edge


@pytest.mark.parametrize("n", [64, 48])
def test_templates_scale_with_the_frame(n):
    """At 64x64 (and 48x48) sprites are 2x (1.5x) as large: the templates scale with them."""
    scale = n / 32
    for shape in SHAPES:
        for size, px in SIZES.items():
            xs = np.arange(n, dtype=np.float32) + 0.5
            mask = shape_sdf(shape, xs[None, :] - n / 2, xs[:, None] - n / 2, px * scale / 2) <= 0
            assert fit_region(mask) == (shape, size, 1.0)
