"""Denoising error by noise level: where do the caption and the global tokens help?

For each checkpoint and each fixed t, the x0 error (MSE of the clean-video estimate, [-1, 1]
pixels) of the training objective on held-out sprite-world videos of `--chunks` chunks, with the
caption given or empty and, for VIN checkpoints, with the global tokens read or withheld
(`none`: the plain chunk DiT, as `--no-global`). Same videos, noise and t for every row.
`--sprites` measures the error on the sprite pixels only (where the video differs from its
background rendered alone): the background is most of every frame and easy, so the whole-frame
error hides how well the sprites are drawn.

    python scripts/loss_by_noise.py vin=src/vin/weights/vin-s.safetensors \
        ablation=checkpoints/vin-s-noglobal.safetensors --batches 4 --out docs/logs/loss-by-noise.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vin.checkpoint import checkpoint_config, load_checkpoint
from vin.data.synthetic import VideoSpec, make_batch, render
from vin.diffusion.flow import interpolate
from vin.sampling.chunking import chunk_layout, split_chunks
from vin.training.trainer import build_model

T_VALUES = (0.3, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)


def x0_error(model, video: torch.Tensor, captions: list[str], t: float, noise: torch.Tensor, context: int,
             use_global: bool, mask: torch.Tensor | None = None) -> float:
    """MSE between the clean video and the model's estimate of it, averaged over chunks and pixels
    (over the pixels where `mask`, shaped like `video`, is true, if given)."""
    total, count = x0_squared_error(model, video, captions, t, noise, context, use_global, mask)
    return total / max(count, 1.0)


def x0_squared_error(model, video: torch.Tensor, captions: list[str], t: float, noise: torch.Tensor, context: int,
                     use_global: bool, mask: torch.Tensor | None = None) -> tuple[float, float]:
    """(sum of the squared errors of `x0_error`, number of values summed): pooled over batches,
    these give the mean over all their masked pixels, however the mask's size varies by batch."""
    F = model.cfg.chunk_frames
    layout = chunk_layout(video.shape[2], F, context)
    tt = torch.full((video.shape[0],), t)
    x_t = interpolate(video, noise, tt)
    text = model.encode_text(captions)
    z = model.read(x_t, tt, text) if use_global and model.interface is not None else None
    chunks = split_chunks(x_t, layout)
    v = model.denoise_chunks(chunks, tt, text, z)
    x0 = chunks - t * v.float()
    err = (x0 - split_chunks(video, layout)) ** 2
    if mask is None:
        return err.sum().item(), float(err.numel())
    m = split_chunks(mask.float(), layout)
    return (err * m).sum().item(), m.sum().item()


def load_ema(path: str | Path) -> tuple[torch.nn.Module, object, int]:
    """(model with the EMA weights of `path`, in eval mode, its config, its step)."""
    cfg = checkpoint_config(path)
    model = build_model(cfg)
    step = load_checkpoint(path, model, weights="ema")
    return model.eval(), cfg, step


def held_out_frames(cfg, chunks: int) -> int:
    """The length of a video of `chunks` chunks in the training layout of `cfg`."""
    return chunks * (cfg.model.chunk_frames - cfg.train.context_frames) + cfg.train.context_frames


@torch.no_grad()
def heldout_errors(model, cfg, ts: list[float], batches: int, n_frames: int, seed: int = 999, caption: bool = True,
                   use_global: bool = True, sprites: bool = False) -> dict[float, float]:
    """{t: x0 error} of `model` (config `cfg`) on `batches` held-out batches of 8 videos of `n_frames`
    from stream `seed` (batch b noised with the noise of generator seed b), over whole frames or the
    sprite pixels only (the mean over all of them, pooled across the batches)."""
    sums = {t: [0.0, 0.0] for t in ts}
    for b in range(batches):
        video, captions, specs = make_batch(seed, b, 8, n_frames, cfg.data)
        mask = sprite_mask(video, specs, cfg.data) if sprites else None
        noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(b))
        caps = captions if caption else [""] * len(captions)
        for t in ts:
            total, count = x0_squared_error(model, video, caps, t, noise, cfg.train.context_frames, use_global, mask)
            sums[t][0] += total
            sums[t][1] += count
    return {t: total / max(count, 1.0) for t, (total, count) in sums.items()}


def backgrounds(specs: list[VideoSpec], cfg, n_frames: int) -> torch.Tensor:
    """Each video's background rendered alone (no sprites), (B, 3, F, H, W) in [-1, 1]."""
    bgs = [render(VideoSpec(s.background, s.texture, ()), cfg, 0, n_frames) for s in specs]
    return torch.from_numpy(np.stack(bgs)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


def sprite_mask(video: torch.Tensor, specs: list[VideoSpec], cfg) -> torch.Tensor:
    """True on every channel of the pixels where the video differs from its background rendered alone:
    the sprites, less any sprite pixels that happen to have the background's colour."""
    return differs(video, backgrounds(specs, cfg, video.shape[2]))


def differs(video: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """True on every channel of the pixels where `video` and `background` differ in any channel."""
    return (video != background).any(dim=1, keepdim=True).expand_as(video)


def reference_errors(cfg, n_frames: int, batches: int, seed: int, sprites: bool = False) -> list[tuple[str, float]]:
    """Two t-independent yardsticks on the same held-out videos: predicting the dataset's mean
    colour everywhere, and predicting each video's background (colour and texture, no sprites)."""
    videos, bgs = [], []
    for b in range(batches):
        video, _, specs = make_batch(seed, b, 8, n_frames, cfg.data)
        videos.append(video)
        bgs.append(backgrounds(specs, cfg.data, n_frames))
    v, bg = torch.cat(videos), torch.cat(bgs)
    mean = v.mean(dim=(0, 2, 3, 4), keepdim=True)
    m = differs(v, bg).float() if sprites else torch.ones_like(v)

    def err(x: torch.Tensor) -> float:
        return ((((v - x) ** 2) * m).sum() / m.sum().clamp_min(1)).item()

    return [("dataset mean colour (any t)", err(mean)),
            ("the video's background, no sprites (any t)", err(bg))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="LABEL=CHECKPOINT")
    p.add_argument("--chunks", type=int, default=4, help="chunks per held-out video")
    p.add_argument("--batches", type=int, default=4, help="held-out batches of 8 videos")
    p.add_argument("--seed", type=int, default=999, help="held-out data stream (training uses seed 0)")
    p.add_argument("--t", type=float, nargs="+", default=list(T_VALUES))
    p.add_argument("--sprites", action="store_true", help="the error on sprite pixels only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args()
    if args.batches < 1 or args.chunks < 1 or args.threads < 1 or not all(0 < t <= 1 for t in args.t):
        print("loss_by_noise: error: --batches, --chunks and --threads must be >= 1 and every --t in (0, 1]", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    rows = []
    for spec in args.models:
        label, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            print(f"loss_by_noise: error: {spec!r} is not LABEL=CHECKPOINT of an existing file", file=sys.stderr)
            return 2
        model, cfg, _ = load_ema(path)
        n_frames = held_out_frames(cfg, args.chunks)
        variants = [("caption", True, True), ("empty caption", False, True)]
        if model.interface is not None:
            variants += [("caption, no global tokens", True, False)]
        for name, caption, use_global in variants:
            errs = heldout_errors(model, cfg, args.t, args.batches, n_frames, args.seed, caption, use_global, args.sprites)
            rows.append((f"{label}: {name}", errs))
            print(rows[-1][0], " ".join(f"{errs[t]:.4f}" for t in args.t), file=sys.stderr)

    refs = reference_errors(cfg, n_frames, args.batches, args.seed, args.sprites)  # the data of the last model's config
    head = "| model: inputs | " + " | ".join(f"t={t:g}" for t in args.t) + " |"
    lines = [head, "|---" * (len(args.t) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(f"{errs[t]:.4f}" for t in args.t) + " |" for name, errs in rows]
    lines += ["| yardstick: " + name + " | " + " | ".join(f"{err:.4f}" for _ in args.t) + " |" for name, err in refs]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        where = "sprite pixels of " if args.sprites else ""
        args.out.write_text(f"x0 MSE on {where}{args.batches * 8} held-out videos of {args.chunks} chunks (seed {args.seed})\n\n"
                            + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
