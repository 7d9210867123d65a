"""The training objective of the paper: one timestep for the whole video, the interface reads the
whole noisy video, every chunk is denoised in parallel given the global tokens, and the per-chunk
flow-matching losses are combined (the paper sums over chunks; we average, which is the same up to
a constant per length and gives every chunk the same weight across mixed lengths)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from vin.config import TrainConfig
from vin.diffusion.flow import interpolate, sample_timesteps, velocity_target
from vin.models.vin import VINModel
from vin.sampling.chunking import chunk_layout, split_chunks


def context_weights(num_chunks: int, chunk_frames: int, context: int, weight: float,
                    device: torch.device | str | None = None) -> Tensor:
    """(n, F) loss weights on `device`: 1, except `weight` on the first `context` frames of chunks
    1..n-1, the frames they share with (and take as context from) the previous chunk."""
    w = torch.ones(num_chunks, chunk_frames, device=device)
    w[1:, :context] = weight
    return w


class StepDraws(NamedTuple):
    """The randomness of one training step, for the rows of the batch this process trains on."""

    drop: tuple[bool, ...]  # (B,): caption replaced by the empty one (classifier-free guidance dropout)
    t: Tensor  # (B,) timesteps
    noise: Tensor  # (B, C, N, H, W)


def draw_step(generator: torch.Generator, cfg: TrainConfig, video_shape: tuple[int, ...],
              rows: tuple[int, int, int]) -> StepDraws:
    """Caption dropout, t and noise of a step, in this order from `generator`, for a global batch of
    `rows[2]` videos of shape `video_shape` (C, N, H, W), sliced to rows lo..hi-1 (`rows=(lo, hi, batch)`).
    `training_loss` draws them so when given the generator; the trainer draws them ahead, in its data
    workers (`train.data_workers`), with the same generator: the same numbers, off the training loop."""
    lo, hi, total = rows
    drop = tuple((torch.rand(total, generator=generator) < cfg.caption_dropout)[lo:hi].tolist())
    t = sample_timesteps(total, cfg.timesteps, generator, cfg.logit_mean, cfg.logit_std)
    noise = torch.randn((total, *video_shape), generator=generator)
    if (lo, hi) != (0, total):  # copies: a slice would carry the whole batch's noise to the trainer
        t, noise = t[lo:hi].clone(), noise[lo:hi].clone()
    return StepDraws(drop, t, noise)


def training_loss(model: VINModel, video: Tensor, captions: list[str], cfg: TrainConfig,
                  randomness: torch.Generator | StepDraws,
                  rows: tuple[int, int, int] | None = None) -> tuple[Tensor, dict[str, Tensor | float]]:
    """video: (B, C, N, H, W) clean, N = n * (F - K) + K for F = model.cfg.chunk_frames, K = cfg.context_frames.

    Returns the scalar loss and a few statistics: the loss and the mean t as detached 0-dim tensors
    on the loss's device (nothing here reads a tensor on the host, which on a GPU would wait for
    it), the chunk count as a float. Randomness (caption dropout, t, noise) comes from `randomness`
    only, so a step is reproducible from its seed: a generator (drawn here by `draw_step`) or what
    `draw_step` drew from it beforehand (the same loss). `rows=(lo, hi, batch)`: `video` is rows
    lo..hi-1 of a global batch of `batch` videos (data-parallel training); the randomness is drawn
    for the whole batch and sliced, so every process sees what one process would.
    """
    B, _, N = video.shape[:3]
    lo, hi, total = rows if rows is not None else (0, B, B)
    if hi - lo != B:
        raise ValueError(f"rows {rows} do not match a video batch of {B}")
    F, K = model.cfg.chunk_frames, cfg.context_frames
    layout = chunk_layout(N, F, K)
    if any(e - s != F for s, e in layout) or (N - K) % (F - K):
        raise ValueError(f"training video of {N} frames is not n*(F-K)+K for F={F}, K={K}")
    draws = randomness if isinstance(randomness, StepDraws) else draw_step(randomness, cfg, tuple(video.shape[1:]), (lo, hi, total))
    if draws.noise.shape != video.shape:
        raise ValueError(f"drawn noise of shape {tuple(draws.noise.shape)} does not match the videos {tuple(video.shape)}")
    captions = ["" if d else c for c, d in zip(captions, draws.drop)]
    t, noise = draws.t.to(video.device), draws.noise.to(video.device)
    x_t = interpolate(video, noise, t)
    target = split_chunks(velocity_target(video, noise), layout)

    text = model.encode_text(captions)
    z = model.read(x_t, t, text)
    pred = model.denoise_chunks(split_chunks(x_t, layout), t, text, z)

    w = context_weights(len(layout), F, K, cfg.context_loss_weight, video.device)
    err = ((pred.float() - target.float()) ** 2).mean(dim=(2, 4, 5))  # (B, n, F)
    per_chunk = (err * w).sum(-1) / w.sum(-1)  # (B, n)
    loss = per_chunk.mean()
    return loss, {"loss": loss.detach(), "t_mean": t.mean(), "chunks": float(len(layout))}
