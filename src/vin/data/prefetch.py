"""Render training batches ahead of the training loop, in worker processes (`train.data_workers`).

`prefetch(stream, workers)` yields exactly what `iter(stream)` yields — the same batches in the
same order, so a run's losses do not depend on the number of workers — while the workers render
up to `2 * workers` batches ahead. Worker w of n renders batches start + w, start + w + n, ...;
torch's DataLoader hands out its workers' results round-robin, which restores the order.

Why: the sprite world is rendered in numpy on the CPU: 0.17 s for a batch of 64 videos of 26
frames on one (busy) core of the development machine. On a GPU that is likely longer than a
training step of VIN-S (not yet measured), so rendering in the loop would leave the GPU idle. On a
small CPU leave it at 0: a training step there takes a hundred times longer than rendering its
batch, and the workers would take cores from the step.

`Mapped(stream, fn)` is the stream with `fn` applied to every batch, in the workers when it is
prefetched: the trainer draws each step's noise there too (0.1 s for 64 videos of 26 frames on one
core), so nothing but the step itself is left to the training loop.

The workers run in a process group of their own, so that a signal sent to the trainer's group
(Ctrl-C, a scheduler's SIGTERM) reaches only the trainer, which stops after the step in progress
(vin.training.stopping); they end with the trainer, also when it dies of an exception.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vin.devices import pinned


class Stream(Protocol):
    """What `prefetch` shards: batches by index (`vin.data.synthetic.SyntheticVideoStream`, `Mapped`)."""

    start_index: int

    def batches(self, first: int, stride: int) -> Iterator[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Mapped:
    """`stream` with `fn` applied to each batch. `fn` must be picklable (a module-level class or
    function) where workers cannot fork."""

    def __init__(self, stream: Stream, fn: Callable[[Any], Any]):
        self.stream, self.fn = stream, fn

    @property
    def start_index(self) -> int:
        return self.stream.start_index

    def batches(self, first: int, stride: int) -> Iterator[Any]:
        return map(self.fn, self.stream.batches(first, stride))

    def __iter__(self) -> Iterator[Any]:
        return self.batches(self.start_index, 1)


class _Shards(IterableDataset):
    """In worker w of n: the stream's batches start + w, start + w + n, ..."""

    def __init__(self, stream: Stream):
        self.stream = stream

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.stream.batches(self.stream.start_index + w, n)


def _leave_process_group(_: int) -> None:
    # Ctrl-C, and a scheduler's SIGTERM, can reach the whole process group. The trainer stops after
    # the step in progress with a checkpoint (vin.training.stopping); a worker killed by the same
    # signal would make the DataLoader raise in the middle of that step. In a group of its own a
    # worker gets no group signal, yet still ends when the trainer does (normally, or by an
    # exception: multiprocessing terminates its daemon workers at exit). Ignoring the signals
    # instead would make that exit wait forever on a worker that ignores SIGTERM.
    if hasattr(os, "setpgid"):  # POSIX
        os.setpgid(0, 0)


def prefetch(stream: Stream, workers: int, pin_memory: bool = False) -> Iterator[Any]:
    """The batches of `stream` in order, rendered by `workers` processes (0: in this process), their
    tensors in pinned memory with `pin_memory` (for copies to a CUDA device that do not wait)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        return (pinned(item) for item in stream) if pin_memory else iter(stream)
    # fork: the workers need no CUDA, and start at once; Python 3.14's default (forkserver) would put
    # a server process in the trainer's process group, whose death by a group signal ends the workers
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    loader = DataLoader(_Shards(stream), batch_size=None, num_workers=workers, prefetch_factor=2,
                        pin_memory=pin_memory, worker_init_fn=_leave_process_group, multiprocessing_context=context)
    return (tuple(item) for item in loader)  # type: ignore[misc]
