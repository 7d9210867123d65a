"""The training loop: synthetic long videos of mixed lengths, AdamW, EMA, JSONL log, checkpoints, resume.

A run lives in one directory: `config.json` (the resolved config), `log.jsonl` (one line per
`log_every` steps), `checkpoints/step-XXXXXXX.safetensors` (the newest `keep_checkpoints`), and for
a run started with `resume_from`, `forked_from.json` (the source checkpoint and its step); `vin.training.rundir`
checks and prepares it.
Every step draws its randomness from a generator seeded by (seed, step) and its data from batch
index `step`, so a resumed run continues exactly as if it had not stopped.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from vin.config import Config, ModelConfig, TrainConfig
from vin.data.prefetch import Mapped, prefetch
from vin.data.synthetic import SyntheticVideoStream
from vin.fileio import atomic_write_text
from vin.models.vin import VINModel, parameter_count
from vin.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, read_metadata, save_checkpoint
from vin.training.objective import StepDraws, draw_step, training_loss
from vin.training.rundir import check_run_dir, checkpoints, first_diff, note_fork, start_fork, truncate_log
from vin.training.stopping import StopRequest

if TYPE_CHECKING:  # the context type only; training does not depend on vin.distributed
    from vin.distributed.group import DistContext

MAX_UNREAD = 1024  # steps whose loss may wait on the device between two reads (between records)


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


@torch.no_grad()
def compile_blocks(model: nn.Module, device: str | torch.device = "cpu") -> int:
    """`torch.compile` each repeated block in place (the members of every `nn.ModuleList`):
    regional compilation, as recommended for transformers — the blocks share one compiled graph,
    compiling takes seconds to minutes instead of a whole-model compile, and parameter names
    (checkpoints, the EMA copy, DDP) are unchanged. Returns the number of blocks compiled."""
    if torch.device(device).type == "cpu":
        import torch._inductor.config as inductor

        cxx = inductor.cpp.cxx[-1] if isinstance(inductor.cpp.cxx, tuple) else inductor.cpp.cxx
        if not shutil.which(os.environ.get("CXX") or cxx or "g++"):
            raise ValueError("train.compile on the CPU needs a C++ compiler (g++ or $CXX); install one or "
                             "leave train.compile off")
    blocks = [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]
    for block in blocks:
        block.compile()
    return len(blocks)


def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for all parameters in one foreach call (a few
    kernels on a GPU, not one per parameter)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)


class _Loss(nn.Module):
    """The objective as a module, so that DistributedDataParallel sees one forward per step."""

    def __init__(self, model: VINModel, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, video: Tensor, captions: list[str], draws: StepDraws,
                rows: tuple[int, int, int] | None) -> Tensor:
        return training_loss(self.model, video, captions, self.cfg, draws, rows)[0]


def training_batches(cfg: Config, start: int, workers: int = 0, pin_memory: bool = False,
                     rows: tuple[int, int] | None = None) -> Iterator[tuple[int, Tensor, list[str], StepDraws]]:
    """What `train` trains on from step `start`: (step, videos, captions, the step's draws), rendered
    and drawn by `workers` processes ahead of the loop (0: in it); `rows`: a data-parallel process's
    rows (lo, hi) of every batch."""
    tc = cfg.train
    videos = SyntheticVideoStream(cfg.data, tc.seed, tc.batch_size, training_lengths(cfg), start_index=start, rows=rows)
    lo, hi = rows or (0, tc.batch_size)
    return prefetch(Mapped(videos, _WithDraws(tc, (lo, hi, tc.batch_size))), workers, pin_memory=pin_memory)


class _WithDraws:
    """A batch (index, video, captions) -> (index, video, captions, the draws of step `index`):
    run where the batch is rendered (`vin.data.prefetch`), so a data worker draws the step's noise
    too. Exactly what `training_loss` would draw from `step_generator(seed, index)`."""

    def __init__(self, tc: TrainConfig, rows: tuple[int, int, int]):
        self.tc, self.rows = tc, rows

    def __call__(self, batch: tuple[int, Tensor, list[str]]) -> tuple[int, Tensor, list[str], StepDraws]:
        index, video, captions = batch
        return index, video, captions, draw_step(step_generator(self.tc.seed, index), self.tc, tuple(video.shape[1:]), self.rows)


def batch_rows(batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of every global batch that process `rank` of `world` trains on."""
    if batch_size < world:
        raise ValueError(f"train.batch_size ({batch_size}) must be at least the number of processes ({world})")
    return batch_size * rank // world, batch_size * (rank + 1) // world


def train(cfg: Config, run_dir: str | Path, resume: bool = False, device: str = "cpu",
          progress: bool = True, ctx: "DistContext | None" = None,
          resume_from: str | Path | None = None) -> dict[str, float]:
    """Train until `cfg.train.steps`; returns the last logged statistics.

    Data-parallel with `ctx` (a `vin.distributed.group.DistContext` of several processes; every
    process calls this; `device` is then `ctx.device`): `train.batch_size` stays the *global*
    batch. Process r trains on rows [B r / P, B (r + 1) / P) of every batch, with the randomness
    of the whole batch sliced the same way, and its loss weighted by its share of the rows, so the
    gradient DDP averages is the gradient of the one-process loss: P processes follow the run of
    one process (up to float rounding), and a run can resume on any process count. Rank 0 logs
    and writes the (atomic) checkpoints.

    In one process the loss stays on the device and is read only when a log record or checkpoint
    is due (and at least every MAX_UNREAD steps), in one go; nothing else in a step is meant to wait
    for a GPU (batches come through pinned memory, `vin.devices`), so the host can queue the next
    step while the GPU runs this one (a CUDA-only test checks that no step synchronises, and that
    the batches are pinned). A non-finite loss raises a FloatingPointError that names its step at
    that read, before anything is logged or saved; the steps in between have trained on (computing
    wasted, nothing written). Under DDP every step's loss is all-reduced and read with the ranks' stop flags.

    SIGINT or SIGTERM (`vin.training.stopping`) ends the run after the current step (under DDP
    possibly the next) with a checkpoint and a log record of that step (`"stopped": true` when no
    record was due there); the returned stats then name the signal (`stopped_by`), and
    `resume=True` continues with the weights and per-step losses of a run that never stopped.

    `resume_from` (a training checkpoint, e.g. a constant-rate step of another run) starts
    `run_dir` as that run would have gone on from there: weights, EMA, optimizer state, step and
    schedule, and the source run's log records up to that step when the checkpoint sits in a run
    directory. With the source run's train and data settings (a note names any other than the
    schedule's end) the same steps follow as in the source run (the data and noise are the
    step's), so a cool-down can branch off a long constant-rate run without the re-warm of
    train.init_from, which is ignored here as under `resume`.
    """
    run_dir = Path(run_dir)
    tc = cfg.train
    parallel = ctx is not None and ctx.world > 1
    rank, world = (ctx.rank, ctx.world) if parallel else (0, 1)
    device = ctx.device if parallel else device
    main = rank == 0
    lo, hi = batch_rows(tc.batch_size, rank, world)
    existing = check_run_dir(cfg, run_dir, resume, resume_from)
    if parallel:  # every rank has checked the directory before rank 0 writes to it
        torch.distributed.barrier(ctx.group)
    resume = resume or resume_from is not None
    if tc.threads:
        torch.set_num_threads(tc.threads)
    # "auto" is resolved here, and the run's config.json and checkpoints record what it chose
    bf16 = use_bf16(tc.autocast_bf16, device)
    if main and tc.autocast_bf16 == "auto":
        print(f"vin: note: train.autocast_bf16=auto: {'bf16 autocast' if bf16 else 'float32'} on this {torch.device(device).type}",
              file=sys.stderr)
    elif main and bf16 and torch.device(device).type == "cpu" and not cpu_has_fast_bf16():
        print("vin train: warning: this CPU has no oneDNN bf16 kernels (they need AVX-512), so bf16 autocast is "
              "many times slower than float32 here; set train.autocast_bf16=false or auto", file=sys.stderr)
    if main and resume and checkpoint_config(existing[-1]).train.autocast_bf16 not in (bf16, "auto"):
        print(f"vin: note: {existing[-1].name} was trained {'in float32' if bf16 else 'under bf16 autocast'}; "
              f"this run goes on {'under bf16 autocast' if bf16 else 'in float32'}", file=sys.stderr)
    cfg = replace(cfg, train=replace(tc, autocast_bf16=bf16))
    tc = cfg.train
    if main and resume_from is not None:
        note_fork(Path(resume_from), cfg)

    model = build_model(cfg, device)
    ema = copy.deepcopy(model).requires_grad_(False) if main else None  # identical on every rank: keep one
    if tc.compile:
        compile_blocks(model, device)
    opt = torch.optim.AdamW(param_groups(model, tc), lr=tc.lr, betas=(0.9, 0.99))
    step, warm_start = _resume(existing[-1], model, ema, opt, tc, say=main) if resume else (0, 0)
    if not resume and tc.init_from:
        step = warm_start = _init_from(cfg, model, ema)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", cfg.to_json())
        if resume_from is not None:
            start_fork(Path(resume_from), run_dir, step)
        elif resume:
            truncate_log(run_dir / "log.jsonl", step)
        elif dropped := truncate_log(run_dir / "log.jsonl", step):  # a run that stopped before its first checkpoint
            print(f"vin: note: {run_dir / 'log.jsonl'} held {dropped} record(s) of a run that wrote no checkpoint; "
                  "this run starts it again and drops them", file=sys.stderr)

    stream = training_batches(cfg, step, tc.data_workers, pin_memory=torch.device(device).type == "cuda",
                              rows=(lo, hi) if parallel else None)
    loss_fn: nn.Module = _Loss(model, tc)
    if parallel:
        from torch.nn.parallel import DistributedDataParallel

        loss_fn = DistributedDataParallel(loss_fn, device_ids=[device] if device.type == "cuda" else None,
                                          process_group=ctx.group)
    # CPU autocast runs layer norms in bf16 against fp32 weights; torch warns it cannot fuse them.
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()
    bar = tqdm(total=tc.steps, initial=step, disable=not (progress and main), desc="train", dynamic_ncols=True)
    log_path, window, unread, stats = run_dir / "log.jsonl", [], [], {}
    t0, samples = time.perf_counter(), 0
    model.train()
    with StopRequest() as stop:
        while step < tc.steps:
            index, video, captions, draws = next(stream)
            if index != step:
                raise RuntimeError(f"data stream at batch {index}, training at step {step}")
            video = video.to(device, non_blocking=True)
            draws = draws._replace(t=draws.t.to(device, non_blocking=True), noise=draws.noise.to(device, non_blocking=True))
            lr = learning_rate(tc, step, warm_start)
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_mult"]
            with autocast:
                loss = loss_fn(video, captions, draws, (lo, hi, tc.batch_size) if parallel else None)
            share = (hi - lo) / tc.batch_size
            if parallel:  # every rank learns whether any was asked to stop, with the loss: all stop after the same step
                value, stopping = _global_loss(loss, share, ctx, stop.signum)
                _read_finite([value], step + 1)  # the same value on every rank: all stop together
            else:  # kept on the device: read (one host sync) only when a record or checkpoint is due
                value, stopping = loss.detach(), bool(stop.signum)
            opt.zero_grad(set_to_none=True)
            (loss * (share * world) if parallel else loss).backward()  # DDP averages over ranks
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
            opt.step()
            clamp_gates(model)
            step += 1
            if ema is not None:
                update_ema(ema, model, min(tc.ema_decay, (1 + step) / (10 + step)))
            unread.append(value)
            samples += tc.batch_size
            bar.update(1)
            if not parallel:  # a signal during this step's backward/update stops after it, not the next
                stopping = stopping or bool(stop.signum)
            stopping = stopping and step < tc.steps  # a signal in the last step: the run is finished anyway
            due = step % tc.log_every == 0 or step == tc.steps
            saving = step % tc.ckpt_every == 0 or step == tc.steps or stopping
            if due or saving or len(unread) >= MAX_UNREAD:  # never log or save after a non-finite loss
                window += _read_finite(unread, step)
                unread = []
            if main and (due or stopping):
                elapsed = time.perf_counter() - t0
                stats = {"step": step, "loss": float(np.mean(window)), "lr": lr, "grad_norm": float(grad_norm),
                         "samples_per_s": samples / elapsed, "wall_s": elapsed}
                if not due:  # the mean of the steps since the last record: fewer than log_every
                    stats["stopped"] = True
                with open(log_path, "a") as f:
                    f.write(json.dumps(stats) + "\n")
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
            if due or stopping:
                window = []
            if main and saving:
                _save(run_dir, cfg, model, ema, opt, step, warm_start, lr)
            if stopping:
                stats = {**stats, "step": step, "stopped_by": stop.name or "a signal to another process"}
                break
    bar.close()
    if parallel:  # every rank returns once rank 0's last checkpoint is on disk
        torch.distributed.barrier(ctx.group)
    return stats


def learning_rate(tc: TrainConfig, step: int, start: int = 0) -> float:
    """The learning rate of step `step` (0-based) of a run that began, or was warm-started, at `start`:
    a linear warm-up over train.warmup_steps, then train.lr_decay over the last train.decay_steps
    steps before train.steps (all of them after the warm-up when 0), reaching lr * train.lr_min_ratio
    at step train.steps (the step after the last one trained, as is usual)."""
    warm = min(1.0, (step - start + 1) / max(1, tc.warmup_steps))
    if tc.lr_decay == "constant":
        return tc.lr * warm
    begin = start + tc.warmup_steps
    if tc.decay_steps:
        begin = max(begin, tc.steps - tc.decay_steps)
    frac = min(1.0, max(0.0, (step - begin) / max(1, tc.steps - begin)))
    shape = 1.0 - frac if tc.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))
    return tc.lr * warm * (tc.lr_min_ratio + (1.0 - tc.lr_min_ratio) * shape)


def param_groups(model: nn.Module, tc: TrainConfig) -> list[dict]:
    """AdamW groups: the global-token gates (log-weights) at lr * gate_lr_mult without weight decay,
    everything else at lr with train.weight_decay. Empty groups are left out.

    The gradient of a shut gate scales with its weight exp(s) (~1e-16 at s = -27.6, ~1e-10 at the
    init -16): far below Adam's default eps 1e-8, which would freeze it (measured: warm-started gates
    at -27.6 did not move in 500 steps). The gate group uses eps 1e-30 so Adam's step is ~lr * sign.
    """
    named = list(model.named_parameters())
    gates = [p for n, p in named if n.endswith("gate_logits")]
    rest = [p for n, p in named if not n.endswith("gate_logits")]
    groups = [{"params": rest, "weight_decay": tc.weight_decay, "lr_mult": 1.0},
              {"params": gates, "weight_decay": 0.0, "lr_mult": tc.gate_lr_mult, "eps": 1e-30}]
    return [g for g in groups if g["params"]]


GATE_RANGE = (-30.0, 10.0)  # log-weights; -30 is shut in float32 (the old linear gate's 0 is -27.6)


def clamp_gates(model: nn.Module) -> None:
    """Keep the gate log-weights in GATE_RANGE. With Adam eps 1e-30, a gradient whose square
    underflows (a gate far below -40) would otherwise give a step of ~lr * g / 1e-30."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gate_logits"):
                p.clamp_(*GATE_RANGE)


def _resume(path: Path, model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer,
            tc: TrainConfig, say: bool = True) -> tuple[int, int]:
    """Load a checkpoint to continue; returns (step, the step the schedule counts from). The
    optimizer groups keep this run's settings (lr multiplier, weight decay, eps) whatever the
    checkpoint saved, so a changed train config takes effect.

    A run extended past the end of its learning-rate decay (a larger train.steps) would jump from
    the decayed rate straight back to the peak; when the schedule asks for more than twice the
    rate of the checkpoint's last step, the run warms up again from the resume step instead."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    meta = read_metadata(path)
    saved = json.loads(meta.get("optim_groups", "[]"))
    if saved and len(saved) != len(fresh):
        raise CheckpointError(f"{path} holds optimizer state for {len(saved)} parameter group(s), this version trains "
                              f"{len(fresh)} (the global-token gates have their own since the log-space gate); start a "
                              "new run with --train.init_from=<this checkpoint> instead")
    step = load_checkpoint(path, model, ema, opt)
    for group, settings in zip(opt.param_groups, fresh):
        group.update(settings)
    start = int(meta.get("start_step", 0))
    saved_lr = _saved_lr(meta, saved)
    if saved_lr is not None and step < tc.steps and learning_rate(tc, step, start) > 2 * saved_lr:
        if say:
            print(f"vin: note: {path.name} was trained at lr {saved_lr:.3g}, under half the rate this schedule asks for "
                  f"at its step (the end of a decay, or a lower train.lr); warming up again over {tc.warmup_steps} "
                  f"steps from step {step}", file=sys.stderr)
        start = step
    return step, start


def _saved_lr(meta: dict, groups: list[dict]) -> float | None:
    """The base learning rate of a checkpoint's last step: its `lr` metadata, or for checkpoints
    written before that existed, the rate of the first saved optimizer group over its lr_mult."""
    try:
        if "lr" in meta:
            return float(meta["lr"])
        group = groups[0] if groups else {}
        return float(group["lr"]) / float(group.get("lr_mult") or 1.0) if "lr" in group else None
    except (TypeError, ValueError, KeyError):  # only a hint for the warm-up: never a reason to fail a resume
        return None



def _read_finite(losses: list[Tensor] | list[float], step: int) -> list[float]:
    """The losses of the last `len(losses)` steps before `step` as floats, read from the device in
    one go (already floats under DDP); a FloatingPointError names the first step whose loss is not
    finite."""
    values = torch.stack(losses).tolist() if losses and isinstance(losses[0], Tensor) else list(losses)
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise FloatingPointError(f"loss became {v} at step {step - len(values) + i}; "
                                     "lower train.lr or enable train.grad_clip")
    return values


def _global_loss(loss: Tensor, share: float, ctx: "DistContext", stop: int = 0) -> tuple[float, bool]:
    """The loss of the whole global batch (this rank's loss weighted by its share, summed over
    ranks), and whether any rank was asked to stop (`stop` != 0), in one all-reduce."""
    value = torch.stack([loss.detach().float() * share, torch.tensor(float(bool(stop)), device=loss.device)])
    torch.distributed.all_reduce(value, group=ctx.group)
    total, stopping = value.tolist()  # one copy to the host
    return total, bool(stopping)


def _init_from(cfg: Config, model: nn.Module, ema: nn.Module | None) -> int:
    """Load `cfg.train.init_from` (its EMA weights) into model and EMA; returns its step."""
    src = Path(cfg.train.init_from)
    if not src.is_file():
        raise CheckpointError(f"train.init_from: no checkpoint at {src}")
    old = checkpoint_config(src)
    grown = _grown_modules(old.model, cfg.model)
    if old.model != cfg.model and grown is None:
        # past a refiner that could be grown, name the difference that blocks the start
        shown = _without_refiner(cfg.model) if old.model.dit.refine_width == 0 else cfg.model
        raise CheckpointError(f"train.init_from: {src} was trained with a different model config: {first_diff(old.model, shown)}")
    step = load_checkpoint(src, model, weights="ema", new_modules=grown or ())
    if ema is not None:
        ema.load_state_dict(model.state_dict())
    return step


def use_bf16(setting: bool | str, device: str | torch.device) -> bool:
    """Whether to train under bf16 autocast for `train.autocast_bf16` (true | false | "auto") on
    `device`. "auto": on a CUDA device with native bf16 (Ampere and later, or ROCm) and on a CPU with oneDNN bf16 kernels
    (`cpu_has_fast_bf16`); off elsewhere (an AVX2-only CPU, MPS)."""
    if setting != "auto":
        return bool(setting)
    dev = torch.device(device)
    if dev.type == "cuda":  # native bf16 from Ampere (compute capability 8) on; emulated, slow, before
        return bool(torch.version.hip) or torch.cuda.get_device_capability(dev)[0] >= 8
    return dev.type == "cpu" and cpu_has_fast_bf16()


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 and up; native bf16 units are faster
    still). Without them CPU bf16 matmuls fall back to a slow path: 56x slower than float32 on an
    AVX2-only machine (measured, torch 2.13). Where torch cannot tell, assume they are there."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else True
    except Exception:  # an op missing from this build raises RuntimeError or NotImplementedError
        return True


def _grown_modules(old: ModelConfig, new: ModelConfig) -> tuple[str, ...] | None:
    """The modules `new` adds to `old` that start as exact no-ops (a pixel refiner on a model
    without one), or None when the two differ otherwise."""
    if old.dit.refine_width == 0 and new.dit.refine_width > 0 and _without_refiner(new) == old:
        return ("dit.refine",)
    return None


def _without_refiner(m: ModelConfig) -> ModelConfig:
    """`m` with no pixel refiner (DiTConfig resets the refiner's other fields when its width is 0)."""
    return replace(m, dit=replace(m.dit, refine_width=0))


def _save(run_dir: Path, cfg: Config, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, step: int,
          start: int, lr: float) -> None:
    save_checkpoint(run_dir / "checkpoints" / f"step-{step:07d}.safetensors", cfg, model, ema, opt, step, start, lr)
    for old in checkpoints(run_dir)[:-cfg.train.keep_checkpoints]:
        old.unlink()



def describe(cfg: Config) -> str:
    m = build_model(cfg)
    return (f"{cfg.name}: {parameter_count(m) / 1e6:.2f}M parameters "
            f"(DiT {parameter_count(m.dit) / 1e6:.2f}M, interface "
            f"{0 if m.interface is None else parameter_count(m.interface) / 1e6:.2f}M)")


__all__ = ["train", "check_run_dir", "build_model", "training_lengths", "checkpoints", "describe", "replace"]
