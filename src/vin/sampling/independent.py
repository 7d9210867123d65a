"""Independent chunks: every chunk is its own sampling chain, with no communication at all.

The lower bound of cost and of consistency. The video is cut with the same layout as `vin`
(`chunk_layout(N, F, overlap)`, so frames in an overlap start from the same per-frame noise), but
each chunk integrates its own state: no global tokens (whatever cfg.global_tokens says), no fusion,
no shared overlap frames during sampling. At the end each frame is taken from the earliest chunk
covering it ("owner" weights); use overlap 0 to waste no compute on discarded frames.

Cost per solver step: n chunk passes of the DiT (batched), nothing else. `vin` with
cfg.global_tokens="none" is exactly this chunk velocity plus the per-step fusion (tested).
Captions may be prompt schedules ("a; b; c"): one prompt per chunk.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from vin.config import SampleConfig
from vin.models.vin import VINModel
from vin.sampling.chunking import chunk_layout, fusion_weights, merge_chunks, split_chunks
from vin.sampling.common import Conditioning, Progress, encode, guided_velocity, resolve_chunk_frames, solve
from vin.sampling.noise import step_noise, video_noise


def chunk_velocity(model: VINModel, chunks: Tensor, t: float, cond: Conditioning, cfg: SampleConfig) -> Tensor:
    """chunks (B, n, C, F, H, W), each its own state -> velocities (B, n, C, F, H, W); no global tokens."""
    def call(xs: Tensor, tt: Tensor, text, z: Tensor | None) -> Tensor:
        return model.denoise_chunks(xs, tt, text, None)

    return guided_velocity(model, chunks, t, cond, replace(cfg, global_tokens="none"), call)


@torch.no_grad()
def sample(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
           device: str | torch.device = "cpu", progress: Progress | None = None) -> Tensor:
    """n independent chains on the chunk windows, stitched at the end -> (B, C, N, H, W)."""
    F = resolve_chunk_frames(model, cfg)
    layout = chunk_layout(cfg.frames, F, cfg.overlap)
    cond = encode(model, captions, cfg, len(layout), "independent")
    h, w = frame_size
    x = split_chunks(video_noise(cfg.seed, len(captions), model.cfg.channels, cfg.frames, h, w, device), layout)
    noise = step_noise(cfg.seed, len(captions), model.cfg.channels, cfg.frames, h, w, device)
    chunks = solve(lambda x, t: chunk_velocity(model, x, t, cond, cfg), x, cfg, progress,
                   lambda i: split_chunks(noise(i), layout))
    return merge_chunks(chunks, layout, fusion_weights(layout, cfg.frames, "owner").to(device))
