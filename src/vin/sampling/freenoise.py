"""FreeNoise (Qiu et al., 2023) on the chunk DiT: rescheduled noise + overlapping windows averaged.

1. Noise rescheduling: the first window's F frames get their ordinary per-frame noise
   (`video_noise`, so they match every other strategy); every later block of `stride = F - overlap`
   frames starting at frame i >= F is a copy of the noise of frames [i - F, i - F + stride),
   locally shuffled (a seeded permutation per video and block). Every frame's noise is therefore
   one of the first window's frames, and each block is a permutation of the block F frames
   earlier (FreeNoise's "window-wise shuffle"), so the video starts from long-range correlated
   noise instead of independent noise. A stochastic solver (`--solver ddim --eta`) re-noises with
   fresh noise rescheduled by the same permutations, so the correlation survives its steps.
2. Overlapping windows (`chunk_layout(N, F, overlap)`) are denoised in parallel at every step and
   the overlapping predictions are averaged with per-frame weights: cfg.freenoise_weights "flat"
   (plain mean) or "pyramid" (window weights 1, 2, ..., F/2, ..., 2, 1, as diffusers' FreeNoise),
   normalised per frame, at every step (no fusion schedule).

Global tokens follow cfg.global_tokens (default: read from the whole video, as `vin`; "none" is
the training-free FreeNoise on the bare chunk DiT). FreeNoise's motion injection for multi-prompt
generation is not implemented; a prompt schedule ("a; b") gives each window its own prompt.
Cost per solver step: n window passes of the DiT (batched), plus the read on a VIN model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vin.config import SampleConfig
from vin.models.vin import VINModel
from vin.sampling.chunking import Layout, chunk_layout, merge_chunks
from vin.sampling.common import Progress, encode, resolve_chunk_frames, solve
from vin.sampling.noise import video_noise
from vin.sampling.vin_parallel import chunk_velocity


def shuffle_seed(seed: int, video: int, block_start: int) -> int:
    """Seed of the permutation of one block (a stream separate from the per-frame noise seeds)."""
    return int(np.random.SeedSequence([seed, video, block_start, 0xF2EE]).generate_state(1, dtype=np.uint64)[0] >> 1)


def freenoise_noise(seed: int, batch: int, channels: int, frames: int, window: int, stride: int,
                    height: int, width: int, device: str | torch.device = "cpu",
                    step: int | None = None) -> tuple[Tensor, Tensor]:
    """FreeNoise's rescheduled initial noise -> (noise (B, C, N, H, W), source (B, N) int64) where
    source[b, f] is the frame of the first window whose noise frame f carries. With `step`, a
    stochastic solver's fresh noise of that step, rescheduled with the same permutations (so the
    video keeps FreeNoise's correlation across windows while the solver re-noises it)."""
    if stride < 1:
        raise ValueError(f"FreeNoise needs a window stride >= 1, got {stride}")
    base = video_noise(seed, batch, channels, min(window, frames), height, width, step=step)
    source = torch.zeros(batch, frames, dtype=torch.long)
    source[:, :window] = torch.arange(min(window, frames))
    for b in range(batch):
        for i in range(window, frames, stride):
            m = min(stride, frames - i)
            perm = torch.randperm(m, generator=torch.Generator().manual_seed(shuffle_seed(seed, b, i)))
            source[b, i:i + m] = source[b, i - window:i - window + m][perm]
    noise = torch.stack([base[b][:, source[b]] for b in range(batch)])
    return noise.to(device), source


def window_weights(layout: Layout, frames: int, scheme: str) -> Tensor:
    """(n, F) averaging weights, the same profile in every window, normalised to sum to one per frame."""
    F = layout[0][1] - layout[0][0]
    if scheme == "flat":
        profile = torch.ones(F, dtype=torch.float64)
    elif scheme == "pyramid":
        mid = (F + 1) // 2
        up = list(range(1, mid + 1))
        profile = torch.tensor(up + up[::-1][F % 2:], dtype=torch.float64)
    else:
        raise ValueError(f"unknown FreeNoise weighting {scheme!r} (flat or pyramid)")
    total = torch.zeros(frames, dtype=torch.float64)
    for s, e in layout:
        total[s:e] += profile
    return torch.stack([profile / total[s:e] for s, e in layout]).float()


@torch.no_grad()
def sample(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
           device: str | torch.device = "cpu", progress: Progress | None = None) -> Tensor:
    """FreeNoise sampling -> (B, C, N, H, W)."""
    F = resolve_chunk_frames(model, cfg)
    layout = chunk_layout(cfg.frames, F, cfg.overlap)
    weights = window_weights(layout, cfg.frames, cfg.freenoise_weights).to(device)
    cond = encode(model, captions, cfg, len(layout), "freenoise")
    h, w = frame_size
    args = (cfg.seed, len(captions), model.cfg.channels, cfg.frames, F, F - cfg.overlap, h, w, device)
    x, _ = freenoise_noise(*args)

    def velocity(x: Tensor, t: float) -> Tensor:
        return merge_chunks(chunk_velocity(model, x, t, layout, cond, cfg), layout, weights)

    return solve(velocity, x, cfg, progress, lambda i: freenoise_noise(*args, step=i)[0])
