"""Tests for the procedural sprite world (`vin.data.synthetic`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vin.config import DataConfig
from vin.data.synthetic import (
    EDGE_MARGIN,
    PALETTE_NAMES,
    PALETTE_RGB,
    SHAPES,
    SIZES,
    TEXTURES,
    VOCABULARY,
    SpriteSpec,
    SyntheticVideoStream,
    VideoSpec,
    make_batch,
    make_caption,
    nearest_palette,
    render,
    sample_spec,
    sprite_centres,
)

CFG = DataConfig()


def _specs(n: int, cfg: DataConfig = CFG, seed: int = 0) -> list[VideoSpec]:
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, cfg) for _ in range(n)]


def _half_extent(sprite: SpriteSpec, cfg: DataConfig) -> float:
    return SIZES[sprite.size] * min(cfg.height, cfg.width) / 32 / 2


def test_make_batch_shapes_dtype_range() -> None:
    video, captions, specs = make_batch(0, 0, 3, 5, CFG)
    assert video.shape == (3, 3, 5, CFG.height, CFG.width)
    assert video.dtype == torch.float32
    assert video.min() >= -1.0 and video.max() <= 1.0
    assert len(captions) == len(specs) == 3
    assert all(isinstance(c, str) and c for c in captions)
    # Channels-first layout matches the uint8 render of each spec.
    frames = render(specs[1], CFG, 0, 5)
    expected = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    assert torch.allclose(video[1], expected, atol=1e-6)


def test_make_batch_deterministic_and_index_dependent() -> None:
    a, ca, sa = make_batch(7, 3, 4, 6, CFG)
    b, cb, sb = make_batch(7, 3, 4, 6, CFG)
    assert torch.equal(a, b) and ca == cb and sa == sb
    c, _, sc = make_batch(7, 4, 4, 6, CFG)
    assert not torch.equal(a, c) and sa != sc
    d, _, _ = make_batch(8, 3, 4, 6, CFG)
    assert not torch.equal(a, d)


def test_sample_spec_constraints() -> None:
    for spec in _specs(200):
        assert 0 <= spec.background < len(PALETTE_NAMES) and spec.texture in TEXTURES
        assert CFG.min_sprites <= len(spec.sprites) <= CFG.max_sprites
        colours = [s.colour for s in spec.sprites]
        assert len(set(colours)) == len(colours) and spec.background not in colours
        for s in spec.sprites:
            assert s.shape in SHAPES and s.size in SIZES
            speed = np.hypot(s.vx, s.vy)
            assert CFG.min_speed - 1e-9 <= speed <= CFG.max_speed + 1e-9


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), a=st.integers(0, 500), n=st.integers(1, 6))
def test_render_range_property(seed: int, a: int, n: int) -> None:
    spec = _specs(1, seed=seed)[0]
    np.testing.assert_array_equal(render(spec, CFG, a, n), render(spec, CFG, 0, a + n)[a:])


@pytest.mark.parametrize("cfg", [CFG, DataConfig(height=48, width=64)])
def test_sprites_stay_inside_and_bounce(cfg: DataConfig) -> None:
    sprite = SpriteSpec(colour=0, shape="square", size="large", x0=10.0, y0=20.0, vx=1.1, vy=-0.7)
    spec = VideoSpec(background=2, texture="plain", sprites=(sprite,))
    centres = sprite_centres(spec, cfg, 0, 400)[0]
    m = _half_extent(sprite, cfg) + EDGE_MARGIN
    lo = np.array([m, m])
    hi = np.array([cfg.width - m, cfg.height - m])
    assert np.all(centres >= lo - 1e-9) and np.all(centres <= hi + 1e-9)
    step = np.diff(centres, axis=0)
    for axis, v in enumerate((sprite.vx, sprite.vy)):
        signs = np.sign(step[:, axis])
        flips = np.nonzero(signs[1:] != signs[:-1])[0] + 1  # frame index of each turn
        assert len(flips) >= 4, "should bounce off both walls several times"
        near_wall = np.minimum(centres[flips, axis] - lo[axis], hi[axis] - centres[flips, axis])
        assert np.all(near_wall <= abs(v) + 1e-9)
        assert signs[0] == np.sign(v)
    # The rendered sprite never touches the border: border pixels stay background.
    frames = render(spec, cfg, 0, 400)
    border = np.concatenate(
        [frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1
    )
    assert np.all(border == PALETTE_RGB[2])


def test_random_sprites_stay_in_bounds() -> None:
    for spec in _specs(50):
        centres = sprite_centres(spec, CFG, 0, 300)
        for s, c in zip(spec.sprites, centres):
            m = _half_extent(s, CFG) + EDGE_MARGIN
            assert c.min() >= m - 1e-9 and c.max() <= CFG.width - m + 1e-9


def test_motion_continuity() -> None:
    scale = min(CFG.height, CFG.width) / 32
    for spec in _specs(50):
        centres = sprite_centres(spec, CFG, 0, 200)
        disp = np.linalg.norm(np.diff(centres, axis=1), axis=-1)
        assert disp.max() <= CFG.max_speed * scale + 1e-6
        assert disp.max() >= CFG.min_speed * scale * 0.5  # it actually moves


def test_rendered_sprite_tracks_its_centre() -> None:
    # The centroid of the sprite's colour follows the analytic centre (sub-pixel smooth).
    sprite = SpriteSpec(colour=6, shape="circle", size="large", x0=12.3, y0=15.0, vx=0.3, vy=0.1)
    spec = VideoSpec(background=2, texture="plain", sprites=(sprite,))
    frames = render(spec, CFG, 0, 30).astype(np.float64)
    alpha = (frames[..., 0] - PALETTE_RGB[2, 0]) / (int(PALETTE_RGB[6, 0]) - int(PALETTE_RGB[2, 0]))
    ys, xs = np.mgrid[: CFG.height, : CFG.width] + 0.5
    cx = (alpha * xs).sum((1, 2)) / alpha.sum((1, 2))
    cy = (alpha * ys).sum((1, 2)) / alpha.sum((1, 2))
    expected = sprite_centres(spec, CFG, 0, 30)[0]
    # Soft edges: partially covered pixels exist, and the covered area is the disc's area.
    assert np.any((alpha > 0.05) & (alpha < 0.95))
    np.testing.assert_allclose(alpha.sum((1, 2)), np.pi * 5.5**2, rtol=0.03)
    assert np.abs(cx - expected[:, 0]).max() < 0.1 and np.abs(cy - expected[:, 1]).max() < 0.1


@pytest.mark.parametrize("texture", TEXTURES)
def test_background_persists(texture: str) -> None:
    ys, xs = np.mgrid[: CFG.height, : CFG.width] + 0.5
    for spec in _specs(12, seed=1):
        spec = VideoSpec(spec.background, texture, spec.sprites)
        frames = render(spec, CFG, 0, 48)
        labels = nearest_palette(frames)
        centres = sprite_centres(spec, CFG, 0, 48)
        far = np.ones(labels.shape, dtype=bool)
        for s, c in zip(spec.sprites, centres):
            dist = np.hypot(xs - c[:, 0, None, None], ys - c[:, 1, None, None])
            far &= dist > _half_extent(s, CFG) * np.sqrt(2) + 1.5
        assert far.any(axis=(1, 2)).all()
        assert np.all(labels[far] == spec.background)
        if texture == "plain":
            assert np.all(frames[far] == PALETTE_RGB[spec.background])
        else:  # the texture is visible and does not change over time
            packed = frames[far].astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
            assert len(np.unique(packed)) == 2
            np.testing.assert_array_equal(frames[0][far[0] & far[-1]], frames[-1][far[0] & far[-1]])


def test_sprite_colour_persists() -> None:
    # Each sprite's interior is exactly its palette colour in every frame.
    for spec in _specs(20, seed=2):
        frames = render(spec, CFG, 0, 40)
        labels = nearest_palette(frames)
        centres = np.rint(sprite_centres(spec, CFG, 0, 40) - 0.5).astype(int)
        top = spec.sprites[-1]  # drawn last, so its centre is never covered
        cx, cy = centres[-1, :, 0], centres[-1, :, 1]
        assert np.all(labels[np.arange(40), cy, cx] == top.colour)


def _words(caption: str) -> list[str]:
    return caption.split()


def test_captions_vocabulary_and_shapes() -> None:
    rng = np.random.default_rng(0)
    for spec in _specs(100):
        caption = make_caption(spec, rng, 0.5)
        words = _words(caption)
        assert set(words) <= set(VOCABULARY)
        for s in spec.sprites:
            assert words.count(s.shape) >= sum(t.shape == s.shape for t in spec.sprites)


def test_captions_keep_all_and_none() -> None:
    rng = np.random.default_rng(1)
    texture_words = {"plain": "plain", "stripes": "striped", "checker": "checkered"}
    for spec in _specs(50):
        words = _words(make_caption(spec, rng, 1.0))
        for s in spec.sprites:
            assert PALETTE_NAMES[s.colour] in words and s.size in words
        assert PALETTE_NAMES[spec.background] in words
        assert texture_words[spec.texture] in words and "background" in words
        words = _words(make_caption(spec, rng, 0.0))
        assert not set(words) & set(PALETTE_NAMES)
        assert not set(words) & set(SIZES) and "background" not in words
        assert [w for w in words if w in SHAPES] == [s.shape for s in spec.sprites]


def test_captions_deterministic_and_varied() -> None:
    spec = _specs(1, cfg=DataConfig(min_sprites=2, max_sprites=2))[0]
    a = [make_caption(spec, np.random.default_rng(i), 0.5) for i in range(40)]
    b = [make_caption(spec, np.random.default_rng(i), 0.5) for i in range(40)]
    assert a == b and len(set(a)) > 5


def test_nearest_palette_exact_colours() -> None:
    assert PALETTE_RGB.shape == (8, 3) and PALETTE_RGB.dtype == np.uint8
    assert len(PALETTE_NAMES) == 8
    np.testing.assert_array_equal(nearest_palette(PALETTE_RGB), np.arange(8))
    grid = PALETTE_RGB[np.array([[3, 1], [7, 0]])]
    np.testing.assert_array_equal(nearest_palette(grid), [[3, 1], [7, 0]])


def test_nearest_palette_robust_to_mild_blur() -> None:
    # A 15% mix with any other colour, or the texture darkening, keeps the label.
    rgb = PALETTE_RGB.astype(np.float64)
    for i, j in itertools.permutations(range(8), 2):
        mixed = np.rint(0.85 * rgb[i] + 0.15 * rgb[j]).astype(np.uint8)
        assert nearest_palette(mixed) == i
    assert np.all(nearest_palette(np.rint(rgb * 0.8).astype(np.uint8)) == np.arange(8))


def test_stream_resumes_exactly() -> None:
    stream = SyntheticVideoStream(CFG, seed=3, batch_size=2, frames_choices=(4, 6, 8))
    first = list(itertools.islice(stream, 5))
    assert [i for i, _, _ in first] == list(range(5))
    assert {v.shape[2] for _, v, _ in first} <= {4, 6, 8}
    resumed = SyntheticVideoStream(CFG, 3, 2, (4, 6, 8), start_index=3)
    for (i, v, c), (j, w, d) in zip(first[3:], itertools.islice(resumed, 2)):
        assert i == j and torch.equal(v, w) and c == d
    i, v, c = first[2]
    expected, captions, _ = make_batch(3, 2, 2, v.shape[2], CFG)
    assert torch.equal(v, expected) and c == captions


def test_batch_rows_are_the_same_videos_and_captions():
    """A data-parallel process renders only its rows of a batch, and gets exactly those rows."""
    cfg = DataConfig(height=16, width=16)
    video, captions, _ = make_batch(3, 7, 5, 6, cfg)
    for lo, hi in [(0, 2), (2, 5), (4, 5)]:
        part, part_captions, _ = make_batch(3, 7, 5, 6, cfg, rows=(lo, hi))
        assert torch.equal(part, video[lo:hi]) and part_captions == captions[lo:hi]
    with pytest.raises(ValueError, match="rows"):
        make_batch(3, 7, 5, 6, cfg, rows=(3, 3))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers, start, rows", [(1, 0, None), (2, 3, None), (3, 5, (1, 3))])
def test_prefetched_stream_is_the_stream(workers, start, rows):
    """Batches rendered by worker processes are the batches of the stream, in its order: worker w
    of n renders every n-th batch and the loader interleaves them back (resumed streams and a
    data-parallel process's rows too)."""
    from vin.data.prefetch import prefetch

    cfg = DataConfig(height=16, width=16)
    stream = SyntheticVideoStream(cfg, seed=4, batch_size=3, frames_choices=(4, 6, 8), start_index=start, rows=rows)
    expected = list(itertools.islice(iter(stream), 7))
    got = list(itertools.islice(prefetch(stream, workers), 7))
    assert [i for i, _, _ in got] == list(range(start, start + 7))
    assert len({v.shape[2] for _, v, _ in expected}) > 1  # the lengths vary, so an order slip would show
    for (i, v, c), (j, w, d) in zip(expected, got):
        assert i == j and c == d and torch.equal(v, w), i


def _label(batch):
    index, video, captions = batch
    return index, video.sum(), f"batch {index}"


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2])
def test_a_mapped_stream_applies_its_function_to_every_batch_in_order(workers):
    """`Mapped(stream, fn)`: fn of each batch, in the stream's order, also when workers apply it."""
    from vin.data.prefetch import Mapped, prefetch

    stream = SyntheticVideoStream(DataConfig(height=16, width=16), seed=2, batch_size=2, frames_choices=(4, 6), start_index=3)
    expected = [_label(b) for b in itertools.islice(iter(stream), 5)]
    mapped = Mapped(stream, _label)
    assert mapped.start_index == 3
    got = list(itertools.islice(prefetch(mapped, workers), 5))
    assert [g[0] for g in got] == [3, 4, 5, 6, 7] and [g[2] for g in got] == [e[2] for e in expected]
    assert all(torch.equal(g[1], e[1]) for g, e in zip(got, expected))


def _with_draws(batch):
    from vin.training.objective import StepDraws

    index, video, captions = batch
    return index, video, captions, StepDraws((False,) * len(captions), torch.rand(len(captions)), torch.randn_like(video))


def test_without_workers_pinned_batches_are_the_stream_with_every_tensor_pinned(monkeypatch):
    """`prefetch(stream, 0, pin_memory=True)` (a CUDA run without data workers) pins every tensor
    of every batch, also inside the step's draws (a named tuple, which stays one), and changes
    nothing else. Pinning is mocked: it needs a CUDA device."""
    from vin.data.prefetch import Mapped, prefetch
    from vin.training.objective import StepDraws

    pinned = []

    def pin(self):
        copy = self.clone()
        pinned.append(copy)
        return copy

    stream = Mapped(SyntheticVideoStream(DataConfig(height=16, width=16), seed=2, batch_size=2, frames_choices=(4,)),
                    _with_draws)
    torch.manual_seed(0)
    expected = list(itertools.islice(iter(stream), 3))
    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    torch.manual_seed(0)
    got = list(itertools.islice(prefetch(stream, 0, pin_memory=True), 3))
    monkeypatch.undo()
    assert len(pinned) == 3 * 3  # video, t, noise of each batch
    for (i, v, c, d), (j, w, e, f) in zip(expected, got):
        assert i == j and c == e and isinstance(f, StepDraws) and f.drop == d.drop
        assert torch.equal(v, w) and torch.equal(d.t, f.t) and torch.equal(d.noise, f.noise)
        assert all(any(x is p for p in pinned) for x in (w, f.t, f.noise))


def test_stream_batches_with_a_stride_are_its_every_nth_batch():
    stream = SyntheticVideoStream(CFG, seed=3, batch_size=2, frames_choices=(4, 6, 8))
    every = list(itertools.islice(stream, 7))
    strided = list(itertools.islice(stream.batches(1, 3), 2))
    for (i, v, c), (j, w, d) in zip(every[1::3], strided):
        assert i == j and torch.equal(v, w) and c == d
    with pytest.raises(ValueError, match="workers"):
        from vin.data.prefetch import prefetch

        prefetch(stream, -1)


def test_a_run_with_data_workers_that_dies_of_an_exception_exits():
    """The workers must not keep a crashed trainer alive: the exception's traceback holds the
    loader, so only their own exit handling ends them (a worker ignoring SIGTERM hung here)."""
    import subprocess
    import sys

    code = ("from vin.config import DataConfig\n"
            "from vin.data.synthetic import SyntheticVideoStream\n"
            "from vin.data.prefetch import prefetch\n"
            "stream = prefetch(SyntheticVideoStream(DataConfig(height=16, width=16), 0, 2, (4,)), 2)\n"
            "next(stream)\n"
            "raise RuntimeError('a CUDA error, say')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "a CUDA error, say" in r.stderr
