"""A pixel decoder after the DiT's patch decoder: small 3x3 convolutions at full resolution.

A patch-4 DiT decodes each token to its 4x4 pixels (x2 frames) with one linear map. At the width
of a CPU-sized model that leaves the estimate blurred inside the patch: the shipped VIN-S/4 at
step 15000 drew a 7-px square as a rounded blob even at t = 0.5, where the noisy input shows its
edges plainly (docs/RESULTS.md). Pixel-space diffusion transformers add a light pixel-level stage
for exactly this: U-ViT a 3x3 convolution after the linear decoder, DeCo (2025) an attention-free
pixel decoder conditioned on the DiT's per-patch features.

`PixelRefiner` is that stage, per frame (2-D convolutions, so it works on windows of any length):

    h = silu(conv_in([y ; x_t ; features]))        y: the DiT's decoded output, x_t: the noisy input,
    h = silu(film_c(conv_mid(h)))                  features: `feature_channels` per pixel, decoded by
    out = y + conv_out(h)                          `features` from the DiT's last hidden state like y

`film_c` scales and shifts the channels from the DiT's conditioning vector (timestep + pooled
caption). conv_out is zero-initialised, so a DiT with a new refiner computes exactly what it did
without one: a trained checkpoint can be warm-started with it (`train.init_from`). The EMA copy
starts from the same zeros and follows at `train.ema_decay` from the first step (the decay's
warm-up counts from step 0, not from the warm start), so after a short fine-tune the EMA's refiner
lags the trained one by about 1 / (1 - ema_decay) steps. Its activations are full-resolution
(rows x frames x H x W x refine_width), which the attention-memory guard of `full` and `spectral`
does not count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class PixelRefiner(nn.Module):
    def __init__(self, channels: int, width: int, feature_channels: int, dim: int, patch_values: int):
        """`dim`: the DiT's width (its hidden tokens and conditioning vector); `patch_values`: pixels
        per token (pt * ps * ps), so that `features` maps a token to its pixels' feature channels."""
        super().__init__()
        self.features = nn.Linear(dim, feature_channels * patch_values)
        self.conv_in = nn.Conv2d(2 * channels + feature_channels, width, 3, padding=1)
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.film = nn.Linear(dim, 2 * width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        for p in (self.film.weight, self.film.bias, self.conv_out.weight, self.conv_out.bias):
            nn.init.zeros_(p)

    def forward(self, y: Tensor, x: Tensor, features: Tensor, c: Tensor) -> Tensor:
        """y, x: (B, C, F, H, W) the decoded output and the noisy input; features: (B, K, F, H, W);
        c: (B, D) conditioning. Returns y refined, (B, C, F, H, W), in y's dtype.

        Under CPU autocast the convolutions run in float32: bf16 convolutions are ~8x slower than
        float32 ones on CPU (measured with torch 2.13 on the 2-core development machine)."""
        if y.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return self._refine(y.float(), x.float(), features.float(), c.float()).to(y.dtype)
        return self._refine(y, x, features, c)

    def _refine(self, y: Tensor, x: Tensor, features: Tensor, c: Tensor) -> Tensor:
        B, _, frames = y.shape[:3]
        h = rearrange(torch.cat([y, x.to(y.dtype), features], dim=1), "b c f h w -> (b f) c h w")
        h = F.silu(self.conv_in(h.contiguous(memory_format=torch.channels_last)))
        scale, shift = self.film(F.silu(c)).repeat_interleave(frames, dim=0)[..., None, None].chunk(2, dim=1)
        h = F.silu(self.conv_mid(h) * (1 + scale) + shift)
        return y + rearrange(self.conv_out(h), "(b f) c h w -> b c f h w", b=B)
