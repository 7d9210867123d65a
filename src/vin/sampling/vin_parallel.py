"""VIN-parallel sampling (the paper's method).

Per solver step: ONE read of the whole noisy video -> global tokens -> all chunks denoised in one
batched call -> overlapping predictions fused (linear cross-fade while fusion is active, else each
overlap frame from the earlier chunk) -> one solver step on the whole video. The overlap at
inference may exceed the training context (the paper: 8 -> 12 latent frames).
Cost per solver step: one read + n chunk passes of the DiT (n = number of chunks), batched.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from vin.config import SampleConfig
from vin.models.vin import VINModel
from vin.sampling.chunking import Layout, chunk_layout, fusion_weights, merge_chunks, split_chunks
from vin.sampling.common import Conditioning, Progress, ReadFn, encode, guided_velocity, resolve_chunk_frames, solve
from vin.sampling.noise import step_noise, video_noise


def fusion_active(t: float, mode: str, span: float) -> bool:
    """Whether overlap predictions are cross-faded at time t (1 = noise, 0 = data)."""
    if mode == "always":
        return True
    if mode == "none":
        return False
    if mode == "early":
        return t >= 1.0 - span
    if mode == "late":
        return t <= span
    if mode == "mid":
        return abs(t - 0.5) <= span / 2
    raise ValueError(f"unknown fusion mode {mode!r}")


def chunk_velocity(model: VINModel, x: Tensor, t: float, layout: Layout, cond: Conditioning,
                   cfg: SampleConfig, read: ReadFn | None = None) -> Tensor | None:
    """Per-chunk velocities (B, n, C, F, H, W) of the video x (B, C, N, H, W) at time t: the global
    tokens read from the whole x (per cfg.global_tokens), classifier-free guidance if enabled.

    `read` replaces the model's read of x (the multi-process sampler passes its exact distributed
    read, a collective). With an empty `layout` (a process holding no chunk) only the read runs -
    every process must take part in it - and None is returned."""
    def call(xs: Tensor, tt: Tensor, text, z: Tensor | None) -> Tensor:
        return model.denoise_chunks(split_chunks(xs, layout), tt, text, z)

    return guided_velocity(model, x, t, cond, cfg, call if layout else None, read=read)


@torch.no_grad()
def sample(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
           device: str | torch.device = "cpu", progress: Progress | None = None) -> Tensor:
    """VIN-parallel sampling of len(captions) videos of cfg.frames frames of frame_size (H, W)
    -> (B, C, N, H, W). Ablation switches: cfg.global_tokens (read | none | zeros), cfg.fusion and
    cfg.fusion_span, cfg.overlap, cfg.keyframe_stride. Captions may be prompt schedules ("a; b")."""
    F = resolve_chunk_frames(model, cfg)
    layout = chunk_layout(cfg.frames, F, cfg.overlap)
    weights = {mode: fusion_weights(layout, cfg.frames, mode).to(device) for mode in ("crossfade", "owner")}
    cond = encode(model, captions, cfg, len(layout), "vin")
    h, w = frame_size
    x = video_noise(cfg.seed, len(captions), model.cfg.channels, cfg.frames, h, w, device)

    def velocity(x: Tensor, t: float) -> Tensor:
        v = chunk_velocity(model, x, t, layout, cond, cfg)
        mode = "crossfade" if fusion_active(t, cfg.fusion, cfg.fusion_span) else "owner"
        return merge_chunks(v, layout, weights[mode])

    return solve(velocity, x, cfg, progress, step_noise(cfg.seed, len(captions), model.cfg.channels, cfg.frames, h, w, device))


def sample_vin(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
               device: str | torch.device = "cpu", progress: Progress | None = None,
               use_global: bool = True) -> Tensor:
    """`sample`, with the older switch: `use_global=False` is cfg.global_tokens="none"."""
    return sample(model, captions, cfg if use_global else replace(cfg, global_tokens="none"), frame_size,
                  device, progress)
