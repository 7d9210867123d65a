"""Long-video metrics without downloaded weights: pure functions on (T, H, W, 3) uint8 frames.

Every function takes RGB frames; values are in grey levels (0..255) or pixels unless stated.
Metrics of frame pairs are undefined (None) for a single frame. See docs in each function for the
protocol each one follows and where it departs from the original (VBench, StreamingT2V).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vin.eval.features import Feature, get_feature
from vin.eval.flow import FlowEstimator, backward_warp, check_method, interpolate_midframe, magnitude, pair_flows, valid_warp_mask

# VBench dynamic degree: RAFT flow, per frame pair the mean of the top 5% flow magnitudes; a video is
# dynamic when at least round(4 * n / 16) of its pairs exceed 6 * (min(H, W) / 256) pixels (times
# max(1, 8 / fps)), n = frames after sampling the video at ~8 fps (every round(fps / 8)-th frame).
DYNAMIC_TOP_FRACTION = 0.05
DYNAMIC_THRESHOLD_AT_256 = 6.0
DYNAMIC_SAMPLE_FPS = 8.0
# StreamingT2V's MAWE = W / (c * OFS); c = 9.5 is the value the StreamingT2V paper (arXiv 2403.14773,
# Sec. 5) reports from a regression on its validation videos (RAFT flow, its own W scale), so MAWE here
# (Farneback/DIS flow, W as a mean absolute error in grey levels) is comparable across our runs only.
MAWE_C = 9.5
MIN_FLOW_FOR_MAWE = 1e-3  # pixels/frame; below this MAWE's denominator is ~0 and it is reported as None
# Foreground for subject/background consistency: pixels whose largest channel differs from the
# per-video (temporal median) background by more than this many grey levels.
FOREGROUND_THRESHOLD = 32
SEAM_EPS = 1e-3  # grey levels; keeps the seam ratio finite (and 1.0) when nothing changes inside chunks

__all__ = [
    "frame_differences", "temporal_flickering", "motion_smoothness", "flow_stats", "warp_error", "mawe",
    "scene_cuts", "foreground_masks", "subject_consistency", "background_consistency", "seam_score",
    "drift", "curves",
]


def _check(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 \
            or 0 in frames.shape:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"expected non-empty (T, H, W, 3) uint8 frames, got {getattr(frames, 'dtype', type(frames).__name__)} {shape}")
    return frames


def frame_differences(frames: np.ndarray) -> np.ndarray:
    """Mean |frame_t - frame_{t-1}| over pixels and channels for t = 1..T-1: (T-1,) float64."""
    f = _check(frames).astype(np.int16)
    return np.abs(np.diff(f, axis=0)).reshape(len(f) - 1, -1).mean(axis=1) if len(f) > 1 else np.zeros(0)


def temporal_flickering(frames: np.ndarray) -> float | None:
    """VBench's temporal flickering: mean over t of (255 - MAE(frame_t, frame_{t-1})) / 255; 1 = static."""
    d = frame_differences(frames)
    return float((255.0 - d.mean()) / 255.0) if len(d) else None


def motion_smoothness(frames: np.ndarray, flow: str = "farneback") -> float | None:
    """``motion_smoothness_proxy``: VBench's protocol with a classical interpolator instead of AMT.

    Keep the even frames 0, 2, 4, ...; rebuild every odd frame 2k+1 that has both even neighbours
    from frames 2k and 2k+2 (bidirectional flow, both warped halfway, averaged, rounded to uint8);
    score = (255 - mean MAE(real odd frame, rebuilt one)) / 255. 1 = perfectly predictable motion.
    None for fewer than 3 frames."""
    f = _check(frames)
    odd = list(range(1, len(f) - 1, 2))
    if not odd:
        return None
    est = FlowEstimator(flow)
    errors = [np.abs(interpolate_midframe(f[i - 1], f[i + 1], est).astype(np.int16) - f[i]).mean() for i in odd]
    return float((255.0 - np.mean(errors)) / 255.0)


def _top_mean(mag: np.ndarray, fraction: float = DYNAMIC_TOP_FRACTION) -> float:
    flat = mag.ravel()
    k = max(1, int(flat.size * fraction))  # VBench: int(h * w * 0.05) largest magnitudes
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


def flow_stats(frames: np.ndarray, method: str = "farneback", *, fps: float = 8.0,
               flows: np.ndarray | None = None) -> dict:
    """Flow magnitudes per frame pair and VBench's dynamic-degree rule on them.

    Returns ``flow_method``; ``per_pair_mean`` / ``per_pair_top5`` (mean and top-5%-mean magnitude
    per pair t-1 -> t, pixels); ``mean_flow_magnitude`` (pixels/frame, the mean over all pixels and
    pairs; StreamingT2V's OFS) and ``mean_flow_magnitude_norm`` (that divided by the frame diagonal);
    ``dynamic_degree_proxy`` (1 dynamic / 0 static, VBench's rule with this flow), with its
    ``dynamic_threshold`` = max(1, 8/fps) * 6 * min(H, W) / 256 pixels (VBench tuned 6 px at 256 px
    and scales it linearly with the shorter side), ``dynamic_pairs_needed`` = round(4 * n / 16) and
    ``dynamic_pairs_fraction`` (the fraction of pairs over the threshold, a continuous version).
    The dynamic rule uses frames sampled every round(fps / 8) frames, as VBench does; ``flows``:
    precomputed forward flows (T-1, H, W, 2) to reuse (only used when that sampling is 1)."""
    f = _check(frames)
    check_method(method)
    t, h, w, _ = f.shape
    if flows is None:
        flows, _ = pair_flows(f, method, backward=False)
    mags = [magnitude(fl) for fl in flows]
    per_mean = [float(m.mean()) for m in mags]
    out = {"flow_method": method, "fps": float(fps), "per_pair_mean": per_mean,
           "per_pair_top5": [_top_mean(m) for m in mags],
           "mean_flow_magnitude": float(np.mean(per_mean)) if per_mean else None}
    out["mean_flow_magnitude_norm"] = None if out["mean_flow_magnitude"] is None else out["mean_flow_magnitude"] / float(np.hypot(h, w))
    interval = max(1, round(fps / DYNAMIC_SAMPLE_FPS))
    if interval == 1:
        scores = out["per_pair_top5"]
    else:
        sampled = f[::interval]
        scores = [_top_mean(magnitude(fl)) for fl in pair_flows(sampled, method, backward=False)[0]]
    n = len(f[::interval])
    threshold = max(1.0, DYNAMIC_SAMPLE_FPS / fps) * DYNAMIC_THRESHOLD_AT_256 * min(h, w) / 256.0
    needed = round(4 * (n / 16.0))
    above = sum(s > threshold for s in scores)
    out.update(dynamic_threshold=threshold, dynamic_pairs_needed=int(needed),
               dynamic_degree_proxy=None if not scores else int(above >= needed),
               dynamic_pairs_fraction=None if not scores else above / len(scores))
    return out


def warp_error(frames: np.ndarray, method: str = "farneback", *,
               flows: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Warp error: frame t warped onto frame t+1 with the flow (backward warping with the flow
    t+1 -> t), mean absolute error in grey levels over the pixels that land inside frame t and pass a
    forward-backward occlusion check (as in Lai et al. 2018, whose warp error StreamingT2V uses).
    Returns ``warp_error`` (mean over pairs), ``per_pair`` and ``flow_method``; ``no_warp_error``
    is the same error without warping (mean |frame_{t+1} - frame_t|), the baseline it should beat.
    ``flows``: precomputed (forward, backward) flows."""
    f = _check(frames)
    check_method(method)
    if flows is None or flows[1] is None:
        flows = pair_flows(f, method, backward=True)
    fwd, bwd = flows
    per_pair = []
    for i in range(len(f) - 1):
        valid = valid_warp_mask(bwd[i], fwd[i])
        if not valid.any():
            continue
        pred = backward_warp(f[i].astype(np.float32), bwd[i])
        per_pair.append(float(np.abs(pred - f[i + 1])[valid].mean()))
    diffs = frame_differences(f)
    return {"flow_method": method, "warp_error": float(np.mean(per_pair)) if per_pair else None,
            "per_pair": per_pair, "no_warp_error": float(diffs.mean()) if len(diffs) else None}


def mawe(frames: np.ndarray, method: str = "farneback", *, c: float = MAWE_C,
         flows: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """StreamingT2V's motion-aware warp error, MAWE = W / (c * OFS): W the warp error
    (:func:`warp_error`), OFS the mean flow magnitude (pixels/frame), c = ``MAWE_C`` = 9.5.
    None when the video (nearly) does not move (OFS below ``MIN_FLOW_FOR_MAWE``)."""
    f = _check(frames)
    if flows is None or flows[1] is None:
        flows = pair_flows(f, method, backward=True)
    w = warp_error(f, method, flows=flows)
    ofs = float(np.mean([magnitude(fl).mean() for fl in flows[0]])) if len(flows[0]) else None
    value = None if w["warp_error"] is None or ofs is None or ofs < MIN_FLOW_FOR_MAWE else w["warp_error"] / (c * ofs)
    return {"flow_method": method, "mawe": value, "warp_error": w["warp_error"], "mean_flow_magnitude": ofs, "c": c}


def scene_cuts(frames: np.ndarray) -> list[int]:
    """Frame indices where PySceneDetect's ``AdaptiveDetector`` (defaults) starts a new scene.

    The frames are fed to ``detector.process_frame`` in order as BGR images, as ``SceneManager`` does
    (including its automatic downscaling of frames whose longer side is 256 px or more to ~256 px,
    INTER_LINEAR).
    At the defaults a cut needs two frames on either side (``window_width=2``) and at least 15 frames
    since the previous cut or the start (``min_scene_len=15``): cuts before frame ~13 or in the last
    two frames are not reported, exactly as with ``scenedetect``'s command line."""
    import cv2
    from scenedetect.detectors import AdaptiveDetector
    from scenedetect.scene_manager import DEFAULT_MIN_WIDTH, compute_downscale_factor

    f = _check(frames)
    detector = AdaptiveDetector()
    factor = compute_downscale_factor(max(f.shape[1], f.shape[2]), DEFAULT_MIN_WIDTH)
    cuts: list[int] = []
    for i, frame in enumerate(f):
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if factor > 1.0:
            size = (max(1, round(bgr.shape[1] / factor)), max(1, round(bgr.shape[0] / factor)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
        cuts += detector.process_frame(i, bgr)
    cuts += detector.post_process(len(f) - 1)
    return sorted(int(c) for c in cuts)


def foreground_masks(frames: np.ndarray, threshold: float = FOREGROUND_THRESHOLD) -> np.ndarray:
    """(T, H, W) bool: pixels whose largest channel differs from the temporal median frame (the
    per-video background estimate: anything that moves is out of it) by more than ``threshold``."""
    f = _check(frames)
    background = np.median(f, axis=0)
    return (np.abs(f.astype(np.float32) - background.astype(np.float32)).max(axis=-1) > threshold)


def _vbench_average(items: Sequence, sim) -> float | None:
    """VBench: for t >= 1, the mean of max(0, sim(t-1, t)) and max(0, sim(0, t)); averaged over t."""
    if len(items) < 2:
        return None
    vals = [(max(0.0, sim(t - 1, t)) + max(0.0, sim(0, t))) / 2 for t in range(1, len(items))]
    return float(np.mean(vals))


def subject_consistency(frames: np.ndarray, feature: str | Feature = "pixels", *,
                        masks: np.ndarray | None = None, items: Sequence | None = None) -> float | None:
    """VBench's subject consistency over a pluggable feature (no DINO here): each frame compared
    with the first and with the previous frame, the two averaged, averaged over t >= 1. Pixel-domain
    features compare the foreground (``foreground_masks``: what differs from the per-video median
    background; the union of the two frames' foregrounds for "pixels"/"ssim", each frame's own for
    "hist"); DINO/CLIP compare whole frames. Two empty foregrounds count as identical."""
    f = _check(frames)
    feat = get_feature(feature)
    items = feat.prepare(f) if items is None else items
    if not feat.uses_masks:
        return _vbench_average(items, lambda i, j: feat.similarity(items[i], items[j], None, None))
    fg = foreground_masks(f) if masks is None else masks
    return _vbench_average(items, lambda i, j: feat.similarity(items[i], items[j], fg[i], fg[j]))


def background_consistency(frames: np.ndarray, feature: str | Feature = "pixels", *,
                           items: Sequence | None = None) -> float | None:
    """VBench's background consistency over a pluggable feature (no CLIP here): as
    :func:`subject_consistency`, but over whole frames, as VBench does with CLIP (the background
    fills most of the frame). Not over a background mask: a mask derived from the per-video median
    background marks every pixel of a changed background as "foreground" (after a cut to another
    scene nothing is left to compare), which is exactly the change this metric must see."""
    f = _check(frames)
    feat = get_feature(feature)
    items = feat.prepare(f) if items is None else items
    return _vbench_average(items, lambda i, j: feat.similarity(items[i], items[j], None, None))


def _check_boundaries(boundaries: Sequence[int] | None, t: int) -> list[int]:
    out = sorted({int(b) for b in (boundaries or [])})
    bad = [b for b in out if not 0 < b < t]
    if bad:
        raise ValueError(f"chunk boundaries {bad} are outside 1..{t - 1} for a video of {t} frames")
    return out


def seam_score(frames: np.ndarray, boundaries: Sequence[int] | None) -> dict:
    """Discontinuity at chunk boundaries: the mean frame-to-frame change (mean abs difference, grey
    levels) over the pairs (b-1, b) at the boundaries b, divided by the mean change over all other
    pairs (inside chunks). 1 = seamless, > 1 = visible seams. Both means are returned
    (``boundary_diff``, ``inside_diff``); ``SEAM_EPS`` is added to both so the ratio stays finite
    (and is 1.0 for a frozen video). ``seam_score`` is None without boundaries (or without pairs
    inside chunks)."""
    d = frame_differences(frames)
    bs = _check_boundaries(boundaries, len(frames))
    at = np.zeros(len(d), dtype=bool)
    at[[b - 1 for b in bs]] = True
    boundary = float(d[at].mean()) if at.any() else None
    inside = float(d[~at].mean()) if (~at).any() else None
    ratio = None if boundary is None or inside is None else (boundary + SEAM_EPS) / (inside + SEAM_EPS)
    return {"seam_score": ratio, "boundary_diff": boundary, "inside_diff": inside, "boundaries": bs}


def drift(frames: np.ndarray, feature: str | Feature = "pixels", *, items: Sequence | None = None) -> dict:
    """Similarity of every frame to the first (whole frames) as a function of frame distance.

    Returns ``curve`` (T values, curve[0] = 1), ``last`` (similarity of the last frame), ``mean``
    and ``slope_per_frame`` (least-squares slope of the curve; negative = drifting away)."""
    f = _check(frames)
    feat = get_feature(feature)
    items = feat.prepare(f) if items is None else items
    curve = [1.0] + [float(feat.similarity(items[0], items[t], None, None)) for t in range(1, len(f))]
    slope = float(np.polyfit(np.arange(len(curve)), curve, 1)[0]) if len(curve) > 1 else None
    return {"feature": feat.name, "curve": curve, "last": curve[-1], "mean": float(np.mean(curve)),
            "slope_per_frame": slope}


def curves(frames: np.ndarray, flows: np.ndarray | None = None, method: str = "farneback") -> dict[str, list[float]]:
    """Per-frame curves for plots, T values each; the value at t is for the pair (t-1, t) and 0 at
    t = 0: ``frame_diff`` (mean abs difference, grey levels), ``flow_magnitude`` (mean, pixels)."""
    f = _check(frames)
    if flows is None:
        flows, _ = pair_flows(f, method, backward=False)
    return {"frame_diff": [0.0] + [float(x) for x in frame_differences(f)],
            "flow_magnitude": [0.0] + [float(magnitude(fl).mean()) for fl in flows]}
