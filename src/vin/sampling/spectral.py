"""Spectral blending (FreeLong, Lu et al., 2024), adapted to the chunk DiT.

FreeLong runs, in each temporal-attention layer of a video U-Net, a *global* attention over all
frames and a *local* attention restricted to windows of the training length, then blends the two
outputs in the frequency domain: low frequencies (overall appearance and slow motion) from the
global stream, high frequencies (fine detail and fast motion, which global attention over too many
frames blurs) from the local one.

Our adaptation. The chunk DiT has no separate temporal attention: every block runs joint
spatio-temporal self-attention over [caption ; global tokens ; video tokens]. So, through the
DiT's `attend` hook (the trained weights and the default path are untouched), in EVERY block:
- global stream: the block's attention over the whole video (what `full` computes);
- local stream: the same queries/keys/values with a band mask: a video token of latent frame i
  sees the video tokens of the F/patch_t latent frames centred on i (the window shifted to stay
  inside the video: exactly a chunk's length), plus all caption and global tokens;
- the two outputs (per head, before the output projection; the projection is linear and per
  token, so blending before or after it is the same) are blended along TIME only: a real FFT over
  the latent-frame axis of the video-token rows, frequency bins k with k / (f/2) <= cutoff from
  the global stream, the rest from the local one (cfg.spectral_cutoff; 1.0 keeps everything
  global, i.e. `full`; 0.0 still takes the temporal mean (k = 0) from the global stream). FreeLong
  filters in 3-D (time and space); the DiT's tokens are already spatially global within a frame,
  so only the temporal axis separates the two streams here. Caption/global-token rows take the
  global stream.
Positions are those of `full` (cfg.positions: interpolate or extrapolate): positions are added
once at the DiT's input, so both streams see the same (whole-video) positions; a local window
therefore does not see a chunk's 0..F-1 as it would in `vin`. This is a real difference from
FreeLong's relative temporal positions and part of what the comparison measures.

Cost per solver step: one DiT pass over the whole video with TWO attention maps per block
(2x the attention of `full`, the rest shared), plus the read on a VIN model. The memory check
counts both maps. A prompt schedule is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_
from torch import Tensor

from vin.config import SampleConfig
from vin.models.layers import AttendFn
from vin.models.vin import VINModel
from vin.sampling.common import Progress, encode, guided_velocity, resolve_chunk_frames, solve
from vin.sampling.full import whole_video_setup
from vin.sampling.noise import step_noise, video_noise


def band_mask(frames: int, window: int) -> Tensor:
    """(frames, frames) bool: latent frame i may attend to frame j in the local stream. Each row
    holds `window` consecutive frames centred on i, shifted to stay inside [0, frames)."""
    window = min(window, frames)
    start = (torch.arange(frames) - window // 2).clamp(0, frames - window)
    j = torch.arange(frames)
    return (j[None] >= start[:, None]) & (j[None] < start[:, None] + window)


def lowpass(frames: int, cutoff: float) -> Tensor:
    """(frames // 2 + 1,) bool over rfft bins: True where the global stream is kept."""
    k = torch.arange(frames // 2 + 1, dtype=torch.float64)
    return k <= cutoff * (frames / 2)


def blended_attention(frames: int, tokens_per_frame: int, window: int, cutoff: float) -> AttendFn:
    """The attention function for the DiT hook: (q, k, v, bias) over [prefix ; video tokens
    (frames x tokens_per_frame, frame-major)] -> global / local outputs blended along time."""
    video = frames * tokens_per_frame
    band = band_mask(frames, window).repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)
    keep = lowpass(frames, cutoff)

    def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        L = q.shape[2]
        prefix = L - video
        allowed = torch.ones(L, L, dtype=torch.bool, device=q.device)
        allowed[prefix:, prefix:] = band.to(q.device)
        local_bias = torch.zeros(L, L, device=q.device).masked_fill(~allowed, float("-inf"))
        local_bias = local_bias if bias is None else bias + local_bias
        g = F_.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        loc = F_.scaled_dot_product_attention(q, k, v, attn_mask=local_bias)
        shape = (*g.shape[:2], frames, tokens_per_frame, g.shape[-1])
        diff = torch.fft.rfft((g[:, :, prefix:] - loc[:, :, prefix:]).reshape(shape).float(), dim=2)
        diff = diff * keep.to(q.device)[:, None, None]
        low = torch.fft.irfft(diff, n=frames, dim=2).to(g.dtype).reshape(*g.shape[:2], video, g.shape[-1])
        return torch.cat([g[:, :, :prefix], loc[:, :, prefix:] + low], dim=2)

    return attend


@torch.no_grad()
def sample(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
           device: str | torch.device = "cpu", progress: Progress | None = None) -> Tensor:
    """Whole-video DiT passes with per-block spectral blending of global and windowed attention
    -> (B, C, N, H, W)."""
    t_pos = whole_video_setup(model, captions, cfg, frame_size, device, "spectral", maps=2)
    cond = encode(model, captions, cfg, None, "spectral")
    mc = model.cfg
    pt, ps = mc.dit.patch_t, mc.dit.patch_s
    h, w = frame_size
    window = resolve_chunk_frames(model, cfg) // pt
    attend = blended_attention(cfg.frames // pt, (h // ps) * (w // ps), window, cfg.spectral_cutoff)
    x = video_noise(cfg.seed, len(captions), mc.channels, cfg.frames, h, w, device)

    def call(xs: Tensor, tt: Tensor, text, z: Tensor | None) -> Tensor:
        return model.denoise_chunks(xs[:, None], tt, text, z, t_pos, attend)[:, 0]

    def velocity(x: Tensor, t: float) -> Tensor:
        return guided_velocity(model, x, t, cond, cfg, call)

    return solve(velocity, x, cfg, progress, step_noise(cfg.seed, len(captions), mc.channels, cfg.frames, h, w, device))
