"""Full generation: one DiT pass over the whole video at every step (attention across all frames).

The paper's quadratic baseline. Cost per solver step: one DiT pass over N frames, i.e. attention
over all N/patch_t x h x w video tokens at once (O(N^2) memory and time); on a VIN model plus one
read of the whole video (cfg.global_tokens, default "read": the global tokens are read from the
whole video and concatenated into the one sequence, as in a chunk).

Positions. The DiT was trained on chunks of F frames with positions 0..F/patch_t - 1. Beyond one
chunk, cfg.positions chooses: "interpolate" (default) squeezes the whole video's latent frames into
the trained range (fractional positions: what the DiT has seen in value, denser than it has seen),
"extrapolate" keeps 0, 1, 2, ... past the trained range. Up to one chunk, positions are exactly a
chunk's, so `full` on F frames is `vin` on one chunk.

A request whose attention map would not fit cfg.attention_limit_gb raises ValueError before any
tensor is allocated. A prompt schedule is refused (there are no chunks to give prompts to).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vin.config import SampleConfig
from vin.models.vin import VINModel
from vin.sampling.common import (Progress, check_attention_memory, encode, guided_velocity, resolve_chunk_frames,
                                 solve, video_positions)
from vin.sampling.noise import step_noise, video_noise


def whole_video_setup(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
                      device: str | torch.device, strategy: str, maps: int = 1) -> Tensor | None:
    """Checks shared by the whole-video strategies (full, spectral) -> temporal positions (or None)."""
    pt = model.cfg.dit.patch_t
    if cfg.frames % pt:
        raise ValueError(f"strategy {strategy!r} needs frames divisible by the temporal patch ({pt}), got {cfg.frames}")
    F = resolve_chunk_frames(model, cfg)
    check_attention_memory(model, len(captions), cfg.frames, frame_size, cfg, strategy, maps)
    return video_positions(cfg.frames // pt, F // pt, cfg.positions, device)


@torch.no_grad()
def sample(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
           device: str | torch.device = "cpu", progress: Progress | None = None) -> Tensor:
    """One DiT pass over all cfg.frames frames per evaluation -> (B, C, N, H, W)."""
    t_pos = whole_video_setup(model, captions, cfg, frame_size, device, "full")
    cond = encode(model, captions, cfg, None, "full")
    h, w = frame_size
    x = video_noise(cfg.seed, len(captions), model.cfg.channels, cfg.frames, h, w, device)

    def call(xs: Tensor, tt: Tensor, text, z: Tensor | None) -> Tensor:
        return model.denoise_chunks(xs[:, None], tt, text, z, t_pos)[:, 0]

    def velocity(x: Tensor, t: float) -> Tensor:
        return guided_velocity(model, x, t, cond, cfg, call)

    return solve(velocity, x, cfg, progress, step_noise(cfg.seed, len(captions), model.cfg.channels, cfg.frames, h, w, device))
