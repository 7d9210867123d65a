"""Several processes with `torch.distributed` (launched by torchrun or spawned locally).

- `group`: process-group setup (gloo on CPU, nccl on CUDA), bounded timeouts, clear errors, byte counts.
- `sampling`: exact chunk-parallel VIN sampling (each rank its chunks; the read merged by all-reduce).
- `launch`: run generation or a benchmark on P local processes.
Data-parallel training is `vin.training.trainer.train(..., group=...)` (torch DDP).
"""

from __future__ import annotations

import os


class DistributedError(RuntimeError):
    """A collective failed or timed out (usually: another rank failed or hung), or a worker died."""


def launched_by_torchrun() -> bool:
    """True inside torchrun (or any env:// launcher) with more than one process (no torch import)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1
