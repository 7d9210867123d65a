"""Classical optical flow (OpenCV Farneback or DIS), backward warping and flow-based frame
interpolation: the weight-free stand-ins for RAFT and AMT in the metrics.

Conventions: ``optical_flow(a, b)[y, x] = (dx, dy)`` is the displacement of the content at pixel
(x, y) of ``a`` into ``b``, i.e. ``a(p) ~ b(p + flow(p))``; flows are computed on the grey (luma)
frames, in pixels per frame pair.
"""

from __future__ import annotations

import cv2
import numpy as np

FLOW_METHODS = ("farneback", "dis")
# OpenCV's documented example parameters; on 32x32 and 64x64 textures shifted by 1-3 px they recover
# the shift within ~1% (median exact), so no per-resolution tuning.
FARNEBACK_PARAMS = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
DIS_PRESET = "MEDIUM"
# Forward-backward consistency test for occlusions (Sundaram et al. 2010, used by Lai et al.'s warp
# error): a pixel is occluded if |w_b + w_f(x + w_b)|^2 > ALPHA (|w_b|^2 + |w_f(x + w_b)|^2) + BETA.
OCCLUSION_ALPHA = 0.01
OCCLUSION_BETA = 0.5


def check_method(method: str) -> str:
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; expected one of {', '.join(FLOW_METHODS)}")
    return method


def gray(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 luma."""
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


class FlowEstimator:
    """Dense flow between two RGB frames with one method (the DIS object is built once)."""

    def __init__(self, method: str = "farneback") -> None:
        self.method = check_method(method)
        self._dis = None
        if method == "dis":
            self._dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{DIS_PRESET}"))

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if np.array_equal(a, b):  # exactly zero (the estimators return ~1e-3 px at borders)
            return np.zeros((*a.shape[:2], 2), np.float32)
        ga, gb = gray(a), gray(b)
        if self._dis is not None:
            return self._dis.calc(ga, gb, None)
        return cv2.calcOpticalFlowFarneback(ga, gb, None, **FARNEBACK_PARAMS)


def optical_flow(a: np.ndarray, b: np.ndarray, method: str = "farneback") -> np.ndarray:
    """Flow from frame ``a`` to frame ``b``: (H, W, 2) float32, pixels."""
    return FlowEstimator(method)(a, b)


def pair_flows(frames: np.ndarray, method: str = "farneback", backward: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Forward flows t -> t+1 and (optionally) backward flows t+1 -> t: each (T-1, H, W, 2) float32."""
    est = FlowEstimator(method)
    t, h, w, _ = frames.shape
    fwd = np.zeros((max(t - 1, 0), h, w, 2), np.float32)
    bwd = np.zeros_like(fwd) if backward else None
    for i in range(t - 1):
        fwd[i] = est(frames[i], frames[i + 1])
        if backward:
            bwd[i] = est(frames[i + 1], frames[i])
    return fwd, bwd


def magnitude(flow: np.ndarray) -> np.ndarray:
    return np.hypot(flow[..., 0], flow[..., 1])


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[:h, :w].astype(np.float32)
    return xs, ys


def backward_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``out(p) = image(p + flow(p))``, bilinear, borders replicated; same dtype as ``image``."""
    h, w = flow.shape[:2]
    xs, ys = _grid(h, w)
    return cv2.remap(image, xs + flow[..., 0], ys + flow[..., 1], interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def valid_warp_mask(bwd: np.ndarray, fwd: np.ndarray) -> np.ndarray:
    """Pixels p of frame t+1 whose backward flow ``bwd`` (t+1 -> t) lands inside frame t and passes
    the forward-backward consistency test against ``fwd`` (t -> t+1): (H, W) bool."""
    h, w = bwd.shape[:2]
    xs, ys = _grid(h, w)
    tx, ty = xs + bwd[..., 0], ys + bwd[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    fwd_at = backward_warp(fwd, bwd)  # w_f(p + w_b(p))
    loop = bwd + fwd_at
    bound = OCCLUSION_ALPHA * ((bwd**2).sum(-1) + (fwd_at**2).sum(-1)) + OCCLUSION_BETA
    return inside & ((loop**2).sum(-1) <= bound)


def interpolate_midframe(f0: np.ndarray, f1: np.ndarray, estimator: FlowEstimator) -> np.ndarray:
    """The frame halfway between ``f0`` and ``f1`` (uint8): bidirectional flow, both neighbours
    warped halfway towards the middle (flow assumed locally constant), averaged.

    A point at p0 in f0 moving by F01(p0) sits at p0 + F01/2 at mid-time, so the middle frame at x
    samples f0 at x - F01(x)/2 and f1 at x - F10(x)/2."""
    f01 = estimator(f0, f1)
    f10 = estimator(f1, f0)
    a = backward_warp(f0.astype(np.float32), -0.5 * f01)
    b = backward_warp(f1.astype(np.float32), -0.5 * f10)
    return np.rint(0.5 * (a + b)).clip(0, 255).astype(np.uint8)
