"""Splitting a long video into overlapping chunks and fusing the chunk predictions back.

A Video Interface Network denoises a long video of ``N`` frames as ``n`` chunks of the DiT's
native length ``F`` in parallel; where chunks overlap, their predictions are fused. The paper
fixes the fusion rule (a linear cross-fade) but leaves open how the chunk windows are laid out
when ``N`` is not exactly the training length. This module answers that question as follows:

* **The overlap lives inside the window.** Every window holds exactly ``F`` frames, so the DiT
  always sees the length (and the temporal positions) it was trained on: no padding, no masks,
  no out-of-distribution sequence lengths. Overlapping frames are simply seen by two (or more)
  windows.
* **As few windows as possible.** ``n = ceil((N - K) / (F - K))`` (``K`` = the requested overlap;
  ``n = 1`` when ``N == F``) is the smallest count for which every consecutive pair of windows
  can overlap by at least ``K`` frames while covering ``[0, N)``. Compute grows with ``n``.
* **Starts evenly spread**, ``start_k = round(k * (N - F) / (n - 1))``. The first window starts at
  0 and the last ends exactly at ``N``; the slack (``N`` not fitting the stride grid) is spread over
  all overlaps (each becomes ``K`` or a frame or so more) instead of the common "stride ``F - K``,
  then clamp the last window to the end" layout, which dumps all of the slack into one huge final
  overlap and makes the last chunk almost redundant. Because the step ``(N - F) / (n - 1)`` is at
  most ``F - K`` and rounding is monotone, every consecutive overlap is ``>= K``; the step is also
  ``>= 1``, so starts are strictly increasing. When ``N == n * (F - K) + K`` the starts are exactly
  ``k * (F - K)``, i.e. the layout used in training. The rounding is done in exact integer
  arithmetic (round half up), so the layout never depends on floating-point drift.

Fusion weights (`fusion_weights`) are per window and per local frame and sum to one over the
windows covering each global frame, so ``merge_chunks(split_chunks(x, L), L, w) == x``:

* ``"crossfade"`` - the paper's linear cross-fade. Within an overlap of ``K`` frames, at position
  ``j = 0..K-1``, the left window gets ``(K - j) / (K + 1)`` and the right ``(j + 1) / (K + 1)``.
  For arbitrary layouts (very large overlaps put a frame under 3+ windows) each window's profile is
  the minimum of a ramp up over its left overlap and a ramp down over its right overlap, and the
  profiles are normalised per global frame; for two windows this is exactly the formula above.
* ``"owner"`` - no fusion: each frame belongs entirely to the earliest window covering it; later
  windows only use the overlap as context.

Layouts are tuples of ``(start, end)`` pairs (end exclusive). All functions are pure.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

Layout = tuple[tuple[int, int], ...]

FUSION_MODES = ("crossfade", "owner")


def chunk_layout(num_frames: int, chunk_frames: int, overlap: int) -> Layout:
    """Windows ``(start, end)`` of exactly ``chunk_frames`` frames covering ``[0, num_frames)``.

    Consecutive windows overlap by at least ``overlap`` frames; the first starts at 0, the last
    ends at ``num_frames``; starts are evenly spread (see the module docstring for why).

    Raises:
        TypeError: an argument is not an integer.
        ValueError: ``chunk_frames < 1``, ``overlap < 0``, ``overlap >= chunk_frames`` or
            ``num_frames < chunk_frames``.
    """
    num_frames = operator.index(num_frames)
    chunk_frames = operator.index(chunk_frames)
    overlap = operator.index(overlap)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames ({chunk_frames}) must be at least 1")
    if overlap < 0:
        raise ValueError(f"overlap ({overlap}) must be non-negative")
    if overlap >= chunk_frames:
        raise ValueError(f"overlap ({overlap}) must be smaller than chunk_frames ({chunk_frames})")
    if num_frames < chunk_frames:
        raise ValueError(f"cannot cover {num_frames} frames with chunks of {chunk_frames} frames")

    if num_frames == chunk_frames:
        return ((0, chunk_frames),)
    stride = chunk_frames - overlap
    n = -(-(num_frames - overlap) // stride)  # ceil, exact; >= 2 here
    span = num_frames - chunk_frames  # last start
    # round(k * span / (n - 1)), half up, in integers
    starts = [(2 * k * span + (n - 1)) // (2 * (n - 1)) for k in range(n)]
    return tuple((s, s + chunk_frames) for s in starts)


def _check_layout(layout: Sequence[Sequence[int]]) -> tuple[Layout, int, int]:
    """Validate a layout; return it normalised to a tuple of int pairs, plus ``(F, N)``.

    A valid layout is non-empty, its windows all have the same positive length ``F``, starts
    strictly increase from 0, consecutive windows touch or overlap (no gaps), and the last window
    ends at ``N``.
    """
    try:
        windows = tuple((operator.index(s), operator.index(e)) for s, e in layout)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"layout must be a sequence of (start, end) int pairs: {exc}") from None
    if not windows:
        raise ValueError("layout is empty")
    length = windows[0][1] - windows[0][0]
    if length < 1:
        raise ValueError(f"layout window {windows[0]} is empty")
    if windows[0][0] != 0:
        raise ValueError(f"layout must start at frame 0, got first window {windows[0]}")
    for i, (s, e) in enumerate(windows):
        if e - s != length:
            raise ValueError(f"layout window {i} {(s, e)} has {e - s} frames, expected {length}")
        if i > 0:
            ps, pe = windows[i - 1]
            if s <= ps:
                raise ValueError(
                    f"layout starts must increase: window {i} {(s, e)} after {(ps, pe)}"
                )
            if s > pe:
                raise ValueError(f"layout has a gap between windows {(ps, pe)} and {(s, e)}")
    return windows, length, windows[-1][1]


def split_chunks(x: Tensor, layout: Sequence[Sequence[int]]) -> Tensor:
    """Cut a video into its (overlapping) chunk windows.

    Args:
        x: ``(B, C, N, H, W)`` video, frames on dim 2.
        layout: windows from `chunk_layout`; the last must end at ``N``.

    Returns:
        ``(B, n, C, F, H, W)`` contiguous copy, ``n = len(layout)``.
    """
    windows, _, num_frames = _check_layout(layout)
    if x.ndim != 5:
        raise ValueError(f"expected a (B, C, N, H, W) video, got shape {tuple(x.shape)}")
    if x.shape[2] != num_frames:
        raise ValueError(f"video has {x.shape[2]} frames but the layout covers {num_frames}")
    return torch.stack([x[:, :, s:e] for s, e in windows], dim=1)


def fusion_weights(layout: Sequence[Sequence[int]], num_frames: int, mode: str) -> Tensor:
    """Per-window, per-local-frame fusion weights that sum to one over windows at every frame.

    Args:
        layout: windows from `chunk_layout`, covering exactly ``[0, num_frames)``.
        num_frames: ``N``, the video length.
        mode: ``"crossfade"`` (linear cross-fade, the paper's fusion) or ``"owner"`` (each frame
            taken entirely from the earliest window covering it).

    Returns:
        ``(n, F)`` float32 on the CPU.
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; expected one of {', '.join(FUSION_MODES)}")
    windows, length, end = _check_layout(layout)
    num_frames = operator.index(num_frames)
    if end != num_frames:
        raise ValueError(f"layout covers {end} frames but num_frames is {num_frames}")
    n = len(windows)
    starts = torch.tensor([s for s, _ in windows], dtype=torch.long)
    local = torch.arange(length, dtype=torch.long)
    # overlap of each window with its predecessor / successor (ends increase, so the predecessor
    # reaches furthest into this window among all earlier windows)
    left = [0] + [max(0, windows[i - 1][1] - windows[i][0]) for i in range(1, n)]
    right = [max(0, windows[i][1] - windows[i + 1][0]) for i in range(n - 1)] + [0]
    left_t = torch.tensor(left, dtype=torch.long)[:, None]
    right_t = torch.tensor(right, dtype=torch.long)[:, None]

    if mode == "owner":
        return (local[None, :] >= left_t).to(torch.float32).expand(n, length).contiguous()

    # crossfade, computed in float64 and normalised before the cast
    pos = local[None, :].to(torch.float64)
    up = torch.where(pos < left_t, (pos + 1) / (left_t + 1), torch.ones((), dtype=torch.float64))
    k_from_end = length - 1 - pos  # 0 at the last local frame
    down = torch.where(
        k_from_end < right_t, (k_from_end + 1) / (right_t + 1), torch.ones((), dtype=torch.float64)
    )
    profile = torch.minimum(up, down)  # (n, F), all > 0
    index = (starts[:, None] + local[None, :]).reshape(-1)
    total = torch.zeros(num_frames, dtype=torch.float64).index_add_(0, index, profile.reshape(-1))
    return (profile / total[index].view(n, length)).to(torch.float32)


def merge_chunks(chunks: Tensor, layout: Sequence[Sequence[int]], weights: Tensor) -> Tensor:
    """Fuse chunk predictions into one video: weighted scatter-add of each window's frames.

    Args:
        chunks: ``(B, n, C, F, H, W)``.
        layout: the ``n`` windows the chunks were cut with.
        weights: ``(n, F)`` from `fusion_weights` (broadcast over ``B, C, H, W``).

    Returns:
        ``(B, C, N, H, W)`` with the dtype and device of ``chunks``. Accumulation is done in at
        least float32 and in a fixed window order (deterministic, also on GPU).
    """
    windows, length, num_frames = _check_layout(layout)
    n = len(windows)
    if chunks.ndim != 6:
        raise ValueError(f"expected (B, n, C, F, H, W) chunks, got shape {tuple(chunks.shape)}")
    if chunks.shape[1] != n or chunks.shape[3] != length:
        raise ValueError(
            f"chunks of shape {tuple(chunks.shape)} do not match a layout of {n} windows of "
            f"{length} frames"
        )
    if tuple(weights.shape) != (n, length):
        raise ValueError(f"weights of shape {tuple(weights.shape)} do not match ({n}, {length})")
    b, _, c, _, h, w = chunks.shape
    acc_dtype = torch.promote_types(chunks.dtype, torch.float32)
    wts = weights.to(device=chunks.device, dtype=acc_dtype)
    weighted = chunks.to(acc_dtype) * wts[None, :, None, :, None, None]
    out = torch.zeros(b, c, num_frames, h, w, dtype=acc_dtype, device=chunks.device)
    for i, (s, e) in enumerate(windows):
        out[:, :, s:e] += weighted[:, i]
    return out.to(chunks.dtype)


def boundaries(layout: Sequence[Sequence[int]]) -> list[int]:
    """Global frame indices where a new window starts (``starts[1:]``), e.g. for plot markers."""
    windows, _, _ = _check_layout(layout)
    return [s for s, _ in windows[1:]]
