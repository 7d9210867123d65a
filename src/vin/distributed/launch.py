"""Run a function on P local processes (what `vin generate --procs P` and `vin bench` use).

`run_local(fn, procs, *args)` spawns P fresh processes with `torch.multiprocessing`, joins them
into a gloo (CPU) or nccl (CUDA, one GPU per process) group on a free local port, calls
`fn(ctx, *args)` on each and returns rank 0's result. Under torchrun the CLI instead joins the
group torchrun describes (`group.setup_from_env`) and calls the same library functions.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any, Callable

import torch

from vin.distributed.group import DEFAULT_TIMEOUT_S, DistContext, DistributedError, setup_tcp, spawn, teardown


def _worker(rank: int, world: int, port: int, fn: Callable[..., Any], args: tuple, device: str,
            threads: int, timeout_s: float, result_path: str) -> None:
    torch.set_num_threads(threads)
    try:
        ctx = setup_tcp(rank, world, port, device, timeout_s)
        result = fn(ctx, *args)
        if rank == 0:  # a file, not a queue: a pipe fills up while the parent waits in join
            with open(result_path, "wb") as f:
                pickle.dump(result, f)
    finally:
        teardown()


def run_local(fn: Callable[..., Any], procs: int, *args: Any, device: str = "cpu", threads: int = 0,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
    """fn(ctx, *args) on `procs` local processes -> rank 0's result (it must be picklable).

    threads: torch CPU threads per process (0: this process's count divided by `procs`, at least 1).
    """
    if procs < 1:
        raise ValueError(f"--procs must be >= 1, got {procs}")
    threads = threads or max(1, torch.get_num_threads() // procs)
    with tempfile.TemporaryDirectory(prefix="vin-procs-") as tmp:
        path = os.path.join(tmp, "result.pkl")
        spawn(_worker, procs, (fn, args, str(device), threads, timeout_s, path))
        if not os.path.exists(path):
            raise DistributedError("rank 0 finished without a result")
        with open(path, "rb") as f:
            return pickle.load(f)  # written just now by our own child process


def context_is_parallel(ctx: DistContext | None) -> bool:
    return ctx is not None and ctx.world > 1
