"""Uniform average of several checkpoints' EMA weights (checkpoint averaging, a longer post-hoc EMA).

docs/RESULTS.md ("Phase 11"): averaging the phase-10 checkpoints did not move the held-out error
beyond the spread, so the EMA (0.995) already averages what there is to average. Every input must
hold the same model (same config); the output is exported weights (EMA + the last input's config
and step) that `vin generate --checkpoint` and `--train.init_from` take. `--weights model` averages
the raw training weights instead (an SWA-style average over a constant-rate stretch).

    python scripts/average_weights.py runs/vin-s-p8/checkpoints/step-00{19500,19750,20000,20250,20500}.safetensors \
        --out runs/export/vin-avg.safetensors
"""

from __future__ import annotations

import argparse
import sys

import torch

from vin.checkpoint import CheckpointError, checkpoint_config, load_checkpoint, save_checkpoint
from vin.config import Config
from vin.training.trainer import build_model


def average(paths: list[str], weights: str = "ema") -> tuple[torch.nn.Module, Config, int]:
    """-> (model holding the average, the last input's config, its step). Sums in float64."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    cfg = checkpoint_config(paths[-1])
    model = build_model(cfg)
    total: dict[str, torch.Tensor] = {}
    step = 0
    for path in paths:
        other = checkpoint_config(path)
        if other.model != cfg.model:
            raise CheckpointError(f"{path} holds another model than {paths[-1]}; only the same model averages")
        step = load_checkpoint(path, model, weights=weights)
        for k, v in model.state_dict().items():
            total[k] = total.get(k, 0) + v.double()
    model.load_state_dict({k: (v / len(paths)).to(model.state_dict()[k].dtype) for k, v in total.items()})
    return model, cfg, step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="training checkpoints or exported weights, same model")
    ap.add_argument("--out", required=True, help="exported weights to write")
    ap.add_argument("--weights", choices=("ema", "model"), default="ema",
                    help="which copy of a training checkpoint to average (exported files hold one)")
    args = ap.parse_args()
    try:
        model, cfg, step = average(args.checkpoints, args.weights)
    except CheckpointError as e:
        print(f"average_weights: error: {e}", file=sys.stderr)
        return 2
    save_checkpoint(args.out, cfg, model, step=step)
    print(f"wrote {args.out}: the average of {len(args.checkpoints)} checkpoints (step {step})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
