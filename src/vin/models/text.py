"""A small caption encoder trained end to end with the model (no downloaded text model).

Words are hashed (CRC-32, stable across processes and Python versions) into a fixed number of
buckets, so any caption is accepted; id 0 is padding and id 1 is the empty caption, which is also
what classifier-free guidance's unconditional pass and caption dropout use.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vin.config import TextConfig
from vin.devices import to_device
from vin.models.layers import Attention, Mlp, sincos_1d

PAD, EMPTY = 0, 1
_WORD = re.compile(r"[a-z0-9]+")


def caption_words(caption: str) -> list[str]:
    """The words the encoder sees: lower-case runs of letters and digits."""
    return _WORD.findall(caption.lower())


def tokenize(captions: list[str], vocab_size: int, max_tokens: int) -> Tensor:
    """Captions -> (B, max_tokens) int64 ids; words past `max_tokens` are dropped."""
    ids = torch.full((len(captions), max_tokens), PAD, dtype=torch.long)
    for i, caption in enumerate(captions):
        words = caption_words(caption)[:max_tokens]
        if not words:
            ids[i, 0] = EMPTY
        for j, w in enumerate(words):
            ids[i, j] = 2 + zlib.crc32(w.encode()) % (vocab_size - 2)
    return ids


@dataclass
class TextEmbedding:
    """tokens (B, L, D), mask (B, L) True where a real token, pooled (B, D)."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def take(self, index: Tensor) -> "TextEmbedding":
        return TextEmbedding(self.tokens[index], self.mask[index], self.pooled[index])

    @staticmethod
    def cat(parts: list["TextEmbedding"]) -> "TextEmbedding":
        return TextEmbedding(*(torch.cat([getattr(p, f) for p in parts]) for f in ("tokens", "mask", "pooled")))


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.blocks = nn.ModuleList(_Block(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        # N(0, 1) word embeddings (torch's default), on the scale of the sinusoidal positions: with
        # std 0.02 the positions swamp the words and captions barely reach the model.

    def forward(self, captions: list[str]) -> TextEmbedding:
        device = self.embed.weight.device
        ids = to_device(tokenize(captions, self.cfg.vocab_size, self.cfg.max_tokens), device)
        mask = ids != PAD
        x = self.embed(ids) + sincos_1d(torch.arange(ids.shape[1], device=device), self.cfg.width)
        bias = key_padding_bias(mask)
        for block in self.blocks:
            x = block(x, bias)
        x = self.norm(x)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return TextEmbedding(x, mask, pooled)


def key_padding_bias(mask: Tensor) -> Tensor:
    """(B, L) bool -> additive attention bias (B, 1, 1, L): 0 for real tokens, -inf for padding."""
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return bias.masked_fill(~mask, float("-inf"))[:, None, None, :]


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.mlp = Attention(dim, heads), Mlp(dim)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = x + self.attn(self.n1(x), bias=bias)
        return x + self.mlp(self.n2(x))
