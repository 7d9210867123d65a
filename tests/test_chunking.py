"""Tests for `vin.sampling.chunking`: window layout, split/merge and fusion weights."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vin.sampling.chunking import (
    boundaries,
    chunk_layout,
    fusion_weights,
    merge_chunks,
    split_chunks,
)

SETTINGS = settings(max_examples=80, deadline=None)


@st.composite
def layout_args(draw, max_chunk: int = 16, max_frames: int = 80):
    """Valid (num_frames, chunk_frames, overlap)."""
    f = draw(st.integers(1, max_chunk))
    k = draw(st.integers(0, f - 1))
    n = draw(st.integers(f, max_frames))
    return n, f, k


# ---------------------------------------------------------------------------------------- layout


@SETTINGS
@given(layout_args())
def test_layout_properties(args):
    n_frames, f, k = args
    layout = chunk_layout(n_frames, f, k)
    assert isinstance(layout, tuple) and len(layout) >= 1
    assert all(isinstance(s, int) and isinstance(e, int) for s, e in layout)
    assert layout[0][0] == 0
    assert layout[-1][1] == n_frames
    for s, e in layout:
        assert e - s == f
        assert 0 <= s < e <= n_frames
    for (s0, e0), (s1, e1) in zip(layout, layout[1:]):
        assert s1 > s0
        assert e0 - s1 >= k  # consecutive overlap at least `overlap`
    covered = torch.zeros(n_frames, dtype=torch.bool)
    for s, e in layout:
        covered[s:e] = True
    assert bool(covered.all())
    # window count is the minimal one from the spec
    expected_n = 1 if n_frames == f else math.ceil((n_frames - k) / (f - k))
    assert len(layout) == expected_n
    # evenly spread: each start is the rounded ideal position
    if len(layout) > 1:
        step = (n_frames - f) / (len(layout) - 1)
        for i, (s, _) in enumerate(layout):
            assert abs(s - i * step) <= 0.5 + 1e-9
    assert boundaries(layout) == [s for s, _ in layout[1:]]


@SETTINGS
@given(
    st.integers(1, 16).flatmap(lambda f: st.tuples(st.just(f), st.integers(0, f - 1))),
    st.integers(1, 8),
)
def test_training_layout_exact(fk, n):
    f, k = fk
    num_frames = n * (f - k) + k
    layout = chunk_layout(num_frames, f, k)
    assert layout == tuple((i * (f - k), i * (f - k) + f) for i in range(n))


def test_layout_known_answers():
    assert chunk_layout(20, 8, 2) == ((0, 8), (6, 14), (12, 20))
    assert chunk_layout(8, 8, 0) == ((0, 8),)
    assert chunk_layout(8, 8, 7) == ((0, 8),)
    assert chunk_layout(14, 8, 2) == ((0, 8), (6, 14))
    assert chunk_layout(16, 8, 0) == ((0, 8), (8, 16))
    # 21 frames, F=8, K=2: n = ceil(19/6) = 4, starts round(k*13/3) = 0, 4, 9, 13
    assert chunk_layout(21, 8, 2) == ((0, 8), (4, 12), (9, 17), (13, 21))
    assert chunk_layout(5, 1, 0) == tuple((i, i + 1) for i in range(5))
    assert boundaries(chunk_layout(20, 8, 2)) == [6, 12]
    assert boundaries(((0, 8),)) == []


def test_layout_large_sizes_exact():
    # integer rounding: starts equal the exactly rounded (half up) ideal positions, no float drift
    from fractions import Fraction

    n_frames, f, k = 10**15 + 7, 10**12 + 1, 3
    layout = chunk_layout(n_frames, f, k)
    n = len(layout)
    assert n == math.ceil(Fraction(n_frames - k, f - k))
    for i, (s, e) in enumerate(layout):
        assert s == math.floor(Fraction(i * (n_frames - f), n - 1) + Fraction(1, 2))
        assert e - s == f
    assert layout[-1][1] == n_frames
    assert all(layout[i][1] - layout[i + 1][0] >= k for i in range(n - 1))


@pytest.mark.parametrize(
    "args, numbers",
    [
        ((10, 0, 0), ["0"]),
        ((10, -3, 0), ["-3"]),
        ((10, 8, -1), ["-1"]),
        ((10, 8, 8), ["8", "8"]),
        ((10, 8, 9), ["9", "8"]),
        ((5, 8, 2), ["5", "8"]),
    ],
)
def test_layout_invalid(args, numbers):
    with pytest.raises(ValueError) as info:
        chunk_layout(*args)
    msg = str(info.value)
    assert "\n" not in msg
    for num in numbers:
        assert num in msg


def test_layout_messages_exact():
    msg = r"^overlap \(8\) must be smaller than chunk_frames \(8\)$"
    with pytest.raises(ValueError, match=msg):
        chunk_layout(20, 8, 8)
    with pytest.raises(ValueError, match=r"^cannot cover 5 frames with chunks of 8 frames$"):
        chunk_layout(5, 8, 2)
    with pytest.raises(ValueError, match=r"chunk_frames \(0\)"):
        chunk_layout(5, 0, 0)
    with pytest.raises(ValueError, match=r"overlap \(-2\)"):
        chunk_layout(5, 4, -2)


def test_layout_rejects_non_integers():
    with pytest.raises(TypeError):
        chunk_layout(20.0, 8, 2)


# ------------------------------------------------------------------------------ fusion weights


@SETTINGS
@given(layout_args(), st.sampled_from(["crossfade", "owner"]))
def test_weights_sum_to_one(args, mode):
    n_frames, f, k = args
    layout = chunk_layout(n_frames, f, k)
    w = fusion_weights(layout, n_frames, mode)
    assert w.shape == (len(layout), f) and w.dtype == torch.float32
    assert bool((w >= 0).all())
    total = torch.zeros(n_frames, dtype=torch.float64)
    for i, (s, e) in enumerate(layout):
        total[s:e] += w[i].double()
    torch.testing.assert_close(total, torch.ones(n_frames, dtype=torch.float64), atol=1e-6, rtol=0)


@SETTINGS
@given(layout_args())
def test_owner_weights_pick_earliest_window(args):
    n_frames, f, k = args
    layout = chunk_layout(n_frames, f, k)
    w = fusion_weights(layout, n_frames, "owner")
    assert set(w.unique().tolist()) <= {0.0, 1.0}
    for g in range(n_frames):
        earliest = min(i for i, (s, e) in enumerate(layout) if s <= g < e)
        for i, (s, e) in enumerate(layout):
            if s <= g < e:
                assert w[i, g - s].item() == (1.0 if i == earliest else 0.0)


@SETTINGS
@given(layout_args())
def test_crossfade_two_window_formula(args):
    n_frames, f, k = args
    layout = chunk_layout(n_frames, f, k)
    w = fusion_weights(layout, n_frames, "crossfade")
    assert bool((w > 0).all())
    # wherever a frame is covered by exactly two windows and neither window's ramps meet,
    # the pairwise linear formula holds
    for i in range(len(layout) - 1):
        (s0, e0), (s1, e1) = layout[i], layout[i + 1]
        kk = e0 - s1
        if kk == 0:
            continue
        prev_end = layout[i - 1][1] if i > 0 else 0
        next_start = layout[i + 2][0] if i + 2 < len(layout) else n_frames
        if prev_end > s1 or next_start < e0:
            continue  # a third window reaches into this overlap
        left_ramp = max(0, prev_end - s0)
        right_ramp = max(0, e1 - next_start) if i + 2 < len(layout) else 0
        if left_ramp + kk > f or right_ramp + kk > f:
            continue  # ramps meet inside a window
        for j in range(kk):
            g = s1 + j
            assert w[i, g - s0].item() == pytest.approx((kk - j) / (kk + 1), abs=1e-6)
            assert w[i + 1, g - s1].item() == pytest.approx((j + 1) / (kk + 1), abs=1e-6)


def test_crossfade_known_answer():
    layout = chunk_layout(14, 8, 2)
    assert layout == ((0, 8), (6, 14))
    w = fusion_weights(layout, 14, "crossfade")
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 2 / 3, 1 / 3],
            [1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(w, expected)
    owner = fusion_weights(layout, 14, "owner")
    torch.testing.assert_close(
        owner, torch.tensor([[1.0] * 8, [0, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    )


def test_crossfade_three_window_coverage_normalised():
    # F=8, K=6 at 12 frames: windows (0,8),(2,10),(4,12): frames 4..7 lie under three windows
    layout = chunk_layout(12, 8, 6)
    assert layout == ((0, 8), (2, 10), (4, 12))
    w = fusion_weights(layout, 12, "crossfade")
    total = torch.zeros(12, dtype=torch.float64)
    for i, (s, e) in enumerate(layout):
        total[s:e] += w[i].double()
    torch.testing.assert_close(total, torch.ones(12, dtype=torch.float64))
    # symmetric layout -> symmetric weights
    torch.testing.assert_close(w.flip(0).flip(1), w)


def test_single_window_weights_are_one():
    for mode in ("crossfade", "owner"):
        torch.testing.assert_close(fusion_weights(((0, 8),), 8, mode), torch.ones(1, 8))


def test_weights_invalid():
    layout = chunk_layout(14, 8, 2)
    with pytest.raises(ValueError, match="blend"):
        fusion_weights(layout, 14, "blend")
    with pytest.raises(ValueError, match=r"14.*15|15.*14"):
        fusion_weights(layout, 15, "crossfade")
    with pytest.raises(ValueError, match="gap"):
        fusion_weights(((0, 4), (5, 9)), 9, "owner")
    with pytest.raises(ValueError):
        fusion_weights(((0, 4), (2, 5)), 5, "owner")  # unequal lengths
    with pytest.raises(ValueError):
        fusion_weights(((1, 5),), 5, "owner")  # does not start at 0
    with pytest.raises(ValueError):
        fusion_weights((), 0, "owner")


# ------------------------------------------------------------------------------- split / merge


@SETTINGS
@given(
    layout_args(max_chunk=8, max_frames=30),
    st.sampled_from(["crossfade", "owner"]),
    st.integers(0, 2**31 - 1),
)
def test_split_merge_identity(args, mode, seed):
    n_frames, f, k = args
    layout = chunk_layout(n_frames, f, k)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, n_frames, 4, 5, generator=gen)
    chunks = split_chunks(x, layout)
    assert chunks.shape == (2, len(layout), 3, f, 4, 5)
    for i, (s, e) in enumerate(layout):
        assert torch.equal(chunks[:, i], x[:, :, s:e])
    w = fusion_weights(layout, n_frames, mode)
    y = merge_chunks(chunks, layout, w)
    assert y.shape == x.shape and y.dtype == x.dtype
    if mode == "owner":
        assert torch.equal(y, x)
    else:
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)


def test_merge_fuses_different_predictions():
    layout = chunk_layout(14, 8, 2)
    chunks = torch.stack([torch.zeros(1, 1, 8, 1, 1), torch.ones(1, 1, 8, 1, 1)], dim=1)
    y = merge_chunks(chunks, layout, fusion_weights(layout, 14, "crossfade"))
    expected = torch.tensor([0.0] * 6 + [1 / 3, 2 / 3] + [1.0] * 6)
    torch.testing.assert_close(y.flatten(), expected)
    y = merge_chunks(chunks, layout, fusion_weights(layout, 14, "owner"))
    torch.testing.assert_close(y.flatten(), torch.tensor([0.0] * 8 + [1.0] * 6))


def test_merge_keeps_dtype_and_gradients():
    layout = chunk_layout(20, 8, 2)
    x = torch.randn(1, 2, 20, 3, 3, dtype=torch.float64, requires_grad=True)
    w = fusion_weights(layout, 20, "crossfade")
    y = merge_chunks(split_chunks(x, layout), layout, w)
    assert y.dtype == torch.float64
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    xb = torch.randn(1, 2, 20, 3, 3).to(torch.bfloat16)
    yb = merge_chunks(split_chunks(xb, layout), layout, w)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb, xb)


def test_split_merge_invalid():
    layout = chunk_layout(20, 8, 2)
    with pytest.raises(ValueError, match=r"19.*20"):
        split_chunks(torch.zeros(1, 1, 19, 2, 2), layout)
    with pytest.raises(ValueError):
        split_chunks(torch.zeros(1, 20, 2, 2), layout)
    chunks = split_chunks(torch.zeros(1, 1, 20, 2, 2), layout)
    w = fusion_weights(layout, 20, "owner")
    with pytest.raises(ValueError):
        merge_chunks(chunks[:, :2], layout, w)
    with pytest.raises(ValueError):
        merge_chunks(chunks, layout, w[:2])
    with pytest.raises(ValueError):
        merge_chunks(chunks[0], layout, w)
