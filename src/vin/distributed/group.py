"""Process groups for `torch.distributed`: setup from torchrun or from a local spawn, bounded
timeouts, and a byte counter for what a rank sends.

Nothing here is global: `setup_*` returns a `DistContext` (group, rank, world size, device) that
callers pass on explicitly. The backend follows the device: gloo for CPU, nccl for CUDA.

Failure handling: every collective runs under the group's timeout (`init_process_group(timeout=)`),
so a rank that hangs makes the others fail after at most that long instead of waiting forever, and
a rank that dies closes its sockets, which gloo reports to its peers at once. `collective(...)`
turns the backend's error into a `DistributedError` that names this rank and the operation.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vin.distributed import DistributedError, launched_by_torchrun  # noqa: F401 (re-exported)

DEFAULT_TIMEOUT_S = 120.0


@dataclass
class CommStats:
    """Bytes this rank put into collectives / sends, by category (e.g. "read", "halo", "gather")."""

    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, category: str, *tensors: torch.Tensor) -> None:
        self.bytes[category] += sum(t.numel() * t.element_size() for t in tensors)
        self.calls[category] += 1

    def as_dict(self) -> dict[str, int]:
        return dict(self.bytes)


@dataclass(frozen=True)
class DistContext:
    """What a rank needs to take part: its group (None = the default group), rank, world size, device."""

    rank: int
    world: int
    device: torch.device
    group: Any = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: str | torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_device(device: str | torch.device, local_rank: int) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank)  # one GPU per process, as torchrun's convention
    return dev


def _init(rank: int, world: int, device: torch.device, timeout_s: float, init_method: str) -> DistContext:
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if backend == "nccl" else {}
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s), **kwargs)
    ctx = DistContext(rank, world, device, None, timeout_s)
    barrier(ctx, "startup")
    return ctx


def setup_from_env(device: str | torch.device = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the job described by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except KeyError as e:
        raise DistributedError(f"not launched by torchrun: {e.args[0]} is not set") from None
    local = int(os.environ.get("LOCAL_RANK", rank))
    return _init(rank, world, _rank_device(device, local), timeout_s, "env://")


def setup_tcp(rank: int, world: int, port: int, device: str | torch.device = "cpu",
              timeout_s: float = DEFAULT_TIMEOUT_S, host: str = "127.0.0.1") -> DistContext:
    """Join a job of `world` local processes rendezvousing on host:port (what `spawn` uses)."""
    return _init(rank, world, _rank_device(device, rank), timeout_s, f"tcp://{host}:{port}")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def collective(ctx: DistContext, what: str) -> Iterator[None]:
    """Re-raise a backend failure inside the block as a DistributedError naming the rank and `what`."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as e:  # DistBackendError, gloo "Connection closed by peer", timeouts
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(
            f"rank {ctx.rank}/{ctx.world}: {what} failed; another rank probably failed or hung "
            f"(timeout {ctx.timeout_s:g} s): {first}") from e


def barrier(ctx: DistContext, what: str) -> None:
    """A barrier that, on gloo, names the ranks that did not arrive within the timeout."""
    with collective(ctx, f"barrier '{what}'"):
        if dist.get_backend(ctx.group) == "gloo":
            dist.monitored_barrier(ctx.group, timeout=timedelta(seconds=ctx.timeout_s))
        else:
            dist.barrier(ctx.group)


def global_rank(ctx: DistContext, group_rank: int) -> int:
    return group_rank if ctx.group is None else dist.get_global_rank(ctx.group, group_rank)


def spawn(fn: Callable[..., None], nprocs: int, args: tuple = ()) -> None:
    """Run fn(rank, nprocs, port, *args) in `nprocs` fresh local processes; raise if any fails.

    `torch.multiprocessing.spawn` kills the remaining processes as soon as one fails, so a crash
    never leaves the others waiting for their timeout.
    """
    port = free_port()
    try:
        mp.spawn(fn, args=(nprocs, port, *args), nprocs=nprocs, join=True)
    except mp.ProcessRaisedException as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise DistributedError(f"a worker process failed: {lines[-1].strip() if lines else e}") from None
    except mp.ProcessExitedException as e:
        raise DistributedError(f"a worker process died: {e}") from None
