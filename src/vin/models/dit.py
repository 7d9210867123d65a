"""The chunk DiT: a video diffusion transformer that denoises one chunk of F frames at a time.

Positions are chunk-local (open question 3): every chunk sees frames 0..F-1, the length the DiT
was trained on, however long the video. The token sequence of one chunk is

    [caption tokens (L_text) ; global tokens (N_global, optional) ; video patch tokens (N_x)]

with full self-attention over it (the paper's eps([X_t^i, Z_t], t), MM-DiT-like joint attention).
Only the video tokens are decoded (then, with `dit.refine_width`, sharpened at pixel level by
`vin.models.refine.PixelRefiner`). The chunk tokens see the global tokens through a per-block,
per-head gate: a learned log-weight s added to the attention logits of the global keys (each global
key counts exp(s) times). It starts nearly shut (`model.vin.gate_init`, -16: the 32 global keys of
VIN-S carry a total weight ~4e-6 against one video key), so the untrained model is the plain chunk DiT
to float rounding, which a pretrained DiT needs when the interface is added. The log-space
parametrisation matters: a gate w >= 0 on a linear scale moved at most lr per Adam step and stayed
at w ~ 0.02 after 2250 steps (docs/RESULTS.md); in log space a step changes the weight by a factor,
and the trainer gives these parameters a larger learning rate (`train.gate_lr_mult`).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vin.config import ModelConfig
from vin.models.layers import AdaLNBlock, AttendFn, Attention, FinalLayer, TimestepEmbedder, sincos_3d
from vin.models.refine import PixelRefiner
from vin.models.text import TextEmbedding, key_padding_bias

_GATE_EPS = 1e-12  # checkpoints from before the log-space gate stored w >= 0: s = log(w + eps)


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """(B, C, F, H, W) -> (B, f*h*w, C*pt*ps*ps) tokens, frame-major, for patch (pt, ps, ps)."""
    pt, ph, pw = patch
    return rearrange(x, "b c (f pf) (h ph) (w pw) -> b (f h w) (c pf ph pw)", pf=pt, ph=ph, pw=pw)


def unpatchify(tokens: Tensor, patch: tuple[int, int, int], grid: tuple[int, int, int]) -> Tensor:
    """Inverse of `patchify`: (B, f*h*w, C*pt*ps*ps) and grid (f, h, w) -> (B, C, F, H, W)."""
    (pt, ph, pw), (f, h, w) = patch, grid
    return rearrange(tokens, "b (f h w) (c pf ph pw) -> b c (f pf) (h ph) (w pw)", f=f, h=h, w=w, pf=pt, ph=ph, pw=pw)


class ChunkDiT(nn.Module):
    def __init__(self, cfg: ModelConfig, global_width: int | None = None):
        super().__init__()
        d = cfg.dit
        self.cfg = cfg
        self.patch = (d.patch_t, d.patch_s, d.patch_s)
        patch_dim = cfg.channels * d.patch_t * d.patch_s**2
        self.x_embed = nn.Linear(patch_dim, d.width)
        self.t_embed = TimestepEmbedder(d.width)
        self.text_proj = nn.Linear(cfg.text.width, d.width)
        self.pool_proj = nn.Linear(cfg.text.width, d.width)
        self.blocks = nn.ModuleList(AdaLNBlock(d.width, d.heads, d.mlp_ratio, d.qk_norm) for _ in range(d.depth))
        self.final = FinalLayer(d.width, patch_dim)
        self.refine = None
        if d.refine_width:
            self.refine = PixelRefiner(cfg.channels, d.refine_width, d.refine_features, d.width, d.patch_t * d.patch_s**2)
        self.inject = cfg.vin.inject if global_width else None
        if global_width:
            self.global_proj = nn.Linear(global_width, d.width)
            if self.inject == "concat":
                self.gate_logits = nn.Parameter(torch.full((d.depth, d.heads), float(cfg.vin.gate_init)))
                self.register_load_state_dict_pre_hook(_convert_linear_gates)
            else:
                self.cross = nn.ModuleList(_GatedCrossAttention(d.width, d.heads) for _ in range(d.depth))

    def forward(self, x: Tensor, t: Tensor, text: TextEmbedding, global_tokens: Tensor | None = None,
                t_pos: Tensor | None = None, attend: AttendFn | None = None) -> Tensor:
        """Velocity of each chunk.

        x: (B, C, F, H, W) noisy chunks; t: (B,) in [0, 1]; text: per-chunk caption embedding (B, ...);
        global_tokens: (B, N_global, D_vin) or None (the plain chunk DiT);
        t_pos: (F / patch_t,) positions of the latent frames, default 0, 1, 2, ... (chunk-local);
        attend: optional replacement of the softmax in every block's self-attention, called as
        attend(q, k, v, bias) over the sequence [caption ; global ; video tokens (frame-major)]
        (None: the trained path; spectral blending uses it). Returns (B, C, F, H, W).
        """
        pt, ps, _ = self.patch
        B, C, F, H, W = x.shape
        if C != self.cfg.channels or F % pt or H % ps or W % ps:
            raise ValueError(f"chunk of shape {tuple(x.shape)} does not fit channels={self.cfg.channels}, patch=({pt}, {ps}, {ps})")
        f, h, w = F // pt, H // ps, W // ps
        if t_pos is None:
            t_pos = torch.arange(f, device=x.device, dtype=torch.float32)
        tokens = self.x_embed(patchify(x, self.patch))
        tokens = tokens + sincos_3d(t_pos, h, w, tokens.shape[-1]).to(tokens.dtype)
        c = self.t_embed(t) + self.pool_proj(text.pooled)

        use_global = global_tokens is not None and self.inject is not None
        parts = [self.text_proj(text.tokens)]
        n_global = 0
        if use_global and self.inject == "concat":
            parts.append(self.global_proj(global_tokens))
            n_global = global_tokens.shape[1]
        parts.append(tokens)
        seq = torch.cat(parts, dim=1)
        text_len = text.tokens.shape[1]
        base_bias = torch.cat([key_padding_bias(text.mask),
                               torch.zeros(B, 1, 1, seq.shape[1] - text_len, device=x.device)], dim=-1)
        z = self.global_proj(global_tokens) if use_global and self.inject == "cross" else None

        for i, block in enumerate(self.blocks):
            gate = self._gate_logits(i, text_len, n_global, seq.shape[1]) if n_global else None
            seq = block(seq, c, base_bias, attend, gate)
            if z is not None:
                seq = seq + self.cross[i](seq, z)
        hidden = self.final.hidden(seq[:, -tokens.shape[1]:], c)
        out = unpatchify(self.final.linear(hidden), self.patch, (f, h, w))
        if self.refine is not None:
            features = unpatchify(self.refine.features(hidden), self.patch, (f, h, w))
            out = self.refine(out, x, features, c)
        return out

    def _gate_logits(self, block: int, start: int, n: int, length: int) -> Tensor:
        """(heads, length): the gate log-weight on the global-token keys of `block`, 0 elsewhere."""
        s = self.gate_logits[block]
        col = torch.zeros(length, device=s.device)
        col[start:start + n] = 1.0
        return s[:, None] * col


def upgrade_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoints from before the log-space gate stored `...gates` = w >= 0: rename them to
    `...gate_logits` = log(w) (a negative stored w acted as a shut gate). Other keys pass through."""
    out = {}
    for key, value in state.items():
        if key.split(".")[-1] == "gates":
            key, value = key[:-len("gates")] + "gate_logits", torch.log(value.float().clamp(min=0) + _GATE_EPS)
        out[key] = value
    return out


def _convert_linear_gates(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: `upgrade_state_dict` for this module's own keys."""
    key = prefix + "gates"
    if key in state_dict:
        state_dict.update(upgrade_state_dict({key: state_dict.pop(key)}))


class _GatedCrossAttention(nn.Module):
    """inject="cross": tokens attend to the global tokens; zero-initialised output (exact no-op at init)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.attn.proj.bias)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.attn(self.norm(x), context=z)
