"""What every long-video strategy shares: prompt schedules, caption encoding with guidance, the
global-token switch, positions for whole-video passes and the attention memory estimate.

A strategy is a function with one signature (`vin.sampling.strategies.Sampler`):

    sample(model, captions, cfg: SampleConfig, frame_size, device, progress) -> (B, C, N, H, W)

Each caption may be a prompt *schedule* "a; b; c": the chunks of that video get the prompts in
order, spread evenly over the chunks (`prompt_schedule`); only chunked strategies accept one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from vin.config import SampleConfig
from vin.diffusion.flow import StepNoise, guided, sample_ode, timestep_schedule
from vin.models.text import TextEmbedding
from vin.models.vin import VINModel

Progress = Callable[[int, float], None]  # (step index, t after the step)
# call(x (B', ...), t (B',), text, global tokens or None) -> velocity (B', ...), for B' = B or 2B
ModelCall = Callable[[Tensor, Tensor, TextEmbedding, "Tensor | None"], Tensor]
# read(x (B', C, N, H, W), t (B',), text) -> global tokens (B', N_global, D) or None
ReadFn = Callable[[Tensor, Tensor, TextEmbedding], "Tensor | None"]


def solve(velocity: Callable[[Tensor, float], Tensor], x: Tensor, cfg: SampleConfig,
          progress: Progress | None, noise: StepNoise) -> Tensor:
    """`sample_ode` along cfg's schedule with cfg's solver; `noise(i)` (drawn only by a stochastic
    solver, `--solver ddim --eta`) is the fresh noise of step i for the frames of x."""
    return sample_ode(velocity, x, timestep_schedule(cfg.steps, cfg.shift), cfg.solver, progress,
                      cfg.eta, noise if cfg.eta else None)


class AttentionLimitError(ValueError):
    """A whole-video strategy's attention would exceed `SampleConfig.attention_limit_gb`."""


def resolve_chunk_frames(model: VINModel, cfg: SampleConfig) -> int:
    """The chunk window F of this run (cfg.chunk_frames, 0: the model's), checked against the patch."""
    F = cfg.chunk_frames or model.cfg.chunk_frames
    pt = model.cfg.dit.patch_t
    if F % pt:
        raise ValueError(f"chunk_frames ({F}) must be divisible by the model's temporal patch ({pt})")
    return F


def parse_schedule(caption: str) -> list[str]:
    """"a; b; c" -> ["a", "b", "c"]; a caption without ';' is a schedule of one prompt."""
    parts = [p.strip() for p in caption.split(";")]
    if len(parts) > 1 and not all(parts):
        raise ValueError(f"prompt schedule {caption!r} has an empty prompt")
    return parts


def prompt_schedule(caption: str, num_chunks: int) -> list[str]:
    """The prompt of each of `num_chunks` chunks: P prompts spread evenly, chunk k gets prompt
    floor(k P / n) (so each prompt covers a contiguous run of n/P chunks, give or take one)."""
    prompts = parse_schedule(caption)
    if len(prompts) > num_chunks:
        raise ValueError(f"prompt schedule of {len(prompts)} prompts needs at least as many chunks, got {num_chunks}")
    return [prompts[k * len(prompts) // num_chunks] for k in range(num_chunks)]


def has_schedule(captions: list[str]) -> bool:
    return any(";" in c for c in captions)


@dataclass
class Conditioning:
    """Encoded captions of one run. `text`/`null` are per video (B) and feed the read;
    `chunk_text`/`chunk_null` are what the DiT gets: per video (B) or per chunk (B*n, video-major).
    `null` is None when guidance is off (cfg = 1)."""

    batch: int
    text: TextEmbedding
    null: TextEmbedding | None
    chunk_text: TextEmbedding
    chunk_null: TextEmbedding | None

    @property
    def guidance(self) -> bool:
        return self.null is not None

    def dit_text(self) -> TextEmbedding:
        """The DiT's captions for the (cond ; uncond) batch."""
        return TextEmbedding.cat([self.chunk_text, self.chunk_null]) if self.guidance else self.chunk_text


def encode(model: VINModel, captions: list[str], cfg: SampleConfig, num_chunks: int | None,
           strategy: str) -> Conditioning:
    """Encode captions (and the empty caption when cfg != 1). `num_chunks=None`: the strategy has no
    chunks, so a prompt schedule is an error. With a schedule, the read gets the whole schedule as
    one caption (the global tokens describe the whole video) and each chunk its own prompt."""
    guidance = cfg.cfg != 1.0
    if not has_schedule(captions):
        text = model.encode_text(captions)
        null = model.encode_text([""] * len(captions)) if guidance else None
        return Conditioning(len(captions), text, null, text, null)
    if num_chunks is None:
        raise ValueError(f"strategy {strategy!r} takes one prompt per video, not a schedule ('a; b'); "
                         "use vin, independent, freenoise or autoregressive")
    per_chunk = [p for c in captions for p in prompt_schedule(c, num_chunks)]
    text = model.encode_text([" ".join(parse_schedule(c)) for c in captions])
    null = model.encode_text([""] * len(captions)) if guidance else None
    chunk_text = model.encode_text(per_chunk)
    chunk_null = model.encode_text([""] * len(per_chunk)) if guidance else None
    return Conditioning(len(captions), text, null, chunk_text, chunk_null)


def read_global(model: VINModel, x: Tensor, t: float, cond: Conditioning, cfg: SampleConfig,
                read: ReadFn | None = None) -> Tensor | None:
    """Global tokens for the (cond ; uncond) batch from the video `x` (B, C, N, H, W) the read may
    see, per cfg.global_tokens (read | none | zeros) and cfg.cfg_global (recompute | shared).

    `read(x, t, text) -> tokens` replaces the model's read of x (and must honour
    cfg.keyframe_stride itself); the multi-process sampler passes its exact distributed read, a
    collective every process joins."""
    if cfg.global_tokens == "none" or model.interface is None:
        return None
    B = cond.batch
    rows = 2 * B if cond.guidance else B
    if cfg.global_tokens == "zeros":
        v = model.cfg.vin
        return torch.zeros(rows, v.num_global, v.width, device=x.device, dtype=x.dtype)
    tt = torch.full((rows,), t, device=x.device)

    def model_read(xr: Tensor, tr: Tensor, text: TextEmbedding) -> Tensor | None:
        if cfg.keyframe_stride:
            return model.read(xr, tr, text, keyframe_stride=cfg.keyframe_stride)
        return model.read(xr, tr, text)

    read = model_read if read is None else read

    if cond.guidance and cfg.cfg_global == "shared":
        z = read(x, tt[:B], cond.text)
        return None if z is None else torch.cat([z, z])
    if cond.guidance:
        return read(torch.cat([x, x]), tt, TextEmbedding.cat([cond.text, cond.null]))
    return read(x, tt, cond.text)


def guided_velocity(model: VINModel, x: Tensor, t: float, cond: Conditioning, cfg: SampleConfig,
                    call: ModelCall | None, read_input: Tensor | None = None,
                    read: ReadFn | None = None) -> Tensor | None:
    """One model evaluation at time t with classifier-free guidance (cond and uncond in one batch).

    x: the state the strategy integrates (B, ...), any layout `call` understands; read_input: the
    video the global tokens read (default: x itself, which must then be a (B, C, N, H, W) video);
    read: see `read_global`. `call=None` (a process holding no chunk in multi-process sampling):
    only the read runs - every process must take part in it - and None is returned.
    """
    B = x.shape[0]
    xs = torch.cat([x, x]) if cond.guidance else x
    tt = torch.full((xs.shape[0],), t, device=x.device)
    z = read_global(model, x if read_input is None else read_input, t, cond, cfg, read)
    if call is None:
        return None
    v = call(xs, tt, cond.dit_text(), z)
    return guided(v[:B], v[B:], cfg.cfg) if cond.guidance else v


def video_positions(latent_frames: int, chunk_latent: int, mode: str, device: str | torch.device) -> Tensor | None:
    """Temporal positions for one DiT pass over `latent_frames` latent frames (full, spectral).

    Up to the chunk length: None (the DiT's own 0, 1, ..., exactly what a chunk gets). Longer:
    "interpolate" spreads the frames evenly over the trained range [0, chunk_latent - 1]
    (fractional positions, neighbours closer than 1 apart); "extrapolate" keeps 0, 1, 2, ...
    past the trained range."""
    if latent_frames <= chunk_latent:
        return None
    if mode == "extrapolate":
        return torch.arange(latent_frames, dtype=torch.float32, device=device)
    if mode == "interpolate":
        return torch.linspace(0.0, chunk_latent - 1, latent_frames, dtype=torch.float32, device=device)
    raise ValueError(f"unknown positions mode {mode!r} (interpolate or extrapolate)")


def check_attention_memory(model: VINModel, batch: int, frames: int, frame_size: tuple[int, int],
                           cfg: SampleConfig, strategy: str, maps: int = 1) -> int:
    """Estimate the bytes of `maps` float32 attention maps of one DiT pass over the whole video
    (batch x heads x L^2, L = caption + global + video tokens) and raise before allocating anything
    when it exceeds cfg.attention_limit_gb. Returns the estimate."""
    mc = model.cfg
    pt, ps = mc.dit.patch_t, mc.dit.patch_s
    tokens = (frames // pt) * (frame_size[0] // ps) * (frame_size[1] // ps)
    L = tokens + mc.text.max_tokens + (mc.vin.num_global if model.interface is not None else 0)
    rows = batch * (2 if cfg.cfg != 1.0 else 1)
    need = maps * rows * mc.dit.heads * L * L * 4
    limit = cfg.attention_limit_gb * 2**30
    if need > limit:
        raise AttentionLimitError(f"strategy {strategy!r} at {frames} frames needs ~{need / 2**30:.1f} GiB for attention "
                         f"({L} tokens, batch {rows}), over the limit of {cfg.attention_limit_gb} GiB "
                         "(raise --attention-limit-gb, or use a chunked strategy)")
    return need
