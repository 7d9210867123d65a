"""Load a checkpoint and write long videos: the library function behind `vin generate`."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from vin.checkpoint import CheckpointError, checkpoint_config, load_model  # load_model: also vin.generate's API
from vin.config import Config, SampleConfig
from vin.data.video_io import VIDEO_SUFFIXES, frame_strip, to_uint8, write_video
from vin.distributed.group import CommStats, DistContext, collective
from vin.distributed.launch import run_local
from vin.distributed.sampling import check_strategy, sample_vin_distributed
from vin.fileio import atomic_write_text
from vin.models.vin import VINModel
from vin.sampling.chunking import boundaries
from vin.sampling.common import resolve_chunk_frames
from vin.sampling.strategies import get_strategy, progress_steps, strategy_layout

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_CHECKPOINT = PACKAGE_WEIGHTS / "vin-s.safetensors"
DEFAULT_PROMPT = "a large red circle and a small white square on a blue striped background"


def output_paths(out: Path, count: int) -> list[Path]:
    return [out] if count == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def _prepare(sample: SampleConfig, out: Path, checkpoint: str | Path | None, device: str | torch.device,
             scale: int, use_global: bool = True) -> tuple[VINModel, Config, SampleConfig, Path, tuple]:
    """Check everything that can be checked before sampling; load the model. Returns the model, its
    config, the resolved sample config (chunk_frames filled in, `use_global=False` as
    global_tokens="none"), the checkpoint path and the strategy's windows."""
    if out.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"output {out} must end in one of {', '.join(VIDEO_SUFFIXES)}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if checkpoint is None:
        checkpoint = DEFAULT_CHECKPOINT
        if not checkpoint.is_file():
            raise CheckpointError(f"no --checkpoint given and the default {checkpoint} is missing")
    model, cfg = load_model(checkpoint, device)
    F = sample.chunk_frames or cfg.model.chunk_frames
    sample = replace(sample, chunk_frames=F)
    if not use_global:
        sample = replace(sample, global_tokens="none")
    get_strategy(sample.strategy)  # a known name
    layout = strategy_layout(sample, F)
    resolve_chunk_frames(model, sample)  # F fits the temporal patch
    return model, cfg, sample, Path(checkpoint), layout


def generate(prompts: list[str], sample: SampleConfig, out: str | Path, checkpoint: str | Path | None = None,
             device: str = "cpu", use_global: bool = True, strip: bool = True, scale: int = 8,
             progress: bool = True, ctx: DistContext | None = None) -> list[Path]:
    """Generate one video per prompt with the strategy `sample.strategy`; writes the video(s),
    `<out>.json` (resolved config, strategy included) and optionally `<out>.png` (a frame strip
    with chunk boundaries marked). A prompt may be a schedule "a; b; c" (one prompt per chunk, for
    the chunked strategies). `use_global=False` is `sample.global_tokens="none"`. Returns the
    written paths.

    Everything that can be checked (paths, chunk layout, checkpoint) is checked before sampling,
    so bad input writes nothing. With a process group `ctx` of several ranks (every rank calls
    this with the same arguments; `device` is then `ctx.device`), sampling is chunk-parallel
    (`vin.distributed.sampling`, the `vin` strategy only) and rank 0 writes the files; the other
    ranks return [].
    """
    out = Path(out)
    parallel = ctx is not None and ctx.world > 1
    if parallel:
        check_strategy(sample)
    device = ctx.device if parallel else device
    model, cfg, sample, checkpoint, layout = _prepare(sample, out, checkpoint, device, scale, use_global)
    main = not parallel or ctx.rank == 0
    procs = f", {ctx.world} processes" if parallel else ""
    bar = tqdm(total=progress_steps(sample, sample.chunk_frames),
               desc=f"{sample.strategy}: {sample.frames} frames, {len(layout)} window{'s' * (len(layout) > 1)}{procs}",
               disable=not (progress and main), dynamic_ncols=True)
    tick = lambda i, t: bar.update(1)  # noqa: E731
    frame_size = (cfg.data.height, cfg.data.width)
    traffic = None
    try:
        if parallel:
            stats = CommStats()
            video = sample_vin_distributed(model, prompts, sample, frame_size, ctx, tick, stats=stats)
            traffic = traffic_per_step(ctx, stats, sample)
        else:
            video = get_strategy(sample.strategy)(model, prompts, sample, frame_size, device, progress=tick)
    finally:
        bar.close()
    if not main:
        return []
    if traffic is not None and progress:
        print(f"traffic per step (all ranks, sent): read {traffic['read']} B, halo {traffic['halo']} B",
              file=sys.stderr)

    written = []
    every = max(1, sample.frames // 32)
    for prompt, path, clip in zip(prompts, output_paths(out, len(prompts)), video):
        frames = to_uint8(clip.float().cpu())
        written.append(write_video(path, frames, fps=cfg.data.fps, scale=scale))
        if strip:
            written.append(frame_strip(frames, path.with_suffix(".png"), boundaries=boundaries(layout),
                                       every=every, scale=4, title=prompt[:100]))
    record = {"checkpoint": str(checkpoint), "prompts": prompts, "strategy": sample.strategy,
              "use_global": sample.global_tokens != "none",
              "layout": [list(w) for w in layout], "sample": asdict(sample), "model_config": cfg.to_dict()}
    if parallel:
        record["distributed"] = {"processes": ctx.world, "bytes_per_step": traffic}
    meta = out.with_suffix(".json")
    atomic_write_text(meta, json.dumps(record, indent=2))
    return written + [meta]


def traffic_per_step(ctx: DistContext, stats: CommStats, sample: SampleConfig) -> dict[str, int]:
    """Bytes sent per solver step summed over the ranks, by kind ("read", "halo"; the one-off
    final "gather" in total)."""
    kinds = ("read", "halo", "gather")
    total = torch.tensor([stats.bytes.get(k, 0) for k in kinds], dtype=torch.float64)
    with collective(ctx, "traffic statistics"):
        torch.distributed.all_reduce(total, group=ctx.group)
    per = {k: int(v) for k, v in zip(kinds, total.tolist())}
    return {"read": per["read"] // sample.steps, "halo": per["halo"] // sample.steps, "gather_total": per["gather"]}


def _generate_worker(ctx: DistContext, kwargs: dict) -> list[Path]:
    return generate(ctx=ctx, **kwargs)


def generate_multiprocess(procs: int, prompts: list[str], sample: SampleConfig, out: str | Path,
                          checkpoint: str | Path | None = None, device: str = "cpu", use_global: bool = True,
                          strip: bool = True, scale: int = 8, progress: bool = True, threads: int = 0) -> list[Path]:
    """`generate` on `procs` spawned local processes (gloo on CPU, nccl with one GPU each; the
    `vin` strategy only when procs > 1).

    Input is checked here first, so bad input fails before any process starts.
    """
    if procs > 1:
        check_strategy(sample)
    _prepare(sample, Path(out), checkpoint, "cpu", scale, use_global)
    kwargs = dict(prompts=prompts, sample=sample, out=out, checkpoint=checkpoint, device=device,
                  use_global=use_global, strip=strip, scale=scale, progress=progress)
    if procs == 1:
        return generate(**kwargs)
    return run_local(_generate_worker, procs, kwargs, device=device, threads=threads)
