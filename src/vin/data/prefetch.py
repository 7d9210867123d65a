"""Render training batches ahead of the training loop, in worker processes (`train.data_workers`).

`prefetch(stream, workers)` yields exactly what `iter(stream)` yields — the same batches in the
same order, so a run's losses do not depend on the number of workers — while the workers render
up to `2 * workers` batches ahead. Worker w of n renders batches start + w, start + w + n, ...;
torch's DataLoader hands out its workers' results round-robin, which restores the order.

Why: the sprite world is rendered in numpy on the CPU, about 0.1-0.2 s for a batch of 64 videos
of 26 frames on one core. On a GPU that is longer than a training step of VIN-S, so rendering in
the loop would leave the GPU idle most of the time. On a small CPU leave it at 0: a training step
there takes a hundred times longer than rendering its batch, and the workers would take cores
from the step.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vin.data.synthetic import SyntheticVideoStream

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # those vin.training.stopping catches

Batch = tuple[int, torch.Tensor, list[str]]


class _Shards(IterableDataset):
    """In worker w of n: the stream's batches start + w, start + w + n, ..."""

    def __init__(self, stream: SyntheticVideoStream):
        self.stream = stream

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.stream.batches(self.stream.start_index + w, n)


def _ignore_stop_signals(_: int) -> None:
    # Ctrl-C, and a scheduler's SIGTERM, can reach the whole process group. The trainer stops after
    # the step in progress with a checkpoint (vin.training.stopping) and then shuts its workers
    # down; a worker that died first would make the DataLoader raise in the middle of that step.
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def prefetch(stream: SyntheticVideoStream, workers: int, pin_memory: bool = False) -> Iterator[Batch]:
    """The batches of `stream` in order, rendered by `workers` processes (0: in this process)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        return iter(stream)
    loader = DataLoader(_Shards(stream), batch_size=None, num_workers=workers, prefetch_factor=2,
                        pin_memory=pin_memory, worker_init_fn=_ignore_stop_signals)
    return (tuple(item) for item in loader)  # type: ignore[misc]
