"""Check a device's training and sampling path against the CPU before spending device time on it.

    python scripts/device_check.py --device cuda src/vin/weights/vin-s.safetensors checkpoints/vin-s-noglobal.safetensors

For each checkpoint (exported weights or a training checkpoint):
- prediction: the model's velocity for the same noisy video, timesteps and captions on the CPU and
  on the device (float32, eval) must agree to `--tol` of the output's scale;
- training step: the objective on one batch (the checkpoint's own config, its randomness drawn on
  the CPU as in training) must agree in float32, and under bf16 autocast (`--bf16`) one step
  forward, backward and AdamW on the device must give a finite loss and finite gradients;
then, once: batches and noise from data workers in pinned memory (`--workers`) are the loop's.
All checkpoints must be at the same step (the budgets of the runs that start from them are
compared). Prints one line per check; exits 0 when all pass, 1 otherwise (each failure named).
Used by scripts/gpu_train.sh (which runs it from src/ without installing vin).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shutil
import sys
import warnings
from contextlib import nullcontext
from dataclasses import replace

import torch

from vin.checkpoint import checkpoint_config, load_model, read_metadata
from vin.data.synthetic import make_batch
from vin.training.objective import training_loss
from vin.training.trainer import step_generator, training_batches, training_lengths

CAPTIONS = ["a red circle on a blue striped background", ""]


def agree(reference: torch.Tensor, other: torch.Tensor, tol: float) -> tuple[float, float, bool]:
    """(max |reference - other|, scale = max(max |reference|, 1), whether the error is within tol * scale)."""
    err = (reference.float() - other.float()).abs().max().item()
    scale = max(reference.float().abs().max().item(), 1.0)
    return err, scale, err <= tol * scale


def predict(path: str, device: str) -> torch.Tensor:
    """The velocity of two overlapping chunks of a fixed random video (float32, eval), on the CPU."""
    model, cfg = load_model(path, device)
    F = cfg.model.chunk_frames
    x = torch.randn(2, cfg.model.channels, 2 * F - 2, cfg.data.height, cfg.data.width,
                    generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.tensor([0.3, 0.9], device=device)
    with torch.no_grad():
        text = model.encode_text(CAPTIONS)
        z = model.read(x, t, text)  # the global tokens (None for the no-global ablation)
        chunks = torch.stack([x[:, :, :F], x[:, :, -F:]], dim=1)
        return model.denoise_chunks(chunks, t, text, z).float().cpu()


def train_step(path: str, device: str, bf16: bool) -> tuple[float, bool]:
    """One training step of the checkpoint's config on batch 0 (batch size 2): (loss, all finite)."""
    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")  # as vin train
    model, cfg = load_model(path, device)
    model.train()
    video, captions, _ = make_batch(cfg.train.seed, 0, 2, training_lengths(cfg)[0], cfg.data)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        loss, _ = training_loss(model, video.to(device), captions, cfg.train, step_generator(cfg.train.seed, 0))
    loss.backward()
    finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    opt.step()
    finite = finite and all(bool(torch.isfinite(p).all()) for p in model.parameters())
    return loss.item(), finite and bool(torch.isfinite(loss))


def check(paths: list[str], device: str, bf16: bool, workers: int, tol: float) -> list[str]:
    """Run every check, print a line for each; returns the failures (empty: all passed)."""
    failures = []
    steps = {path: int(read_metadata(path).get("step", 0)) for path in paths}
    print(f"steps: {steps}")
    if len(set(steps.values())) > 1:
        failures.append(f"the checkpoints are at different steps: {steps}")
    for path in paths:
        err, scale, ok = agree(predict(path, "cpu"), predict(path, device), tol)
        print(f"{path}: prediction, max |cpu - {device}| = {err:.2e} (scale {scale:.2f}) {'ok' if ok else 'FAILED'}")
        if not ok:
            failures.append(f"{path}: the {device} prediction differs from the CPU's by {err:.2e}")
        ref, _ = train_step(path, "cpu", False)
        loss, finite = train_step(path, device, False)
        err, scale, ok = agree(torch.tensor(ref), torch.tensor(loss), tol)
        print(f"{path}: training loss float32 cpu {ref:.6f}, {device} {loss:.6f} {'ok' if ok and finite else 'FAILED'}")
        if not (ok and finite):
            failures.append(f"{path}: the float32 training step on {device} gives loss {loss} against {ref} on the CPU")
        if bf16:
            loss, finite = train_step(path, device, True)
            print(f"{path}: training step under bf16 autocast on {device}: loss {loss:.6f} {'ok' if finite else 'FAILED'}")
            if not finite:
                failures.append(f"{path}: the bf16 training step on {device} is not finite")
    if workers:
        cfg = checkpoint_config(paths[0])
        cfg = replace(cfg, train=replace(cfg.train, batch_size=4))
        pin = torch.device(device).type == "cuda"

        def on_device(x: torch.Tensor) -> torch.Tensor:  # as the trainer copies them, and back
            return x.to(device, non_blocking=True).cpu()

        same = all(i == j and c == d and torch.equal(v, on_device(w)) and a.drop == tuple(b.drop)
                   and torch.equal(a.t, on_device(b.t)) and torch.equal(a.noise, on_device(b.noise))
                   for (i, v, c, a), (j, w, d, b) in zip(itertools.islice(training_batches(cfg, 0), 4),
                                                         itertools.islice(training_batches(cfg, 0, workers, pin), 4)))
        print(f"data workers ({workers}, pinned memory {pin}): {'the same batches and noise' if same else 'FAILED'}")
        if not same:
            failures.append("batches or noise from the data workers differ from the loop's")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--device", default="cuda")
    p.add_argument("--bf16", action="store_true", help="also a training step under bf16 autocast")
    p.add_argument("--workers", type=int, default=2, help="data workers to check (0: skip)")
    p.add_argument("--tol", type=float, default=1e-2, help="allowed difference, relative to the output's scale")
    args = p.parse_args(argv)
    shm = shutil.disk_usage("/dev/shm").free / 2**30 if os.path.isdir("/dev/shm") else float("nan")
    print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, "
          f"available {torch.cuda.is_available()}"
          f"{', ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}; /dev/shm free {shm:.1f} GiB")
    failures = check(args.checkpoints, args.device, args.bf16, args.workers, args.tol)
    for f in failures:
        print(f"device_check: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
