"""The strategies figure of docs/RESULTS.md: every strategy on one checkpoint, same seed, one strip each.

    python scripts/strategies_figure.py --frames 64 --out docs/img/strategies-64.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vin.config import SampleConfig
from vin.data.video_io import strips_figure, to_uint8
from vin.generate import DEFAULT_CHECKPOINT, DEFAULT_PROMPT, load_model
from vin.sampling.chunking import boundaries, chunk_layout
from vin.sampling.strategies import STRATEGIES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/img/strategies-64.png"))
    args = ap.parse_args()
    model, cfg = load_model(args.checkpoint)
    sample = SampleConfig(frames=args.frames, seed=args.seed)
    rows = []
    for name, sampler in STRATEGIES.items():
        with torch.inference_mode():
            video = sampler(model, [args.prompt], sample, (cfg.data.height, cfg.data.width), "cpu", None)
        rows.append((name, to_uint8(video[0].float())))
    layout = chunk_layout(args.frames, cfg.model.chunk_frames, sample.overlap)
    print(strips_figure(rows, args.out, boundaries=boundaries(layout), every=2, scale=2,
                        title=f"every strategy, {args.checkpoint.name}, {args.frames} frames, seed {args.seed}; "
                              f"red: vin's chunk starts"))


if __name__ == "__main__":
    main()
