"""The figures of docs/RESULTS.md: loss curves and frame strips, VIN vs the no-global-token ablation.

    python scripts/results_figures.py --vin runs/vin-s --ablation runs/vin-s-noglobal --out docs/img

Each strip figure stacks, for each prompt, the VIN video over the ablation's video, generated from
the same initial noise (same seed), with the chunk boundaries marked in red. `--reference` adds,
above them, the prompt rendered by the synthetic world itself (what a perfect model could draw;
positions and unnamed attributes are this script's choice). `--lengths 8` (one chunk) shows the
chunk DiT alone, without the long-video machinery.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vin.config import SampleConfig
from vin.data.synthetic import PALETTE_NAMES, SpriteSpec, VideoSpec, render
from vin.data.video_io import strips_figure, to_uint8, write_video
from vin.generate import load_model
from vin.sampling.chunking import boundaries, chunk_layout
from vin.sampling.vin_parallel import sample_vin
from vin.training.logplot import parse_marks, plot_losses
from vin.training.trainer import checkpoints

PROMPTS = [
    "a large red circle and a small white square on a blue striped background",
    "a green triangle on a plain white background",
    "a yellow diamond and a magenta circle",
]


def _sprite(colour: str, shape: str, size: str, x0: float, y0: float, vx: float, vy: float) -> SpriteSpec:
    return SpriteSpec(PALETTE_NAMES.index(colour), shape, size, x0, y0, vx, vy)


# The prompts as the synthetic world draws them, at 32x32. The unnamed attributes (sizes, #2's
# background) and the motion are chosen here.
REFERENCES = [
    VideoSpec(PALETTE_NAMES.index("blue"), "stripes",
              (_sprite("red", "circle", "large", 10.0, 12.0, 0.9, 0.5), _sprite("white", "square", "small", 22.0, 22.0, -0.6, -0.8))),
    VideoSpec(PALETTE_NAMES.index("white"), "plain", (_sprite("green", "triangle", "large", 12.0, 20.0, 1.0, -0.4),)),
    VideoSpec(PALETTE_NAMES.index("cyan"), "checker",  # the small sprite drawn last: it passes in front
              (_sprite("magenta", "circle", "large", 22.0, 16.0, -0.8, 0.3), _sprite("yellow", "diamond", "small", 8.0, 8.0, 0.7, 1.0))),
]
assert len(REFERENCES) == len(PROMPTS)


def _chunks(layout: list[tuple[int, int]], overlap: int) -> str:
    """'7 chunks of 8, overlap 4', or 'one chunk of 8'."""
    n, size = len(layout), layout[0][1]
    return f"one chunk of {size}" if n == 1 else f"{n} chunks of {size}, overlap {overlap}"


def _steps(run: Path) -> list[int]:
    return [int(p.stem.split("-")[1]) for p in checkpoints(run)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vin", type=Path, required=True, help="run directory of the VIN model")
    ap.add_argument("--ablation", type=Path, required=True, help="run directory of the no-global-token model")
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", action="store_true",
                    help="add a row per prompt drawn by the synthetic world itself (what the model should draw)")
    ap.add_argument("--step", type=int, help="checkpoint step of both runs (default: the newest step both have)")
    ap.add_argument("--mark", action="append", default=[], metavar="STEP=LABEL",
                    help="a dashed line on the loss plot (repeatable), e.g. where the training settings change")
    args = ap.parse_args()
    try:
        marks = parse_marks(args.mark)
    except ValueError as e:
        ap.error(str(e))
    step = args.step or min(_steps(args.vin)[-1], _steps(args.ablation)[-1])

    print(plot_losses([args.vin, args.ablation], args.out / "loss.png", labels=["VIN", "no global tokens"],
                      title="training loss, VIN-S/4 on the synthetic sprite world", marks=marks))
    models = {name: load_model(run / "checkpoints" / f"step-{step:07d}.safetensors")
              for name, run in (("VIN", args.vin), ("no global", args.ablation))}
    for frames in args.lengths:
        rows = []
        if args.reference:
            data_cfg = models["VIN"][1].data
            rows += [(i, f"data #{i}", render(spec, data_cfg, 0, frames)) for i, spec in enumerate(REFERENCES)]
        for name, (model, cfg) in models.items():
            sample = SampleConfig(frames=frames, overlap=args.overlap, steps=args.steps, seed=args.seed)
            with torch.inference_mode():
                video = sample_vin(model, PROMPTS, sample, (cfg.data.height, cfg.data.width))
            for i, clip in enumerate(video):
                rows.append((i, f"{name} #{i}", to_uint8(clip.float())))
                if i == 0 and frames > cfg.model.chunk_frames:
                    tag = "vin" if name == "VIN" else "noglobal"
                    print(write_video(args.out / f"{tag}-{frames}.gif", to_uint8(clip.float()), fps=cfg.data.fps, scale=4))
        rows.sort(key=lambda r: r[0])  # prompt-major (stable): reference, VIN, ablation for each prompt
        layout = chunk_layout(frames, models["VIN"][1].model.chunk_frames, args.overlap)
        print(strips_figure([(label, fr) for _, label, fr in rows], args.out / f"strips-{frames}.png",
                            boundaries=boundaries(layout), every=max(1, frames // 32), scale=3,
                            title=f"step {step}, {frames} frames ({_chunks(layout, args.overlap)}), seed {args.seed}; #i = prompt i"))


if __name__ == "__main__":
    main()
