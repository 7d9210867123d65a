"""`vin bench`: wall time of sampling one video on 1, 2, ... local processes, the same result, traffic.

Every process count runs in fresh spawned processes with the same number of torch threads per
process; the time is rank 0's, from a barrier after model loading to the gathered video (process
start and model loading excluded). One process runs the single-process reference `sample_vin`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from vin.config import SampleConfig
from vin.distributed.group import CommStats, DistContext, barrier
from vin.distributed.launch import run_local
from vin.distributed.sampling import partition, sample_vin_distributed
from vin.sampling.chunking import chunk_layout
from vin.sampling.vin_parallel import sample_vin


@dataclass
class BenchRow:
    procs: int
    wall_s: float
    max_diff: float  # max |video - video with the first process count|
    read_bytes_per_step: int  # all ranks, sent
    halo_bytes_per_step: int
    chunks_per_rank: list[int]


def _worker(ctx: DistContext, checkpoint: str, prompts: list[str], sample: SampleConfig):
    from vin.generate import load_model, traffic_per_step  # generate imports this package

    model, cfg = load_model(checkpoint, ctx.device)
    size = (cfg.data.height, cfg.data.width)
    barrier(ctx, "bench start")
    t0 = time.perf_counter()
    if ctx.world == 1:
        video, traffic = sample_vin(model, prompts, sample, size, ctx.device), {"read": 0, "halo": 0}
    else:
        stats = CommStats()
        video = sample_vin_distributed(model, prompts, sample, size, ctx, stats=stats)
        traffic = traffic_per_step(ctx, stats, sample)
    wall = time.perf_counter() - t0
    return None if video is None else video.cpu(), wall, traffic


def bench(checkpoint: str | Path, sample: SampleConfig, procs: list[int], prompts: list[str],
          device: str = "cpu", threads: int = 1) -> tuple[list[BenchRow], SampleConfig]:
    """One row per process count, and the resolved sample config (chunk_frames filled in)."""
    from vin.generate import _prepare

    _, cfg, sample, _, layout = _prepare(sample, Path("bench.mp4"), checkpoint, "cpu", 1)
    rows, first = [], None
    for p in procs:
        video, wall, traffic = run_local(_worker, p, str(checkpoint), prompts, sample, device=device, threads=threads)
        first = video if first is None else first
        parts = partition(layout, sample.frames, p)
        rows.append(BenchRow(p, wall, float((video - first).abs().max()), traffic["read"], traffic["halo"],
                             [q.c1 - q.c0 for q in parts]))
    return rows, sample


def format_table(rows: list[BenchRow], sample: SampleConfig, threads: int) -> str:
    n = len(chunk_layout(sample.frames, sample.chunk_frames, sample.overlap))
    lines = [f"{sample.frames} frames, {n} chunks, {sample.steps} {sample.solver} steps, {threads} thread(s) per process",
             "| processes | chunks per rank | wall s | speed-up | max abs diff | read B/step | halo B/step |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.procs} | {'+'.join(map(str, r.chunks_per_rank))} | {r.wall_s:.2f} | "
                     f"{rows[0].wall_s / r.wall_s:.2f}x | {r.max_diff:.1e} | {r.read_bytes_per_step} | "
                     f"{r.halo_bytes_per_step} |")
    return "\n".join(lines)
