"""Autoregressive generation: chunk after chunk, each a full sampling chain.

The chunks are the `vin` layout (`chunk_layout(N, F, overlap)`). Chunk k's first frames overlap
what chunks 0..k-1 produced (at least `overlap` frames: its *context*). Our DiT was not trained
with clean context frames, so the context is imposed by replacement (inpainting, as in SDEdit /
RePaint-style conditioning of a flow model): at every evaluation the context frames of the state
are set to the known frames re-noised to the current t along the straight path,
x_ctx(t) = (1 - t) x_known + t eps, with eps the context frames' own per-frame noise (the noise
they started from in the previous chunk), and their velocity is the exact one of that path,
eps - x_known. The model thus sees a chunk whose context is consistent with the known frames at
every noise level, and the known frames come out unchanged (they are written back exactly).

Global tokens on a VIN model (cfg.global_tokens="read"): the read sees only what exists so far,
the prefix [0, end of chunk k): the frames before the chunk are the known frames re-noised to the
current t with their own noise (the read was trained on a uniformly noised video), followed by the
chunk's state. Future frames do not exist yet, so they are not read.

Cost: n chains of `steps` steps each, one chunk pass of the DiT per evaluation (plus a read of the
prefix); sequential, so n times the latency of one chunk chain. Captions may be prompt schedules
(one prompt per chunk).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vin.config import SampleConfig
from vin.models.vin import VINModel
from vin.sampling.chunking import chunk_layout
from vin.sampling.common import (Conditioning, Progress, encode, guided_velocity, prompt_schedule,
                                 resolve_chunk_frames, solve)
from vin.sampling.noise import step_noise, video_noise


@torch.no_grad()
def sample(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
           device: str | torch.device = "cpu", progress: Progress | None = None) -> Tensor:
    """Chunk-by-chunk sampling with replaced context frames -> (B, C, N, H, W).
    `progress` is called steps x chunks times (index counted over the whole run)."""
    F = resolve_chunk_frames(model, cfg)
    layout = chunk_layout(cfg.frames, F, cfg.overlap)
    n = len(layout)
    schedules = [prompt_schedule(c, n) for c in captions]
    h, w = frame_size
    noise = video_noise(cfg.seed, len(captions), model.cfg.channels, cfg.frames, h, w, device)
    out = torch.zeros_like(noise)
    done = 0  # frames [0, done) are known

    def call(xs: Tensor, tt: Tensor, text, z: Tensor | None) -> Tensor:
        return model.denoise_chunks(xs[:, None], tt, text, z)[:, 0]

    encoded: dict[tuple[str, ...], Conditioning] = {}  # each distinct per-chunk caption set is encoded once
    for k, (s, e) in enumerate(layout):
        prompts = tuple(sched[k] for sched in schedules)
        if prompts not in encoded:
            encoded[prompts] = encode(model, list(prompts), cfg, None, "autoregressive")
        cond = encoded[prompts]
        ctx = done - s
        known, eps = out[:, :, s:done], noise[:, :, s:e]
        before, before_eps = out[:, :, :s], noise[:, :, :s]

        def velocity(x: Tensor, t: float) -> Tensor:
            x = torch.cat([(1 - t) * known + t * eps[:, :, :ctx], x[:, :, ctx:]], dim=2)
            prefix = torch.cat([(1 - t) * before + t * before_eps, x], dim=2)
            v = guided_velocity(model, x, t, cond, cfg, call, read_input=prefix)
            return torch.cat([eps[:, :, :ctx] - known, v[:, :, ctx:]], dim=2)

        def step(i: int, t: float, k: int = k) -> None:
            if progress is not None:
                progress(k * cfg.steps + i, t)

        # a stochastic solver's fresh noise for frames s..e (the context frames' part goes unused)
        fresh = step_noise(cfg.seed, len(captions), model.cfg.channels, range(s, e), h, w, device)
        chunk = solve(velocity, eps.clone(), cfg, step, fresh)
        out[:, :, s + ctx:e] = chunk[:, :, ctx:]
        done = e
    return out
