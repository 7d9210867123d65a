"""Checkpoints: one safetensors file holding weights (+ EMA, + optimizer state) and the config.

No pickles: tensors in safetensors, everything else (config, step, optimizer hyper-parameters)
as JSON in the file's metadata. Files are written atomically, so an interrupted save never
leaves a truncated checkpoint or clobbers the previous one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from vin.config import Config, ConfigError, config_from_json
from vin.fileio import atomic_path
from vin.models.dit import upgrade_state_dict
from vin.models.vin import VINModel

FORMAT = "vin-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the requested config."""


def save_checkpoint(path: str | Path, cfg: Config, model: nn.Module, ema: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, step: int = 0, start: int = 0,
                    lr: float | None = None) -> Path:
    """Write model (+ EMA, + optimizer state) and the config atomically. `start`: the step the run
    began or was warm-started at (its learning-rate schedule counts from there); `lr`: the base
    learning rate of the last step trained."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    meta = {"format": FORMAT, "config": cfg.to_json(), "step": str(step), "start_step": str(start)}
    if lr is not None:
        meta["lr"] = repr(float(lr))
    if optimizer is not None:
        state = optimizer.state_dict()
        for idx, pstate in state["state"].items():
            for name, value in pstate.items():
                tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
        meta["optim_groups"] = json.dumps(state["param_groups"])
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vin checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def checkpoint_config(path: str | Path) -> Config:
    try:
        return config_from_json(read_metadata(path)["config"])
    except (ConfigError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} holds an unusable config ({e})") from None


def load_checkpoint(path: str | Path, model: nn.Module, ema: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, weights: str = "model",
                    new_modules: tuple[str, ...] = ()) -> int:
    """Load into the given modules; returns the step. `weights`: which copy goes into `model`
    ("model" or "ema"; "ema" falls back to "model" for exported files that hold one copy).
    `new_modules`: name prefixes of modules the file may lack (they keep their initialisation:
    a model grown by zero-initialised parts); every other key must match exactly."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt ({e})") from None
    _load_into(model, tensors, weights if any(k.startswith(weights + ".") for k in tensors) else "model", path, new_modules)
    if ema is not None:
        _load_into(ema, tensors, "ema" if any(k.startswith("ema.") for k in tensors) else "model", path, new_modules)
    if optimizer is not None:
        if "optim_groups" not in meta:
            raise CheckpointError(f"{path} holds no optimizer state (an exported checkpoint cannot be resumed)")
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["optim_groups"])})
    return int(meta.get("step", 0))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[VINModel, Config]:
    """Model (EMA weights when the file has them) in eval mode, and the config it was trained with.
    (Here rather than in vin.generate, so that it needs no video I/O: scripts/device_check.py runs
    where PyAV is not installed.)"""
    cfg = checkpoint_config(path)
    model = VINModel(cfg.model)
    load_checkpoint(path, model, weights="ema")
    return model.to(device).eval(), cfg


def _load_into(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path,
               new_modules: tuple[str, ...] = ()) -> None:
    sub = upgrade_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})
    expected = module.state_dict()
    grown: set[str] = set()
    for m in new_modules:  # a new module is absent from the file as a whole, never in part
        keys = {k for k in expected if k.startswith(m + ".")}
        if not keys & set(sub):
            grown |= keys
    missing = sorted(set(expected) - set(sub) - grown)
    extra = sorted(set(sub) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in sub.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path} does not match the model: {k} has shape {tuple(v.shape)}, model expects {tuple(expected[k].shape)}")
    module.load_state_dict(sub, strict=not grown)


def export_weights(src: str | Path, dst: str | Path) -> Path:
    """Strip a training checkpoint to its EMA weights + config (what is shipped and shared)."""
    meta = read_metadata(src)
    tensors = load_file(str(src))
    prefix = "ema" if any(k.startswith("ema.") for k in tensors) else "model"
    out = {"model." + k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    with atomic_path(dst) as tmp:
        save_file(out, str(tmp), metadata={"format": FORMAT, "config": meta["config"], "step": meta.get("step", "0")})
    return Path(dst)
