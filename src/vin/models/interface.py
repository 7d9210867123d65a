"""The Video Interface Network (VIN): a fixed set of global tokens that reads the whole noisy video.

At every diffusion step (PAPER.md, "The idea"):
1. the N_global learned tokens, modulated by the timestep and the caption, are the queries of
   ONE cross-attention whose keys/values are patch tokens of the noisy keyframes of the whole video
   (frames 0, s, 2s, ...), each carrying its frame's position in the video (open question 2);
2. a few adaLN self-attention blocks process [global tokens ; caption tokens];
3. the result Z (B, N_global, D) goes to every chunk of the DiT.
The read costs O(N_global x N_keyframe_tokens): linear in the video length, and independent of how
the video is cut into chunks. It is split into `read_begin` / `read_attend` / `read_end` so that a
process holding only some keyframes can compute its part (`read_attend` returns the log-sum-exp)
and the parts merge exactly (`layers.merge_attention`).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vin.config import ModelConfig
from vin.models.layers import AdaLNBlock, Mlp, Attention, TimestepEmbedder, attention_with_lse, modulate, sincos_3d
from vin.models.text import TextEmbedding, key_padding_bias

RELATIVE_SPAN = 64.0  # time_pos="relative": the whole video spans positions [0, 64)


class VideoInterface(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = cfg.vin
        self.cfg = v
        self.global_tokens = nn.Parameter(torch.randn(v.num_global, v.width) * 0.02)
        self.kf_embed = nn.Linear(cfg.channels * v.patch_s**2, v.width)
        self.kv_norm = nn.LayerNorm(v.width, eps=1e-6)
        self.t_embed = TimestepEmbedder(v.width)
        self.pool_proj = nn.Linear(cfg.text.width, v.width)
        self.text_proj = nn.Linear(cfg.text.width, v.width)
        self.q_norm = nn.LayerNorm(v.width, elementwise_affine=False, eps=1e-6)
        self.q_ada = nn.Sequential(nn.SiLU(), nn.Linear(v.width, 2 * v.width))
        self.read_attn = Attention(v.width, v.heads)
        self.mlp_norm = nn.LayerNorm(v.width, eps=1e-6)
        self.mlp = Mlp(v.width)
        self.processor = nn.ModuleList(AdaLNBlock(v.width, v.heads) for _ in range(v.processor_depth))
        self.out_norm = nn.LayerNorm(v.width, eps=1e-6)

    def keyframe_indices(self, num_frames: int, start: int = 0, end: int | None = None,
                         stride: int | None = None, device: torch.device | str | None = None) -> Tensor:
        """Global indices of the keyframes in frames [start, end) of a video of `num_frames`
        (every `stride`-th frame; None: the configured `keyframe_stride`), made on `device` (a copy
        from the host would wait for a GPU)."""
        end = num_frames if end is None else end
        s = stride or self.cfg.keyframe_stride
        first = -(-start // s) * s
        return torch.arange(first, max(first, end), s, device=device)  # empty (not an error) when [start, end) holds none

    def keyframe_tokens(self, frames: Tensor, indices: Tensor, num_frames: int) -> Tensor:
        """frames (B, C, K, H, W) = the keyframes at global `indices` (K,) -> tokens (B, K*h*w, D)."""
        p = self.cfg.patch_s
        tok = self.kf_embed(rearrange(frames, "b c k (h ph) (w pw) -> b (k h w) (c ph pw)", ph=p, pw=p))
        pos = indices.to(frames.device, torch.float32)
        if self.cfg.time_pos == "relative":
            pos = pos / num_frames * RELATIVE_SPAN
        h, w = frames.shape[-2] // p, frames.shape[-1] // p
        return self.kv_norm(tok + sincos_3d(pos, h, w, tok.shape[-1]).to(tok.dtype))

    def read_begin(self, t: Tensor, text: TextEmbedding) -> tuple[Tensor, Tensor, Tensor]:
        """-> conditioning c (B, D), queries q (B, heads, N_global, d) and the token states z0 (B, N_global, D)."""
        c = self.t_embed(t) + self.pool_proj(text.pooled)
        z0 = self.global_tokens[None].expand(t.shape[0], -1, -1)
        shift, scale = self.q_ada(c).chunk(2, dim=-1)
        q_in = modulate(self.q_norm(z0), shift, scale)
        q = rearrange(self.read_attn.q(q_in), "b l (h d) -> b h l d", h=self.cfg.heads)
        return c, self.read_attn.q_norm(q), z0

    def read_attend(self, q: Tensor, frames: Tensor, indices: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
        """Attention of the queries over some keyframes -> (out (B, heads, N_global, d), lse (B, heads, N_global))."""
        kv = self.keyframe_tokens(frames, indices, num_frames)
        k, v = rearrange(self.read_attn.kv(kv), "b l (two h d) -> two b h l d", two=2, h=self.cfg.heads)
        return attention_with_lse(q, self.read_attn.k_norm(k), v)

    def read_end(self, attn_out: Tensor, c: Tensor, z0: Tensor, text: TextEmbedding) -> Tensor:
        """Merged read output -> global tokens Z (B, N_global, D)."""
        z = z0 + self.read_attn.proj(rearrange(attn_out, "b h l d -> b l (h d)"))
        z = z + self.mlp(self.mlp_norm(z))
        n = z.shape[1]
        seq = torch.cat([z, self.text_proj(text.tokens)], dim=1)
        bias = torch.cat([torch.zeros(z.shape[0], 1, 1, n, device=z.device), key_padding_bias(text.mask)], dim=-1)
        for block in self.processor:
            seq = block(seq, c, bias)
        return self.out_norm(seq[:, :n])

    def forward(self, x_t: Tensor, t: Tensor, text: TextEmbedding, keyframe_stride: int | None = None) -> Tensor:
        """x_t (B, C, N, H, W) the whole noisy video, t (B,) -> Z (B, N_global, D).
        `keyframe_stride` overrides the configured stride (an inference-time ablation)."""
        n = x_t.shape[2]
        idx = self.keyframe_indices(n, stride=keyframe_stride, device=x_t.device)
        c, q, z0 = self.read_begin(t, text)
        out, _ = self.read_attend(q, x_t[:, :, idx], idx, n)
        return self.read_end(out, c, z0, text)
