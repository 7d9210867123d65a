"""Test helpers shared by several test files."""

from __future__ import annotations

import torch

from vin.config import load_config
from vin.models.vin import VINModel
from vin.training.trainer import build_model


def random_xs_model(*overrides: str, seed: int = 0, std: float = 0.2) -> VINModel:
    """VIN-XS/4 (eval mode) with every zero-initialised parameter (adaLN, final layer) made
    non-zero and the global-token gates opened (log-weight 0), so that the prediction, the captions and the
    global tokens all matter. An untrained DiT (adaLN-Zero, zero final layer) predicts exactly 0,
    which would make equivalence tests vacuous."""
    model = build_model(load_config(None, list(overrides), preset="VIN-XS/4")).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
        if getattr(model.dit, "gate_logits", None) is not None:
            model.dit.gate_logits.fill_(0.0)  # w = exp(0) = 1
    return model
