"""Can the model represent clean sprites at all? Fine-tune a checkpoint on one fixed batch and watch
its clean-video estimate of *those* videos sharpen (or not).

    python scripts/overfit_probe.py src/vin/weights/vin-s.safetensors --steps 200 --out outputs/overfit.png

The objective is the training one (random t, noise and caption dropout every step) on the same
`--videos` held-out videos (batch 0 of seed 999, 2 chunks) every step. Every `--every` steps it
prints the x0 error of those videos at fixed t and fixed noise. If the estimates of videos the
model has seen hundreds of times stay blurred, the blur is a limit of the model (its capacity or
parametrisation); if they turn sharp quickly, the model can draw the sprites and what it lacks is
training on enough of the world. The figure shows frame 3 of each video: the data, then the x0
estimate at each t before and after.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from vin.checkpoint import CheckpointError, load_model, read_metadata
from vin.data.synthetic import make_batch
from vin.diffusion.flow import interpolate
from vin.training.objective import training_loss
from vin.training.trainer import step_generator, training_lengths


def estimates(model, video, captions, noise, ts: list[float]) -> list[torch.Tensor]:
    """x0 estimates x_t - t v of `video` noised with `noise` to each t (eval mode, no grad)."""
    model.eval()
    out = []
    with torch.no_grad():
        text = model.encode_text(captions)
        for t in ts:
            tt = torch.full((video.shape[0],), t)
            x_t = interpolate(video, noise, tt)
            z = model.read(x_t, tt, text)
            F = model.cfg.chunk_frames
            chunk = x_t[:, :, :F]  # the first chunk, where the figure's frame is
            v = model.denoise_chunks(chunk[:, None], tt, text, z)[:, 0]
            out.append((chunk - t * v).clamp(-1, 1))
    model.train()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--t", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="outputs/overfit.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        model, cfg = load_model(args.checkpoint)
    except CheckpointError as e:  # a missing or unreadable file: one line
        print(f"overfit_probe: error: {e}", file=sys.stderr)
        return 2
    model.train()
    step0 = int(read_metadata(args.checkpoint).get("step", 0))
    n = training_lengths(cfg)[0]  # two chunks
    video, captions, _ = make_batch(999, 0, args.videos, n, cfg.data)
    noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(1))
    F = cfg.model.chunk_frames
    before = estimates(model, video, captions, noise, args.t)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss, _ = training_loss(model, video, captions, cfg.train, step_generator(123, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0 or step == args.steps:
            errs = [((e - video[:, :, :F]) ** 2).mean().item() for e in estimates(model, video, captions, noise, args.t)]
            cells = ", ".join(f"t={t}: {e:.4f}" for t, e in zip(args.t, errs))
            print(f"step {step} (from {step0}): loss {loss.item():.4f}; x0 error on the fixed videos {cells}; "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    after = estimates(model, video, captions, noise, args.t)
    errs0 = [((e - video[:, :, :F]) ** 2).mean().item() for e in before]
    print("x0 error before: " + ", ".join(f"t={t}: {e:.4f}" for t, e in zip(args.t, errs0)))
    _figure(video[:, :, :F], before, after, args.t, args.steps, args.out)
    print(args.out)
    return 0


def _figure(video, before, after, ts, steps, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vin.fileio import atomic_path

    def img(x, i):
        return ((x[i, :, 3].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy()

    cols = 1 + 2 * len(ts)
    rows = video.shape[0]
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.35 * rows + 0.4), squeeze=False)
    titles = ["data"] + [f"t={t} before" for t in ts] + [f"t={t} after {steps}" for t in ts]
    for i in range(rows):
        for j, x in enumerate([video] + list(before) + list(after)):
            ax = axes[i, j]
            ax.imshow(img(x, i), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=7)
    fig.suptitle("x0 estimates of the fine-tuned-on videos (frame 3), before and after fine-tuning on them", fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
