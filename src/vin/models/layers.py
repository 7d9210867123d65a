"""Shared transformer primitives: attention, MLP, adaLN modulation, embeddings.

Attention takes an optional additive bias of shape broadcastable to (B, heads, Lq, Lk) (the DiT's
caption padding) and optional per-head, per-key logits (the DiT's learned gate on the global
tokens; folded into an extra channel where that keeps SDPA's fused kernel). It also takes an
optional `attend` function that replaces softmax attention itself (same q, k, v, bias in, same
output shape out): training-free strategies that change *how* tokens attend (spectral blending)
plug in there without touching the parameters; `attend=None` is the plain path, unchanged.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (B, L, D), shift/scale (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def sincos_1d(pos: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) positions: pos (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=pos.device) / half)
    args = pos.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


def sincos_3d(t_pos: Tensor, h: int, w: int, dim: int) -> Tensor:
    """Positions of a (frames, h, w) token grid -> (len(t_pos)*h*w, dim), frame-major order.

    The channel budget is split 1/4 time, 3/8 height, 3/8 width (each even). `t_pos` may be
    fractional (used to interpolate positions for longer windows).
    """
    dt = (dim // 4) // 2 * 2
    dh = ((dim - dt) // 2) // 2 * 2
    dw = dim - dt - dh
    dev = t_pos.device
    et = sincos_1d(t_pos, dt)
    eh = sincos_1d(torch.arange(h, device=dev), dh)
    ew = sincos_1d(torch.arange(w, device=dev), dw)
    f = len(t_pos)
    return torch.cat([
        et[:, None, None].expand(f, h, w, dt),
        eh[None, :, None].expand(f, h, w, dh),
        ew[None, None, :].expand(f, h, w, dw),
    ], dim=-1).reshape(f * h * w, dim)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> (B, dim): sinusoidal features of 1000*t through a 2-layer MLP (DiT)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        # features in float32 (t * 1000 needs the precision), then the weights' dtype (model.half())
        return self.mlp(sincos_1d(t * 1000.0, self.freq_dim).to(self.mlp[0].weight.dtype))


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


AttendFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]  # (q, k, v, bias) -> (B, H, Lq, d)


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None. Optional q/k RMS-norm."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by heads {heads}")
        self.heads = heads
        kv_dim = kv_dim or dim
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        hd = dim // heads
        self.q_norm = nn.RMSNorm(hd) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(hd) if qk_norm else nn.Identity()

    def qkv(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(B, Lq, D), (B, Lk, Dkv) -> q (B, H, Lq, d), k, v (B, H, Lk, d)."""
        ctx = x if context is None else context
        q = rearrange(self.q(x), "b l (h d) -> b h l d", h=self.heads)
        k, v = rearrange(self.kv(ctx), "b l (two h d) -> two b h l d", two=2, h=self.heads)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None,
                attend: AttendFn | None = None, key_logits: Tensor | None = None) -> Tensor:
        """`attend(q, k, v, bias)` (q (B, H, Lq, d), k/v (B, H, Lk, d)) replaces softmax attention
        when given; None is scaled-dot-product attention. `key_logits` (H, Lk): a logit added per
        head and key (a learned one: the DiT's global-token gates), the same as adding it to `bias`."""
        q, k, v = self.qkv(x, context)
        if key_logits is not None and (attend is not None or not _fold_key_logits(q, key_logits)):
            extra = key_logits[None, :, None, :]
            bias, key_logits = (extra if bias is None else bias + extra), None
        if key_logits is not None:
            out = attention_with_key_logits(q, k, v, bias, key_logits)
        elif attend is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            out = attend(q, k, v, bias)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


def _fold_key_logits(q: Tensor, key_logits: Tensor) -> bool:
    """Whether to take `attention_with_key_logits`: when the logits need a gradient, on the CPU.
    There an additive mask that needs a gradient sends SDPA to its unfused math path, forward and
    backward; the fused (flash) kernel makes a VIN-S training step 1.18x faster (docs/RESULTS.md,
    "Compute"). On a GPU, and without a gradient, the plain bias path is kept."""
    return q.device.type == "cpu" and key_logits.requires_grad and torch.is_grad_enabled()


def attention_with_key_logits(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, key_logits: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask + key_logits) v for key_logits (H, Lk), with the logits folded
    into one extra channel (q gets sqrt(d), k gets key_logits, v zeros) so that the mask stays a
    constant and the fused SDPA kernel can run with the logits' gradient flowing through k."""
    d = q.shape[-1]
    B, H, L, _ = k.shape
    logits = key_logits.to(k.dtype)[None, :, :, None].expand(B, H, L, 1)
    out = F.scaled_dot_product_attention(torch.cat([q, q.new_full((*q.shape[:-1], 1), math.sqrt(d))], -1),
                                         torch.cat([k, logits], -1),
                                         torch.cat([v, v.new_zeros(*v.shape[:-1], 1)], -1),
                                         attn_mask=mask, scale=d ** -0.5)
    return out[..., :d]


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax attention that also returns the log-sum-exp of the scores.

    q (B, H, Lq, d), k/v (B, H, Lk, d) -> out (B, H, Lq, d) normalised, lse (B, H, Lq).
    Attention over a concatenation of key sets equals `merge_attention` of the parts: this is what
    lets the read be computed piecewise (per rank, per key block) and merged exactly.
    """
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(scores.float(), dim=-1)
    probs = torch.exp(scores.float() - lse[..., None]).to(v.dtype)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v), lse


def merge_attention(outs: list[Tensor], lses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Exact merge of attention results over disjoint key sets (same queries)."""
    lse = torch.logsumexp(torch.stack(lses), dim=0)
    out = sum(o * torch.exp(l - lse)[..., None].to(o.dtype) for o, l in zip(outs, lses))
    return out, lse


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning (DiT): identity at initialisation."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: Tensor, c: Tensor, bias: Tensor | None = None, attend: AttendFn | None = None,
                key_logits: Tensor | None = None) -> Tensor:
        """x (B, L, D), c (B, D) conditioning, bias broadcastable to (B, heads, L, L); `attend`
        optionally replaces the self-attention's softmax, `key_logits` (heads, L) are added per
        head and key (see `Attention.forward`)."""
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), s1, sc1), bias=bias, attend=attend,
                                        key_logits=key_logits)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, sc2))


class FinalLayer(nn.Module):
    """adaLN + zero-initialised linear to patch values (DiT): the model predicts 0 at init."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)
        for p in (self.ada[1].weight, self.ada[1].bias, self.linear.weight, self.linear.bias):
            nn.init.zeros_(p)

    def hidden(self, x: Tensor, c: Tensor) -> Tensor:
        """The normalised, modulated tokens the output linear reads (the pixel refiner reads them too)."""
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return modulate(self.norm(x), shift, scale)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.linear(self.hidden(x, c))
