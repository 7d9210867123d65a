"""Initial noise that does not depend on how the video is cut or distributed.

Frame f of video b gets noise from its own generator seeded by (seed, b, f): the same seed gives
the same noise whatever the chunk layout, the number of processes, or the video length (the first
N frames of a longer video start from the same noise as an N-frame video).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def frame_seed(seed: int, video: int, frame: int) -> int:
    return int(np.random.SeedSequence([seed, video, frame]).generate_state(1, dtype=np.uint64)[0] >> 1)


def video_noise(seed: int, batch: int, channels: int, frames: range | int, height: int, width: int,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """(batch, channels, len(frames), height, width) standard normal noise for the given frame indices."""
    frames = range(frames) if isinstance(frames, int) else frames
    out = torch.empty(batch, channels, len(frames), height, width)
    for b in range(batch):
        for i, f in enumerate(frames):
            g = torch.Generator().manual_seed(frame_seed(seed, b, f))
            out[b, :, i] = torch.randn(channels, height, width, generator=g)
    return out.to(device=device, dtype=dtype)
