"""VIN-parallel sampling (the paper's method).

Per solver step: ONE read of the whole noisy video -> global tokens -> all chunks denoised in one
batched call -> overlapping predictions fused (linear cross-fade while fusion is active, else each
overlap frame from the earlier chunk) -> one solver step on the whole video. The overlap at
inference may exceed the training context (the paper: 8 -> 12 latent frames).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from vin.config import SampleConfig
from vin.diffusion.flow import guided, sample_ode, timestep_schedule
from vin.models.text import TextEmbedding
from vin.models.vin import VINModel
from vin.sampling.chunking import chunk_layout, fusion_weights, merge_chunks, split_chunks
from vin.sampling.noise import video_noise

Progress = Callable[[int, float], None]


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


def chunk_velocity(model: VINModel, x: Tensor, t: float, layout, text: TextEmbedding,
                   null_text: TextEmbedding | None, cfg: SampleConfig, use_global: bool = True,
                   read: Callable[[Tensor, Tensor, TextEmbedding], Tensor | None] | None = None) -> Tensor | None:
    """Per-chunk velocities (B, n, C, F, H, W) at time t, with classifier-free guidance if enabled.

    `read(x, t, text) -> global tokens` defaults to `model.read` of x; the multi-process sampler
    passes its exact distributed read (a collective). With an empty `layout` (a process holding no
    chunk) only the read runs - every process must take part in it - and None is returned.
    """
    read = model.read if read is None else read
    B = x.shape[0]
    guidance = null_text is not None
    xs = torch.cat([x, x]) if guidance else x
    texts = TextEmbedding.cat([text, null_text]) if guidance else text
    tt = torch.full((xs.shape[0],), t, device=x.device)
    z = None
    if use_global:
        if guidance and cfg.cfg_global == "shared":
            z = read(x, tt[:B], text)
            z = None if z is None else torch.cat([z, z])
        else:
            z = read(xs, tt, texts)
    if not layout:
        return None
    v = model.denoise_chunks(split_chunks(xs, layout), tt, texts, z)
    return guided(v[:B], v[B:], cfg.cfg) if guidance else v


@torch.no_grad()
def sample_vin(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
               device: str | torch.device = "cpu", progress: Progress | None = None,
               use_global: bool = True) -> Tensor:
    """Generate len(captions) videos of cfg.frames frames of frame_size (H, W) -> (B, C, N, H, W).

    `use_global=False` runs the same DiT with no global tokens (the ablation at inference time).
    """
    mc = model.cfg
    F = cfg.chunk_frames or mc.chunk_frames
    layout = chunk_layout(cfg.frames, F, cfg.overlap)
    if F % mc.dit.patch_t:
        raise ValueError(f"chunk_frames ({F}) must be divisible by the model's temporal patch ({mc.dit.patch_t})")
    weights = {mode: fusion_weights(layout, cfg.frames, mode).to(device) for mode in ("crossfade", "owner")}
    text = model.encode_text(captions)
    null_text = model.encode_text([""] * len(captions)) if cfg.cfg != 1.0 else None
    h, w = frame_size
    x = video_noise(cfg.seed, len(captions), mc.channels, cfg.frames, h, w, device)

    def velocity(x: Tensor, t: float) -> Tensor:
        v = chunk_velocity(model, x, t, layout, text, null_text, cfg, use_global)
        mode = "crossfade" if fusion_active(t, cfg.fusion, cfg.fusion_span) else "owner"
        return merge_chunks(v, layout, weights[mode])

    return sample_ode(velocity, x, timestep_schedule(cfg.steps, cfg.shift), cfg.solver, progress)

