"""Noise that does not depend on how the video is cut or distributed.

Frame f of video b gets its initial noise from its own generator seeded by (seed, b, f): the same
seed gives the same noise whatever the chunk layout, the number of processes, or the video length
(the first N frames of a longer video start from the same noise as an N-frame video). A stochastic
solver's fresh noise at step i (`--solver ddim --eta`) is seeded the same way by (seed, b, f, i + 1).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor


def frame_seed(seed: int, video: int, frame: int, step: int | None = None) -> int:
    """The generator seed of one frame's initial noise, or of its noise at solver step `step`."""
    entropy = [seed, video, frame] if step is None else [seed, video, frame, step + 1]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def video_noise(seed: int, batch: int, channels: int, frames: range | int, height: int, width: int,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                step: int | None = None) -> Tensor:
    """(batch, channels, len(frames), height, width) standard normal noise for the given frame
    indices: the initial noise, or with `step` the solver's fresh noise at that step."""
    frames = range(frames) if isinstance(frames, int) else frames
    out = torch.empty(batch, channels, len(frames), height, width)
    for b in range(batch):
        for i, f in enumerate(frames):
            g = torch.Generator().manual_seed(frame_seed(seed, b, f, step))
            out[b, :, i] = torch.randn(channels, height, width, generator=g)
    return out.to(device=device, dtype=dtype)


def step_noise(seed: int, batch: int, channels: int, frames: range | int, height: int, width: int,
               device: str | torch.device = "cpu") -> Callable[[int], Tensor]:
    """The solver's noise source for these frames: step i -> `video_noise(..., step=i)`."""
    return lambda i: video_noise(seed, batch, channels, frames, height, width, device, step=i)
