"""Frame similarities for the consistency and drift metrics: a registry of name -> factory.

A :class:`Feature` turns frames into per-frame items (``prepare``) and compares two items
(``similarity``, 1 = identical, clipped to [0, 1] as VBench clips cosine similarities at 0).
Pixel-domain features take optional boolean ``(H, W)`` masks, the region each frame is compared
over (the foreground, for subject consistency):

* ``"pixels"`` - ``1 - MAE / 255`` over the union of the two masks (whole frame without masks).
  Chosen over the cosine of mean-centred frames because it is defined for flat frames (a plain
  background has zero variance) and reads in grey levels. Pixel-aligned: motion lowers it.
* ``"ssim"`` - SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
  L = 255; per RGB channel, averaged) with OpenCV filtering, the SSIM map averaged over the union
  of the masks. Pixel-aligned as well, but tolerant to brightness and contrast changes.
* ``"hist"`` - intersection ``sum(min(p, q))`` of the normalised joint RGB histograms
  (``HIST_BINS`` bins per channel) of each frame's own masked pixels: position-invariant, so a
  subject that moves but keeps its colours stays at 1.
* ``"dino:PATH"`` / ``"clip:PATH"`` - cosine similarity of image embeddings from a local
  checkpoint (see :func:`dino_feature`, :func:`clip_feature`); masks are ignored (whole frames,
  as in VBench). Their libraries are imported only when such a feature is requested.

Adding a feature is one line in :data:`FEATURES`: ``"name": lambda arg: Feature(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_K1, SSIM_K2, SSIM_L = 0.01, 0.03, 255.0
HIST_BINS = 8  # per channel: 512 joint RGB bins
DEEP_SIZE = 224  # input resolution of the DINO / CLIP image encoders
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_ARCH = "ViT-B-32"  # VBench's background-consistency model
DINO_HUB_MODEL = "dino_vitb16"  # VBench's subject-consistency model

Mask = np.ndarray | None


@dataclass(frozen=True)
class Feature:
    """A frame similarity. ``prepare(frames)`` -> per-frame items; ``similarity(a, b, mask_a,
    mask_b)`` -> float in [0, 1]. ``uses_masks`` is False for features that compare whole frames."""

    name: str
    prepare: Callable[[np.ndarray], Sequence[Any]]
    similarity: Callable[[Any, Any, Mask, Mask], float]
    uses_masks: bool = True


def _union(mask_a: Mask, mask_b: Mask, shape: tuple[int, int]) -> np.ndarray:
    if mask_a is None and mask_b is None:
        return np.ones(shape, dtype=bool)
    if mask_a is None or mask_b is None:
        return np.ones(shape, dtype=bool)  # one side unmasked: compare everywhere
    return mask_a | mask_b


def pixel_similarity(a: np.ndarray, b: np.ndarray, mask_a: Mask = None, mask_b: Mask = None) -> float:
    """``1 - mean|a - b| / 255`` over the union of the masks (1.0 on an empty region)."""
    region = _union(mask_a, mask_b, a.shape[:2])
    if not region.any():
        return 1.0
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))[region]
    return float(1.0 - diff.mean() / 255.0)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two (H, W) or (H, W, C) images in 0..255, averaged over channels: (H, W)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape, got {a.shape} and {b.shape}")
    c1, c2 = (SSIM_K1 * SSIM_L) ** 2, (SSIM_K2 * SSIM_L) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (SSIM_WINDOW, SSIM_WINDOW), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return s.mean(axis=-1) if s.ndim == 3 else s


def ssim(a: np.ndarray, b: np.ndarray, mask_a: Mask = None, mask_b: Mask = None) -> float:
    """Mean SSIM over the union of the masks (1.0 on an empty region), clipped to [0, 1]."""
    region = _union(mask_a, mask_b, np.shape(a)[:2])
    if not region.any():
        return 1.0
    return float(np.clip(ssim_map(a, b)[region].mean(), 0.0, 1.0))


def colour_histogram(frame: np.ndarray, mask: Mask = None, bins: int = HIST_BINS) -> np.ndarray | None:
    """Normalised joint RGB histogram (bins**3,) of the masked pixels of a uint8 frame; None if empty."""
    pixels = np.asarray(frame).reshape(-1, 3) if mask is None else np.asarray(frame)[mask]
    if len(pixels) == 0:
        return None
    q = (pixels.astype(np.int64) * bins) // 256
    idx = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    return np.bincount(idx, minlength=bins**3) / len(pixels)


def hist_similarity(a: np.ndarray, b: np.ndarray, mask_a: Mask = None, mask_b: Mask = None) -> float:
    """Histogram intersection of each frame's own masked pixels (1.0 if both regions are empty,
    0.0 if only one is)."""
    ha, hb = colour_histogram(a, mask_a), colour_histogram(b, mask_b)
    if ha is None or hb is None:
        return 1.0 if ha is None and hb is None else 0.0
    return float(np.minimum(ha, hb).sum())


def _cosine(a: np.ndarray, b: np.ndarray, mask_a: Mask = None, mask_b: Mask = None) -> float:
    return float(max(0.0, float(np.dot(a, b))))  # embeddings are L2-normalised in prepare


def _check_path(kind: str, arg: str | None, what: str) -> Path:
    if not arg:
        raise ValueError(f"feature {kind!r} needs {what}: use --feature {kind}:PATH")
    path = Path(arg).expanduser()
    if not path.exists():
        raise ValueError(f"feature {kind!r} needs {what} at {path}: not found")
    return path


def _import(kind: str, module: str, pip_name: str):
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as e:  # ImportError, or a broken install raising anything else
        raise ValueError(f"feature {kind!r} needs the package {pip_name} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'import failed'})") from None


def _to_tensor(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]):
    """(T, H, W, 3) uint8 -> (T, 3, 224, 224) float32 normalised (bicubic resize with OpenCV)."""
    torch = _import("dino/clip", "torch", "torch")
    resized = np.stack([cv2.resize(f, (DEEP_SIZE, DEEP_SIZE), interpolation=cv2.INTER_CUBIC) for f in frames])
    x = resized.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _embed(model: Callable, x, batch: int = 32) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            e = model(x[i:i + batch]).float()
            out.append(torch.nn.functional.normalize(e.flatten(1), dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def dino_feature(arg: str | None) -> Feature:
    """``dino:PATH``: PATH is an image encoder taking (N, 3, 224, 224) ImageNet-normalised images:
    a ``.pt2`` saved with ``torch.export.save`` (batch dimension dynamic), a TorchScript file
    (``torch.jit.save``), or a local clone of the DINO torch.hub repo with its weights already in the
    torch hub cache (loads ``dino_vitb16``, VBench's model). Nothing is downloaded."""
    path = _check_path("dino", arg, "a local image encoder (.pt2 / TorchScript) or torch.hub DINO repo")
    torch = _import("dino", "torch", "torch")
    try:
        if path.is_dir():
            model = torch.hub.load(str(path), DINO_HUB_MODEL, source="local")
        elif path.suffix == ".pt2":
            model = torch.export.load(str(path)).module()
        else:
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ValueError(f"feature 'dino' could not load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if hasattr(model, "eval") and not path.suffix == ".pt2":  # exported programs refuse .eval()
        model.eval()
    return Feature(f"dino:{path}", lambda frames: _embed(model, _to_tensor(frames, IMAGENET_MEAN, IMAGENET_STD)),
                   _cosine, uses_masks=False)


def clip_feature(arg: str | None) -> Feature:
    """``clip:PATH``: PATH is a local open_clip checkpoint of ``CLIP_ARCH`` (ViT-B-32, VBench's
    background-consistency model); needs the package open_clip_torch. Nothing is downloaded."""
    path = _check_path("clip", arg, f"a local open_clip {CLIP_ARCH} checkpoint")
    open_clip = _import("clip", "open_clip", "open_clip_torch")
    try:
        model = open_clip.create_model(CLIP_ARCH, pretrained=str(path))
    except Exception as e:
        raise ValueError(f"feature 'clip' could not load {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    model.eval()
    return Feature(f"clip:{path}", lambda frames: _embed(model.encode_image, _to_tensor(frames, CLIP_MEAN, CLIP_STD)),
                   _cosine, uses_masks=False)


FEATURES: dict[str, Callable[[str | None], Feature]] = {
    "pixels": lambda arg: Feature("pixels", list, pixel_similarity),
    "ssim": lambda arg: Feature("ssim", list, ssim),
    "hist": lambda arg: Feature("hist", list, hist_similarity),
    "dino": dino_feature,
    "clip": clip_feature,
}


def get_feature(spec: str | Feature) -> Feature:
    """A :class:`Feature` from ``"name"`` or ``"name:ARG"`` (e.g. ``"dino:/models/dino.pt"``)."""
    if isinstance(spec, Feature):
        return spec
    name, _, arg = str(spec).partition(":")
    if name not in FEATURES:
        raise ValueError(f"unknown feature {name!r}; expected one of {', '.join(FEATURES)} (dino/clip as NAME:PATH)")
    return FEATURES[name](arg or None)
