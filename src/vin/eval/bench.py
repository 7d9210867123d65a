"""`vin bench --strategies ...`: wall time, peak memory and FLOPs of the long-video strategies.

Every (strategy, length) is sampled on the same weights, each run in a fresh spawned process with
the same number of torch threads, so that the numbers of one bench are comparable:
- warm-up: after loading, the strategy samples once at one chunk's length for one step (the same
  ops on little data): the first call of each kernel faults in library code and thread pools,
  ~80 MB of RSS on CPU whatever the strategy, which would swamp a small model's own memory;
- wall time: the measured run, from after the warm-up to the finished video;
- peak memory: on CPU the peak resident set size above the baseline after the warm-up. Linux: the
  freed heap is trimmed and the peak reset to the current RSS (`/proc/self/clear_refs`), so neither
  the load's nor the warm-up's transient hides a smaller peak (VmHWM, not `ru_maxrss`: see
  `_peak_rss_mb`); elsewhere `ru_maxrss` after minus before. On CUDA:
  `torch.cuda.max_memory_allocated` above what is allocated before the run;
- FLOPs: analytic (`vin.eval.flops.analytic_flops`, always) and counted (`counted_flops`, on request,
  in this process, on the meta device: the sampler's ops on shapes only).
With `repeats` > 1 each repeat is a fresh process and the median is reported (every run is kept).
A whole-video strategy whose attention would exceed `sample.attention_limit_gb` is "refused", as
`vin generate` would refuse it, and not run.

The multi-process timing of `vin bench --procs` stays in `vin.distributed.bench`.
"""

from __future__ import annotations

import ctypes
import gc
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, replace
from pathlib import Path

import torch

from vin.config import SampleConfig
from vin.eval.flops import analytic_flops, counted_flops

_CLEAR_REFS = "/proc/self/clear_refs"


def _rss_mb() -> float:
    """Current resident set size (Linux /proc), or the peak so far where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return _maxrss_mb()


def _maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _peak_rss_mb() -> float:
    """Peak RSS of this process: Linux VmHWM, which `_reset_peak_rss` resets. Not ru_maxrss: on
    Linux it also holds the peak of the parent's memory image this process was forked from before
    its exec (a spawned child of a 340 MB parent reads >= 340 MB), and clear_refs does not reset that."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return _maxrss_mb()


def _reset_peak_rss() -> bool:
    """Linux >= 4.0: set the peak RSS to the current RSS. False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """glibc: give freed heap back to the OS, so that the baseline RSS holds no freed warm-up data."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _timed_run(checkpoint: str, strategy: str, sample: SampleConfig, prompts: list[str], device: str,
               threads: int) -> dict:
    """In a fresh process: load, warm up, sample once -> {"wall_s", "peak_mem_mb", "peak_reset"}."""
    from vin.generate import load_model
    from vin.sampling.strategies import get_strategy

    torch.set_num_threads(threads)
    model, cfg = load_model(checkpoint, device)
    sampler = get_strategy(strategy)
    size = (cfg.data.height, cfg.data.width)
    cuda = torch.device(device).type == "cuda"
    # Warm-up: one step on one chunk's length runs the same ops on little data. The first call of
    # each kernel faults in library code pages and thread-pool state (~80 MB of RSS on CPU), which
    # would otherwise swamp a small model's data; it also keeps one-off start-up out of the time.
    sampler(model, prompts, replace(sample, frames=sample.chunk_frames or model.cfg.chunk_frames, steps=1), size, device)
    gc.collect()
    _malloc_trim()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    reset = _reset_peak_rss()
    before = _rss_mb() if reset else _peak_rss_mb()
    t0 = time.perf_counter()
    sampler(model, prompts, sample, size, device)
    if cuda:
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 - base if cuda else _peak_rss_mb() - before
    return {"wall_s": wall, "peak_mem_mb": max(0.0, peak), "peak_reset": reset or cuda}


def _in_fresh_process(*args) -> dict:
    """`_timed_run(*args)` in a freshly spawned process (a process that dies, e.g. killed for memory,
    raises BrokenProcessPool instead of hanging as a multiprocessing.Pool would)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_timed_run, *args).result()


def plan(model, frame_size: tuple[int, int], strategy: str, sample: SampleConfig, prompts: list[str]) -> dict:
    """The row of one (strategy, sample.frames) before anything runs: windows, analytic FLOPs, and
    whether a whole-video strategy is refused for its attention memory. A length the strategy
    cannot lay out raises ValueError (bad input)."""
    from vin.sampling.common import check_attention_memory, resolve_chunk_frames
    from vin.sampling.strategies import WHOLE_VIDEO, get_strategy, strategy_layout

    get_strategy(strategy)
    sample = replace(sample, strategy=strategy, chunk_frames=resolve_chunk_frames(model, sample))
    flops = analytic_flops(model.cfg, sample, frame_size, strategy, batch=len(prompts))  # checks the layout
    row = {"strategy": strategy, "frames": sample.frames, "steps": sample.steps, "solver": sample.solver,
           "windows": len(strategy_layout(sample, sample.chunk_frames)), "status": "ok", "reason": None,
           "wall_s": None, "wall_s_runs": [], "peak_mem_mb": None, "peak_mem_mb_runs": [], "peak_reset": None,
           "flops": flops["total"], "flops_parts": flops, "counted_flops": None, "counted_flops_parts": None}
    if strategy in WHOLE_VIDEO:
        try:
            check_attention_memory(model, len(prompts), sample.frames, frame_size, sample, strategy,
                                   maps=2 if strategy == "spectral" else 1)
        except ValueError as e:
            row.update(status="refused", reason=str(e))
    return row


def _fill(row: dict, checkpoint: Path, model, frame_size: tuple[int, int], sample: SampleConfig, prompts: list[str],
          device: str, threads: int, repeats: int, count: bool, timed: bool) -> dict:
    """Counted FLOPs (in this process) and `repeats` timed runs (fresh processes) of a planned row."""
    if row["status"] == "refused":
        return row
    sample = replace(sample, frames=row["frames"], strategy=row["strategy"])
    if count:
        counted = counted_flops(model, prompts, sample, frame_size, row["strategy"], meta=True)
        row.update(counted_flops=counted["total"], counted_flops_parts=counted)
    if not timed:
        row["status"] = "not timed"
        return row
    try:
        runs = [_in_fresh_process(str(checkpoint), row["strategy"], sample, prompts, device, threads)
                for _ in range(repeats)]
    except BrokenProcessPool as e:
        row.update(status="failed", reason=f"the measuring process died ({e or 'killed'}; out of memory?)")
        return row
    row.update(wall_s_runs=[r["wall_s"] for r in runs], peak_mem_mb_runs=[r["peak_mem_mb"] for r in runs],
               peak_reset=all(r["peak_reset"] for r in runs))
    row.update(wall_s=statistics.median(row["wall_s_runs"]), peak_mem_mb=statistics.median(row["peak_mem_mb_runs"]))
    return row


def _load(checkpoint: str | Path | None, threads: int, repeats: int):
    from vin.checkpoint import CheckpointError
    from vin.generate import DEFAULT_CHECKPOINT, load_model

    if threads < 1 or repeats < 1:
        raise ValueError(f"threads and repeats must be >= 1, got {threads} and {repeats}")
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if checkpoint is None and not path.is_file():
        raise CheckpointError(f"no --checkpoint given and the default {path} is missing")
    model, cfg = load_model(path, "cpu")
    return path, model, cfg


def measure(checkpoint: str | Path | None, strategy: str, sample: SampleConfig, prompts: list[str],
            device: str = "cpu", threads: int = 1, repeats: int = 1, count_flops: bool = False,
            timed: bool = True) -> dict:
    """Time, peak memory and FLOPs of sampling one video per prompt with `strategy` -> one row:

        {"strategy", "frames", "steps", "solver", "windows" (DiT windows; 1 for full/spectral),
         "status": "ok" | "refused" | "failed" | "not timed", "reason" (why refused or failed: the
         measuring process died, e.g. killed for memory; else None),
         "wall_s", "peak_mem_mb" (medians over repeats; None unless timed), "wall_s_runs",
         "peak_mem_mb_runs", "peak_reset" (the earlier peak was reset away: see the module docstring),
         "flops" (analytic total), "flops_parts" ({part: FLOPs}, `vin.eval.flops.PARTS` + "total"),
         "counted_flops", "counted_flops_parts" (None unless count_flops; parts + "other")}

    checkpoint None: the shipped one. Frame size: the checkpoint's training size."""
    path, model, cfg = _load(checkpoint, threads, repeats)
    size = (cfg.data.height, cfg.data.width)
    row = plan(model, size, strategy, sample, prompts)
    return _fill(row, path, model, size, sample, prompts, device, threads, repeats, count_flops, timed)


def bench_strategies(checkpoint: str | Path | None, strategies: list[str], frames: list[int], sample: SampleConfig,
                     prompts: list[str], device: str = "cpu", threads: int = 1, repeats: int = 1,
                     count_flops: bool = False, timed: bool = True, progress=None) -> dict:
    """`measure` for every (length, strategy), every length checked before anything runs ->
    {"checkpoint", "device", "threads", "repeats", "prompts", "frame_size", "sample" (the shared
    settings; frames and strategy vary per row), "model_config", "rows": [row, ...]}.
    `progress(message)` is told about each row as it finishes."""
    if not strategies or not frames or min(frames) < 1:
        raise ValueError(f"need at least one strategy and positive video lengths, got {strategies} and {frames}")
    path, model, cfg = _load(checkpoint, threads, repeats)
    size = (cfg.data.height, cfg.data.width)
    rows = []
    for f in frames:
        for s in strategies:
            try:
                rows.append(plan(model, size, s, replace(sample, frames=f), prompts))
            except ValueError as e:
                raise ValueError(f"{s} at {f} frames: {e}") from None
    for row in rows:
        _fill(row, path, model, size, sample, prompts, device, threads, repeats, count_flops, timed)
        if progress is not None:
            wall = "" if row["wall_s"] is None else f", {row['wall_s']:.2f} s"
            progress(f"{row['strategy']} at {row['frames']} frames: {row['status']}{wall}")
    return {"checkpoint": str(path), "device": device, "threads": threads, "repeats": repeats, "prompts": prompts,
            "frame_size": list(size), "sample": asdict(sample), "model_config": asdict(cfg.model), "rows": rows}


def _gflop(x: int | None) -> str:
    return "" if x is None else f"{x / 1e9:.3g}"


def format_strategy_table(record: dict) -> str:
    """Markdown table of a `bench_strategies` record; ratios are against `vin` at the same length."""
    s, rows = record["sample"], record["rows"]
    counted = any(r["counted_flops"] is not None for r in rows)
    h, w = record["frame_size"]
    lines = [f"{h}x{w} frames, {s['steps']} {s['solver']} steps, {len(record['prompts'])} video(s), "
             f"{record['threads']} thread(s) per process, {record['device']}; wall time and peak memory (above the "
             f"warmed-up model): median of {record['repeats']} fresh process(es); FLOPs: matmuls, analytic",
             "| strategy | frames | windows | wall s | wall / vin | peak MB | GFLOP | FLOPs / vin |"
             + (" counted GFLOP |" if counted else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if counted else "")]
    vin = {r["frames"]: r for r in rows if r["strategy"] == "vin"}
    notes = []
    for r in rows:
        ref = vin.get(r["frames"])
        wall = f"{r['wall_s']:.2f}" if r["status"] == "ok" else {"not timed": "-"}.get(r["status"], r["status"])
        wall_ratio = f"{r['wall_s'] / ref['wall_s']:.2f}" if r["wall_s"] and ref and ref["wall_s"] else ""
        mem = "" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}"
        flop_ratio = f"{r['flops'] / ref['flops']:.2f}" if ref else ""
        line = (f"| {r['strategy']} | {r['frames']} | {r['windows']} | {wall} | {wall_ratio} | {mem} | "
                f"{_gflop(r['flops'])} | {flop_ratio} |")
        lines.append(line + (f" {_gflop(r['counted_flops'])} |" if counted else ""))
        if r["reason"]:
            notes.append(f"{r['strategy']} at {r['frames']} frames, {r['status']}: {r['reason']}")
    return "\n".join(lines + notes)


def write_record(path: str | Path, record: dict) -> Path:
    """The bench record as JSON, written atomically (a failed write leaves no half file)."""
    from vin.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return Path(path)
