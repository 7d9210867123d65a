"""Load a checkpoint and write long videos: the library function behind `vin generate`."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from vin.checkpoint import CheckpointError, checkpoint_config, load_checkpoint
from vin.config import Config, SampleConfig
from vin.data.video_io import VIDEO_SUFFIXES, frame_strip, to_uint8, write_video
from vin.fileio import atomic_write_text
from vin.models.vin import VINModel
from vin.sampling.chunking import boundaries
from vin.sampling.strategies import get_strategy, progress_steps, strategy_layout

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_CHECKPOINT = PACKAGE_WEIGHTS / "vin-s.safetensors"
DEFAULT_PROMPT = "a large red circle and a small white square on a blue striped background"


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[VINModel, Config]:
    """Model (EMA weights when the file has them) in eval mode, and the config it was trained with."""
    cfg = checkpoint_config(path)
    model = VINModel(cfg.model)
    load_checkpoint(path, model, weights="ema")
    return model.to(device).eval(), cfg


def output_paths(out: Path, count: int) -> list[Path]:
    return [out] if count == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def generate(prompts: list[str], sample: SampleConfig, out: str | Path, checkpoint: str | Path | None = None,
             device: str = "cpu", use_global: bool = True, strip: bool = True, scale: int = 8,
             progress: bool = True) -> list[Path]:
    """Generate one video per prompt with the strategy `sample.strategy`; writes the video(s),
    `<out>.json` (resolved config, strategy included) and optionally `<out>.png` (a frame strip
    with chunk boundaries marked). A prompt may be a schedule "a; b; c" (one prompt per chunk, for
    the chunked strategies). `use_global=False` is `sample.global_tokens="none"`. Returns the
    written paths.

    Everything that can be checked (paths, chunk layout, checkpoint) is checked before sampling,
    so bad input writes nothing.
    """
    out = Path(out)
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
    sampler = get_strategy(sample.strategy)
    layout = strategy_layout(sample, F)
    if F % cfg.model.dit.patch_t:
        raise ValueError(f"chunk_frames ({F}) must be divisible by the model's temporal patch ({cfg.model.dit.patch_t})")

    bar = tqdm(total=progress_steps(sample, F),
               desc=f"{sample.strategy}: {sample.frames} frames, {len(layout)} window{'s' * (len(layout) > 1)}",
               disable=not progress, dynamic_ncols=True)
    try:
        video = sampler(model, prompts, sample, (cfg.data.height, cfg.data.width), device,
                        progress=lambda i, t: bar.update(1))
    finally:
        bar.close()

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
    meta = out.with_suffix(".json")
    atomic_write_text(meta, json.dumps(record, indent=2))
    return written + [meta]
