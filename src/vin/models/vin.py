"""VIN + DiT with the two-stage API the samplers compose: `read` then `denoise_chunks`.

The model predicts; it never integrates, guides or fuses (that is the samplers' job).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vin.config import ModelConfig
from vin.models.dit import ChunkDiT
from vin.models.interface import VideoInterface
from vin.models.layers import AttendFn
from vin.models.text import TextEmbedding, TextEncoder


class VINModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.text = TextEncoder(cfg.text)
        self.interface = VideoInterface(cfg) if cfg.vin.enabled else None
        self.dit = ChunkDiT(cfg, cfg.vin.width if cfg.vin.enabled else None)

    def encode_text(self, captions: list[str]) -> TextEmbedding:
        return self.text(captions)

    def read(self, x_t: Tensor, t: Tensor, text: TextEmbedding, keyframe_stride: int | None = None) -> Tensor | None:
        """x_t (B, C, N, H, W) whole noisy video, t (B,) -> global tokens (B, N_global, D), or None
        when the model has no interface (the no-global-token ablation). `keyframe_stride` overrides
        the trained keyframe stride (None: the config's)."""
        if self.interface is None:
            return None
        if keyframe_stride is None:
            return self.interface(x_t, t, text)
        return self.interface(x_t, t, text, keyframe_stride)

    def denoise_chunks(self, chunks: Tensor, t: Tensor, text: TextEmbedding,
                       global_tokens: Tensor | None, t_pos: Tensor | None = None,
                       attend: AttendFn | None = None) -> Tensor:
        """Velocity for every chunk, all chunks in one batched DiT call.

        chunks: (B, n, C, F, H, W); t: (B,); text: batch B (one caption per video) or B*n (one per
        chunk, ordered video-major); global_tokens: (B, N_global, D) or None. Chunks are conditionally
        independent given the global tokens. t_pos and attend go to `ChunkDiT.forward` (positions
        of the latent frames; a replacement of the attention softmax). Returns (B, n, C, F, H, W).
        """
        B, n = chunks.shape[:2]
        if text.tokens.shape[0] == B:
            text = text.take(torch.arange(B, device=chunks.device).repeat_interleave(n))
        elif text.tokens.shape[0] != B * n:
            raise ValueError(f"text batch {text.tokens.shape[0]} is neither videos ({B}) nor chunks ({B * n})")
        z = None if global_tokens is None else global_tokens.repeat_interleave(n, dim=0)
        x = rearrange(chunks, "b n c f h w -> (b n) c f h w")
        if attend is None:
            out = self.dit(x, t.repeat_interleave(n), text, z, t_pos)
        else:
            out = self.dit(x, t.repeat_interleave(n), text, z, t_pos, attend)
        return self.to_velocity(chunks, t, rearrange(out, "(b n) c f h w -> b n c f h w", b=B))

    def to_velocity(self, x_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """The DiT output -> velocity. x_t, out: (B, ...), t: (B,). For prediction="data" the output is
        x0_hat and v = (x_t - x0_hat) / max(t, t_min) (the clamp bounds the loss weight 1/t^2 near data)."""
        if self.cfg.prediction == "velocity":
            return out
        t = t.to(torch.float32).clamp(min=self.cfg.prediction_t_min).reshape(-1, *([1] * (x_t.dim() - 1)))
        return ((x_t.float() - out.float()) / t).to(out.dtype)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
