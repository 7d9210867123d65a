"""Host-to-device copies that do not make the host wait for a GPU.

A copy from ordinary (pageable) host memory to a CUDA device may synchronise with the device's
stream: the host then waits for every kernel queued before it, and cannot queue the next training
step while the GPU runs this one. From page-locked (pinned) memory the copy is queued like a kernel.
torch's caching host allocator keeps a pinned block until the copies that read it are done, so the
host tensor may be dropped at once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """`x` on `device`; a host tensor bound for CUDA goes through pinned memory, without waiting."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def pinned(item: Any) -> Any:
    """`item` with every tensor in it (nested tuples, named tuples, lists and dicts) copied to
    pinned memory."""
    if isinstance(item, Tensor):
        return item.pin_memory()
    if isinstance(item, tuple):
        values = [pinned(v) for v in item]
        return type(item)(*values) if hasattr(item, "_fields") else tuple(values)
    if isinstance(item, list):
        return [pinned(v) for v in item]
    if isinstance(item, dict):
        return {k: pinned(v) for k, v in item.items()}
    return item
