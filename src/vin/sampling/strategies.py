"""The registry of long-video strategies: name -> sampler, all with one signature

    sample(model, captions, cfg: SampleConfig, frame_size, device="cpu", progress=None) -> (B, C, N, H, W)

run on the same weights, so that only the strategy differs. Adding a strategy is adding a module
and a line here (and its name to `vin.config.STRATEGIES`, which the CLI offers).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from vin.config import SampleConfig
from vin.models.vin import VINModel
from vin.sampling import autoregressive, freenoise, full, independent, spectral, vin_parallel
from vin.sampling.chunking import Layout, chunk_layout
from vin.sampling.common import Progress


class Sampler(Protocol):
    def __call__(self, model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
                 device: str | torch.device = "cpu", progress: Progress | None = None) -> Tensor: ...


STRATEGIES: dict[str, Sampler] = {
    "vin": vin_parallel.sample,
    "full": full.sample,
    "independent": independent.sample,
    "autoregressive": autoregressive.sample,
    "freenoise": freenoise.sample,
    "spectral": spectral.sample,
}

WHOLE_VIDEO = ("full", "spectral")  # one DiT pass over the whole video, no chunks


def get_strategy(name: str) -> Sampler:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name]


def strategy_layout(cfg: SampleConfig, chunk_frames: int) -> Layout:
    """The windows the strategy denoises: the chunk layout, or the whole video for full/spectral."""
    if cfg.strategy in WHOLE_VIDEO:
        return ((0, cfg.frames),)
    return chunk_layout(cfg.frames, chunk_frames, cfg.overlap)


def progress_steps(cfg: SampleConfig, chunk_frames: int) -> int:
    """How many times the strategy calls `progress` (autoregressive: one chain per chunk)."""
    per_chain = cfg.steps
    if cfg.strategy == "autoregressive":
        return per_chain * len(strategy_layout(cfg, chunk_frames))
    return per_chain
