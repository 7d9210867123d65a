"""Raise the shut global-token gates of a checkpoint to a floor, for warm-starting VIN training.

Used once, for the shipped checkpoint (docs/RESULTS.md, "Phase 3"): its first 2250 steps ran with
the old linear gate, which Adam could not open (18 of 24 heads stayed at weight 1e-12, log -27.6).
The gates below `--floor` are set to it (log-weight; -4: 32 global keys then weigh ~0.6 of one
video key), the rest of the weights are kept, EMA weights first. Writes exported weights that
`--train.init_from` takes.

    python scripts/raise_gates.py runs/vin-s/checkpoints/step-0002250.safetensors runs/vin-s-gates-4.safetensors --floor -4
"""

from __future__ import annotations

import argparse

from vin.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from vin.training.trainer import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--floor", type=float, default=-4.0)
    args = ap.parse_args()
    cfg = checkpoint_config(args.src)
    model = build_model(cfg)
    step = load_checkpoint(args.src, model, weights="ema")
    gates = model.dit.gate_logits.data
    print(f"before: {gates.tolist()}")
    gates.clamp_(min=args.floor)
    save_checkpoint(args.dst, cfg, model, step=step)
    print(f"after:  {gates.tolist()}\nwrote {args.dst} (step {step})")


if __name__ == "__main__":
    main()
