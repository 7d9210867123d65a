"""`vin bench --train CONFIG`: the time of a training step, eager against `torch.compile`.

Every mode trains the same model (the config's, from its seed) on the same batches with the same
randomness, each in a fresh spawned process with the same number of torch threads, so the rows of
one bench are comparable and their losses must agree:
- warm-up: one step at each training length (`train.chunks`), not timed for speed — the compiled
  mode compiles here (and recompiles for each new length), so its warm-up is the compile cost;
- measured: the next `steps` steps of the config's data stream (its mix of lengths), each timed
  from batch to finished optimizer step; s/step is their mean, videos/s the batch over it;
- loss agreement: the largest relative difference of any step's loss from the first mode's.
Only the training step is measured (forward, backward, AdamW, the gate clamp), not the EMA,
logging or checkpoints of `vin train`.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import torch

from vin.config import Config

MODES = ("eager", "compile")


def _run_mode(cfg: Config, mode: str, steps: int, device: str, threads: int) -> dict:
    """In a fresh process: warm up at every training length, then time `steps` steps."""
    import warnings
    from contextlib import nullcontext

    from vin.data.synthetic import SyntheticVideoStream, make_batch
    from vin.training.objective import training_loss
    from vin.training.trainer import (build_model, clamp_gates, compile_blocks, param_groups, step_generator,
                                      training_lengths, use_bf16)

    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    torch.set_num_threads(threads)
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(cfg, device)
    if mode == "compile":
        compile_blocks(model, device)
    opt = torch.optim.AdamW(param_groups(model, tc), lr=tc.lr, betas=(0.9, 0.99))
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if use_bf16(tc.autocast_bf16, device) else nullcontext()
    cuda = torch.device(device).type == "cuda"

    def step(video, captions, seed_step: int, seed: int = tc.seed) -> float:
        video = video.to(device)
        with autocast:
            loss, _ = training_loss(model, video, captions, tc, step_generator(seed, seed_step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clamp_gates(model)
        return loss.item()  # synchronises a GPU

    lengths = training_lengths(cfg)
    t0 = time.perf_counter()
    for i, n in enumerate(lengths):
        video, captions, _ = make_batch(tc.seed + 1, i, tc.batch_size, n, cfg.data)
        step(video, captions, i, tc.seed + 1)
    warmup = time.perf_counter() - t0

    stream = iter(SyntheticVideoStream(cfg.data, tc.seed, tc.batch_size, lengths))
    times, losses, frames = [], [], 0
    for s in range(steps):
        _, video, captions = next(stream)
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        losses.append(step(video, captions, s))
        times.append(time.perf_counter() - t0)
        frames += video.shape[0] * video.shape[2]
    total = sum(times)
    return {"mode": mode, "warmup_s": warmup, "s_per_step": total / steps, "videos_per_s": steps * tc.batch_size / total,
            "frames_per_s": frames / total, "step_s": times, "losses": losses}


def _in_fresh_process(*args) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_run_mode, *args).result()


def bench_training(cfg: Config, modes: list[str], steps: int, device: str = "cpu", threads: int = 1,
                   progress=None) -> dict:
    """Rows of `_run_mode` for each mode, plus `speedup` (the first mode's s/step over this one's)
    and `max_loss_rel_diff` (against the first mode's per-step losses)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"unknown training bench mode(s) {unknown}; choose from {', '.join(MODES)}")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1 for the training bench, got {steps}")
    from vin.training.trainer import use_bf16

    cfg = replace(cfg, train=replace(cfg.train, compile=False))  # the mode decides
    rows = []
    for mode in modes:
        if progress:
            progress(f"{mode}: warm-up at {len(set(cfg.train.chunks))} length(s), then {steps} steps")
        rows.append(_in_fresh_process(cfg, mode, steps, device, threads))
    base = rows[0]
    for r in rows:
        r["speedup"] = base["s_per_step"] / r["s_per_step"]
        r["max_loss_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(r["losses"], base["losses"]))
    return {"config": cfg.name, "batch_size": cfg.train.batch_size, "autocast_bf16": use_bf16(cfg.train.autocast_bf16, device),
            "chunks": list(cfg.train.chunks), "steps": steps, "threads": threads, "device": str(device),
            "torch": torch.__version__, "rows": rows}


def format_training_table(record: dict) -> str:
    head = (f"training steps of {record['config']} (batch {record['batch_size']}, chunks {record['chunks']}, "
            f"bf16 autocast {'on' if record['autocast_bf16'] else 'off'}), {record['steps']} measured steps, "
            f"{record['threads']} thread(s), {record['device']}, torch {record['torch']}")
    lines = [head, "", "| mode | warm-up (s) | s/step | videos/s | frames/s | speed-up | max loss rel. diff |",
             "|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['mode']} | {r['warmup_s']:.1f} | {r['s_per_step']:.3f} | {r['videos_per_s']:.2f} | "
                     f"{r['frames_per_s']:.0f} | {r['speedup']:.2f}x | {r['max_loss_rel_diff']:.1e} |")
    return "\n".join(lines)
