"""Where a model loses the sprites: its clean-video estimate at fixed noise levels, and what it
makes when sampling starts from a partly noised real video (SDEdit).

    python scripts/denoise_grid.py "VIN 15000=src/vin/weights/vin-s.safetensors" --out docs/img/denoise.png

For held-out one-chunk sprite-world videos (8 frames) and each model, one row: the real frame;
the model's x0 estimate from the video noised to each t of `--t`; then the frame sampled by Euler
steps from the noised video at each t down to 0 (t = 1 is plain generation from noise, with the
real video's caption). Same videos, noise and frame for every model. A model whose x0 estimate is
blurred at t = 0.5, where the noisy input still shows the sprite's edges, has a weak denoiser, not
a long-video problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vin.checkpoint import CheckpointError, checkpoint_config  # noqa: E402
from vin.data.synthetic import make_batch  # noqa: E402
from vin.diffusion.flow import interpolate, sample_ode  # noqa: E402
from vin.generate import load_model  # noqa: E402


def _frame(video: torch.Tensor, index: int):
    """(C, F, H, W) in [-1, 1] -> (H, W, C) in [0, 1] of frame `index`."""
    return ((video[:, index].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def model_row(path: str, video: torch.Tensor, captions: list[str], noise: torch.Tensor, ts: list[float],
              steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """x0 estimates at each t and SDEdit samples from each t (and t = 1), each (B, C, F, H, W)."""
    model, _ = load_model(path)
    text = model.encode_text(captions)

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t)
        return model.denoise_chunks(x[:, None], tt, text, model.read(x, tt, text))[:, 0]

    estimates, samples = [], []
    with torch.no_grad():
        for t in ts:
            x_t = interpolate(video, noise, torch.full((video.shape[0],), t))
            estimates.append(x_t - t * velocity(x_t, t))
        for t in sample_starts(ts):
            x_t = interpolate(video, noise, torch.full((video.shape[0],), t))
            n = max(2, round(steps * t))
            samples.append(sample_ode(velocity, x_t, torch.linspace(t, 0.0, n + 1)))
    return estimates, samples


def sample_starts(ts: list[float]) -> list[float]:
    """The t of each sampling column: those of `ts`, then plain generation (t = 1) unless already there."""
    return [*ts] if 1.0 in ts else [*ts, 1.0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="LABEL=CHECKPOINT")
    p.add_argument("--t", type=float, nargs="+", default=[0.5, 0.7, 0.85, 0.95])
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--seed", type=int, default=999, help="held-out data stream (training uses seed 0)")
    p.add_argument("--frame", type=int, default=3, help="which of the 8 frames to show")
    p.add_argument("--steps", type=int, default=25, help="Euler steps for a full trajectory (t = 1 to 0)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    specs = [m.partition("=") for m in args.models]
    for label, _, path in specs:
        if not path or not Path(path).is_file():
            print(f"denoise_grid: error: {label!r} is not LABEL=CHECKPOINT of an existing file", file=sys.stderr)
            return 2
    try:
        cfg = checkpoint_config(specs[0][2])
        video, captions, _ = make_batch(args.seed, 0, args.videos, cfg.model.chunk_frames, cfg.data)
        noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(args.seed))
        rows = [(label, *model_row(path, video, captions, noise, args.t, args.steps)) for label, _, path in specs]
    except CheckpointError as e:
        print(f"denoise_grid: error: {e}", file=sys.stderr)
        return 2

    heads = ["data"] + [f"x0 at t={t:g}" for t in args.t] + [f"from t={t:g}" for t in sample_starts(args.t)]
    n_rows, n_cols = args.videos * len(rows), len(heads)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.2 * n_cols + 1.6, 1.3 * n_rows + 0.3), squeeze=False)
    for v in range(args.videos):
        for m, (label, estimates, samples) in enumerate(rows):
            r = v * len(rows) + m
            images = [video[v]] + [e[v] for e in estimates] + [s[v] for s in samples]
            for c, image in enumerate(images):
                ax = axes[r, c]
                ax.imshow(_frame(image, args.frame), interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(heads[c], fontsize=7)
            axes[r, 0].set_ylabel(f"#{v} {label}", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"frame {args.frame} of held-out one-chunk videos (seed {args.seed}); x0 estimates, then Euler "
                 f"sampling from the noised video", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    for v, caption in enumerate(captions):
        print(f"#{v}: {caption}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
