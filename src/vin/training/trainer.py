"""The training loop: synthetic long videos of mixed lengths, AdamW, EMA, JSONL log, checkpoints, resume.

A run lives in one directory: `config.json` (the resolved config), `log.jsonl` (one line per
`log_every` steps), `checkpoints/step-XXXXXXX.safetensors` (the newest `keep_checkpoints`).
Every step draws its randomness from a generator seeded by (seed, step) and its data from batch
index `step`, so a resumed run continues exactly as if it had not stopped.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vin.config import Config
from vin.data.synthetic import SyntheticVideoStream
from vin.fileio import atomic_write_text
from vin.models.vin import VINModel, parameter_count
from vin.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, save_checkpoint
from vin.training.objective import training_loss


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def build_model(cfg: Config, device: str | torch.device = "cpu") -> VINModel:
    """The model, initialised from `cfg.train.seed` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return VINModel(cfg.model).to(device)


def training_lengths(cfg: Config) -> tuple[int, ...]:
    F, K = cfg.model.chunk_frames, cfg.train.context_frames
    return tuple(n * (F - K) + K for n in cfg.train.chunks)


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step-*.safetensors"))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def check_run_dir(cfg: Config, run_dir: str | Path, resume: bool) -> list[Path]:
    """The run directory's checkpoints, after checking that `train` may start there: no
    checkpoints unless resuming, and when resuming, ones of the same model config."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is a file, not a run directory")
    existing = checkpoints(run_dir)
    if resume and not existing:
        raise CheckpointError(f"nothing to resume: no checkpoints in {run_dir / 'checkpoints'}")
    if not resume and existing:
        raise CheckpointError(f"{run_dir} already holds checkpoints; pass --resume or choose another --out")
    if resume:
        old = checkpoint_config(existing[-1])
        if old.model != cfg.model:
            raise CheckpointError(f"{existing[-1]} was trained with a different model config: {_first_diff(old.model, cfg.model)}")
    return existing


def train(cfg: Config, run_dir: str | Path, resume: bool = False, device: str = "cpu",
          progress: bool = True) -> dict[str, float]:
    """Train until `cfg.train.steps`; returns the last logged statistics."""
    run_dir = Path(run_dir)
    tc = cfg.train
    existing = check_run_dir(cfg, run_dir, resume)
    if tc.threads:
        torch.set_num_threads(tc.threads)

    model = build_model(cfg, device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.99))
    step = load_checkpoint(existing[-1], model, ema, opt) if resume else 0
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", cfg.to_json())

    stream = iter(SyntheticVideoStream(cfg.data, tc.seed, tc.batch_size, training_lengths(cfg), start_index=step))
    # CPU autocast runs layer norms in bf16 against fp32 weights; torch warns it cannot fuse them.
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if tc.autocast_bf16 else nullcontext()
    bar = tqdm(total=tc.steps, initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    log_path, window, stats = run_dir / "log.jsonl", [], {}
    t0, samples = time.perf_counter(), 0
    model.train()
    while step < tc.steps:
        _, video, captions = next(stream)
        video = video.to(device)
        lr = tc.lr * min(1.0, (step + 1) / max(1, tc.warmup_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast:
            loss, _ = training_loss(model, video, captions, tc, step_generator(tc.seed, step))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower train.lr or enable train.grad_clip")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        opt.step()
        step += 1
        update_ema(ema, model, min(tc.ema_decay, (1 + step) / (10 + step)))
        window.append(loss.item())
        samples += video.shape[0]
        bar.update(1)
        if step % tc.log_every == 0 or step == tc.steps:
            elapsed = time.perf_counter() - t0
            stats = {"step": step, "loss": float(np.mean(window)), "lr": lr, "grad_norm": float(grad_norm),
                     "samples_per_s": samples / elapsed, "wall_s": elapsed}
            with open(log_path, "a") as f:
                f.write(json.dumps(stats) + "\n")
            bar.set_postfix(loss=f"{stats['loss']:.4f}")
            window = []
        if step % tc.ckpt_every == 0 or step == tc.steps:
            _save(run_dir, cfg, model, ema, opt, step)
    bar.close()
    return stats


def _save(run_dir: Path, cfg: Config, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    save_checkpoint(run_dir / "checkpoints" / f"step-{step:07d}.safetensors", cfg, model, ema, opt, step)
    for old in checkpoints(run_dir)[:-cfg.train.keep_checkpoints]:
        old.unlink()


def _first_diff(a, b, where: str = "model") -> str:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            if hasattr(x, "__dataclass_fields__"):
                return _first_diff(x, y, f"{where}.{name}")
            return f"{where}.{name} {x!r} != {y!r}"
    return "(no difference)"


def describe(cfg: Config) -> str:
    m = build_model(cfg)
    return (f"{cfg.name}: {parameter_count(m) / 1e6:.2f}M parameters "
            f"(DiT {parameter_count(m.dit) / 1e6:.2f}M, interface "
            f"{0 if m.interface is None else parameter_count(m.interface) / 1e6:.2f}M)")


__all__ = ["train", "check_run_dir", "build_model", "training_lengths", "checkpoints", "describe", "replace"]
