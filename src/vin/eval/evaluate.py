"""Every metric on one video (`evaluate_frames`) or on video files and folders (`evaluate_paths`).

Files: ``.mp4`` / ``.gif`` (read with `vin.data.video_io.read_video`); a folder means every
``.mp4``/``.gif`` directly inside it, sorted. Per video:

* **Chunk boundaries** come from the sidecar ``<video>.json`` that ``vin generate`` writes (its
  ``"layout"`` of chunk windows; for ``out-0.mp4, out-1.mp4, ...`` of several prompts the shared
  ``out.json``); without one, from ``chunk_frames`` / ``overlap`` via
  `vin.sampling.chunking.chunk_layout`; otherwise there are none.
* **Resolution.** ``vin generate`` writes videos upscaled (``--scale``, 8 by default, nearest
  neighbour). Metrics are computed at the generated resolution: flow thresholds, SSIM windows and the
  identity rules are in generated pixels, and an 8x video would take 64x the flow time. With
  ``downscale="auto"`` the factor is the sidecar's frame size over the model's
  (``model_config.data.height``); without a sidecar it is detected
  (`vin.eval.resolution.detect_upscale`). An int forces the factor (1 = as stored). Blocks are
  reduced to their per-channel median.
* **fps** (for VBench's dynamic-degree frame sampling): the sidecar's ``model_config.data.fps``,
  else the file's frame rate, else 8.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vin.eval import metrics as M
from vin.eval.features import get_feature
from vin.eval.flow import check_method, pair_flows
from vin.eval.resolution import detect_upscale, downscale

VIDEO_SUFFIXES = (".mp4", ".gif")
DEFAULT_FPS = 8.0
# scalar metrics, in the order of the JSON and the table
METRIC_NAMES = (
    "temporal_flickering", "motion_smoothness_proxy", "dynamic_degree_proxy", "dynamic_pairs_fraction",
    "mean_flow_magnitude", "mean_flow_magnitude_norm", "warp_error", "no_warp_error", "mawe", "scene_cuts",
    "subject_consistency", "background_consistency", "seam_score", "seam_boundary_diff", "seam_inside_diff",
    "drift_last", "drift_mean", "drift_slope_per_frame",
    "identity_background", "identity_sprites", "identity_both", "identity_chunks", "identity_texture",
    "caption_background", "caption_sprites", "caption_texture", "shape_iou", "shape_clean", "shape_consistency",
    "shape_present",
)


def _clean(x):
    """JSON-able: numpy scalars to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def evaluate_frames(frames: np.ndarray, boundaries: Sequence[int] | None = None, *, feature: str = "pixels",
                    flow: str = "farneback", synthetic: bool = True, fps: float = DEFAULT_FPS,
                    layout: Sequence[Sequence[int]] | None = None, caption: str | None = None) -> dict:
    """All metrics of one video, (T, H, W, 3) uint8 at the resolution to evaluate.

    ``boundaries``: frame indices where chunks start (``chunking.boundaries(layout)``); or give the
    ``layout`` windows (then boundaries default to its starts and the identity's chunks are the
    windows). Returns ``{"frames": T, "frame_size": [H, W], "boundaries": [...], "flow_method",
    "feature", "fps", "metrics": {name: float | int | None}, "curves": {name: [T floats]},
    "scene_cut_frames": [...], "identity": {...}}`` ("identity" only when ``synthetic``); see
    :data:`METRIC_NAMES` and the README for the metrics. ``caption``: the video's prompt, for the
    caption-adherence metrics of the sprite world (None without one)."""
    f = M._check(frames)
    check_method(flow)
    feat = get_feature(feature)
    if layout is not None:
        from vin.sampling.chunking import boundaries as layout_boundaries

        layout = [tuple(int(v) for v in w) for w in layout]
        if boundaries is None:
            boundaries = layout_boundaries(layout)
    bs = M._check_boundaries(boundaries, len(f))
    fwd, bwd = pair_flows(f, flow, backward=True)
    fs = M.flow_stats(f, flow, fps=fps, flows=fwd)
    mw = M.mawe(f, flow, flows=(fwd, bwd))
    we = M.warp_error(f, flow, flows=(fwd, bwd))
    items = feat.prepare(f)
    seam = M.seam_score(f, bs)
    dr = M.drift(f, feat, items=items)
    cuts = M.scene_cuts(f)
    metrics = {
        "temporal_flickering": M.temporal_flickering(f),
        "motion_smoothness_proxy": M.motion_smoothness(f, flow),
        "dynamic_degree_proxy": fs["dynamic_degree_proxy"],
        "dynamic_pairs_fraction": fs["dynamic_pairs_fraction"],
        "mean_flow_magnitude": fs["mean_flow_magnitude"],
        "mean_flow_magnitude_norm": fs["mean_flow_magnitude_norm"],
        "warp_error": we["warp_error"],
        "no_warp_error": we["no_warp_error"],
        "mawe": mw["mawe"],
        "scene_cuts": len(cuts),
        "subject_consistency": M.subject_consistency(f, feat, items=items),
        "background_consistency": M.background_consistency(f, feat, items=items),
        "seam_score": seam["seam_score"],
        "seam_boundary_diff": seam["boundary_diff"],
        "seam_inside_diff": seam["inside_diff"],
        "drift_last": dr["last"],
        "drift_mean": dr["mean"],
        "drift_slope_per_frame": dr["slope_per_frame"],
    }
    out = {"frames": len(f), "frame_size": list(f.shape[1:3]), "boundaries": bs, "flow_method": flow,
           "feature": feat.name, "fps": float(fps), "metrics": metrics,
           "curves": {**M.curves(f, fwd), "sim_to_first": dr["curve"]}, "scene_cut_frames": cuts}
    if synthetic:
        from vin.data.synthetic import PALETTE_NAMES, nearest_palette
        from vin.eval.identity import caption_adherence, identity_consistency
        from vin.eval.shapes import shape_quality

        # the frames are at the size to evaluate already (evaluate_paths undid the upscale): detecting
        # one again could mistake 4-px stripes for a 4x upscale and erase small sprites
        indices = nearest_palette(f)
        ident = identity_consistency(f, layout if layout is not None else bs, undo_upscale=False, indices=indices)
        metrics.update(identity_background=ident["frames_background"], identity_sprites=ident["frames_sprites"],
                       identity_both=ident["frames_both"], identity_chunks=ident["chunks_both"],
                       identity_texture=ident["frames_texture"])
        metrics.update(caption_adherence(ident, caption) if caption is not None
                       else {"caption_background": None, "caption_sprites": None, "caption_texture": None})
        backgrounds = [PALETTE_NAMES.index(b) for b in ident["per_frame_background"]]
        shapes = shape_quality(indices, backgrounds, ident["min_area"])
        metrics.update({k: shapes[k] for k in ("shape_iou", "shape_clean", "shape_consistency", "shape_present")})
        ident["per_frame_shapes"] = shapes["per_frame_shapes"]
        out["identity"] = ident
    else:
        metrics.update({k: None for k in METRIC_NAMES if k.startswith(("identity_", "caption_", "shape_"))})
    out["metrics"] = {k: metrics[k] for k in METRIC_NAMES}
    return _clean(out)


# ---- files --------------------------------------------------------------------------------------

_INDEXED = re.compile(r"(.+)-(\d+)")  # `vin generate --out out.mp4` with several prompts writes out-<i>.mp4


def _sidecar(path: Path) -> dict | None:
    """The JSON `vin generate` wrote for this video (``<video>.json``, or ``out.json`` for
    ``out-<i>.mp4``), if any."""
    candidates = [path.with_suffix(".json")]
    m = _INDEXED.fullmatch(path.stem)
    if m:
        candidates.append(path.with_name(m.group(1) + ".json"))
    for c in candidates:
        if c.is_file():
            try:
                record = json.loads(c.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"sidecar {c} is not readable JSON ({e})") from None
            if isinstance(record, dict) and "layout" in record:
                record["_path"] = str(c)
                return record
    return None


def _prompt_of(path: Path, record: dict | None) -> str | None:
    """The prompt of this video in its sidecar: the only one, or prompt i for ``out-<i>.mp4``."""
    prompts = (record or {}).get("prompts")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        return None
    if len(prompts) == 1:
        return prompts[0]
    m = _INDEXED.fullmatch(path.stem)
    return prompts[int(m.group(2))] if m and int(m.group(2)) < len(prompts) else None


def _file_fps(path: Path) -> float | None:
    try:
        if path.suffix.lower() == ".gif":
            from PIL import Image

            with Image.open(path) as im:
                ms = im.info.get("duration")
            return 1000.0 / ms if ms else None
        import av

        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
        return float(rate) if rate else None
    except Exception:  # fps is a nicety for the dynamic-degree sampling; never fail on it
        return None


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders -> their .mp4/.gif files, sorted. Raises on missing or unsupported."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise ValueError(f"no .mp4 or .gif videos in folder {p}")
            out += found
        elif p.is_file():
            if p.suffix.lower() not in VIDEO_SUFFIXES:
                raise ValueError(f"{p} is not a video this tool reads (expected {' or '.join(VIDEO_SUFFIXES)})")
            out.append(p)
        else:
            raise FileNotFoundError(f"no video file or folder at {p}")
    return out


def _resolve_factor(frames: np.ndarray, requested: str | int, record: dict | None) -> int:
    h, w = frames.shape[1:3]
    if requested != "auto":
        k = int(requested)
        if k < 1:
            raise ValueError(f"downscale must be 'auto' or a positive integer, got {requested!r}")
        return k
    data = ((record or {}).get("model_config") or {}).get("data") or {}
    gh, gw = data.get("height"), data.get("width")
    if isinstance(gh, int) and isinstance(gw, int) and gh > 0 and gw > 0 and h % gh == 0 and h // gh == w // gw \
            and w % gw == 0:
        return h // gh
    return detect_upscale(frames)


def evaluate_paths(paths: Sequence[str | Path], chunk_frames: int | None = None, overlap: int | None = None, *,
                   feature: str = "pixels", flow: str = "farneback", synthetic: bool = True,
                   downscale_factor: str | int = "auto", fps: float | None = None) -> tuple[dict[str, dict], dict]:
    """Evaluate videos and folders of videos. Returns (per_video keyed by path, summary).

    Each per-video dict is :func:`evaluate_frames`' plus ``path``, ``boundaries_from`` ("sidecar",
    "chunk_frames" or "none"), ``layout``, ``downscale`` and ``stored_size``. Inputs are all
    checked (existence, suffix, feature and flow names, chunk options) before any video is read."""
    from vin.data.video_io import read_video
    from vin.sampling.chunking import chunk_layout

    check_method(flow)
    get_feature(feature)  # fail on a bad feature before reading anything
    if overlap is not None and chunk_frames is None:
        raise ValueError("--overlap needs --chunk-frames")
    files = expand_paths(paths)
    per_video: dict[str, dict] = {}
    for path in files:
        record = _sidecar(path)
        frames = read_video(path)
        t = len(frames)
        if record is not None:
            try:
                layout = [(int(s), int(e)) for s, e in record["layout"]]
            except (TypeError, ValueError):
                raise ValueError(f"sidecar {record['_path']}: \"layout\" is not a list of [start, end] pairs") from None
            if not layout or layout[-1][1] != t:
                raise ValueError(f"sidecar {record['_path']} has a chunk layout for "
                                 f"{layout[-1][1] if layout else 0} frames but {path} has {t}")
            source = "sidecar"
        elif chunk_frames is not None:
            layout = list(chunk_layout(t, chunk_frames, overlap or 0))
            source = "chunk_frames"
        else:
            layout, source = None, "none"
        factor = _resolve_factor(frames, downscale_factor, record)
        stored = list(frames.shape[1:3])
        frames = downscale(frames, factor)
        rate = fps or ((record or {}).get("model_config") or {}).get("data", {}).get("fps") or _file_fps(path) \
            or DEFAULT_FPS
        caption = _prompt_of(path, record)
        result = evaluate_frames(frames, None, feature=feature, flow=flow, synthetic=synthetic, fps=float(rate),
                                 layout=layout, caption=caption)
        per_video[str(path)] = {"path": str(path), "caption": caption, "boundaries_from": source,
                                "layout": [list(w) for w in layout] if layout else None,
                                "downscale": factor, "stored_size": stored, **result}
    return per_video, summarize(per_video)


CAPTION_METRICS = ("caption_background", "caption_sprites", "caption_texture")


def mismatched_captions(per_video: dict[str, dict]) -> dict:
    """The chance level of the caption-adherence metrics in this set: for each video with a score,
    how often the videos made for *other* prompts show what its caption names (its caption scored
    on them), averaged over the videos. A model that ignores the words scores the same on average
    with its own captions, however often each prompt repeats. Per metric, a pair is skipped when
    the two captions name the same value (e.g. both say "blue background"); per-chunk schedules
    ("a; b") are left out on both sides. Returns per metric the mean, the number of videos it
    averages and the number of (video, other video) pairs; mean None where no pair exists."""
    from vin.eval.identity import caption_adherence, caption_colours, caption_texture

    def named(caption: str) -> dict[str, object]:
        background, sprites = caption_colours(caption)
        return {"caption_background": background, "caption_sprites": frozenset(sprites),
                "caption_texture": caption_texture(caption)}

    videos = [v for v in per_video.values() if v.get("identity") and v.get("caption") and ";" not in v["caption"]]
    attrs = [named(v["caption"]) for v in videos]
    out = {}
    for m in CAPTION_METRICS:
        per_video_chance, pairs = [], 0
        for i, v in enumerate(videos):
            if v["metrics"].get(m) is None:
                continue
            scores = [caption_adherence(w["identity"], v["caption"])[m] for j, w in enumerate(videos)
                      if attrs[j][m] != attrs[i][m]]
            if scores:
                per_video_chance.append(float(np.mean(scores)))
                pairs += len(scores)
        out[m] = {"mean": float(np.mean(per_video_chance)) if per_video_chance else None,
                  "videos": len(per_video_chance), "pairs": pairs}
    return out


def summarize(per_video: dict[str, dict]) -> dict:
    """Mean, std (population) and count of every scalar metric over the videos (None values skipped),
    and the caption metrics' chance level (:func:`mismatched_captions`)."""
    out = {}
    for name in METRIC_NAMES:
        vals = [v["metrics"][name] for v in per_video.values() if v["metrics"].get(name) is not None]
        out[name] = {"mean": float(np.mean(vals)) if vals else None, "std": float(np.std(vals)) if vals else None,
                     "n": len(vals)}
    return {"videos": len(per_video), "metrics": out, "mismatched_captions": mismatched_captions(per_video)}


TABLE_COLUMNS = (  # (metric, header, format)
    ("temporal_flickering", "flicker", "{:.4f}"), ("motion_smoothness_proxy", "smooth", "{:.4f}"),
    ("dynamic_degree_proxy", "dyn", "{:.0f}"), ("mean_flow_magnitude", "flow px", "{:.3f}"),
    ("warp_error", "warp", "{:.2f}"), ("mawe", "MAWE", "{:.3f}"), ("scene_cuts", "cuts", "{:.0f}"),
    ("subject_consistency", "subject", "{:.4f}"), ("background_consistency", "backgr", "{:.4f}"),
    ("seam_score", "seam", "{:.2f}"), ("drift_last", "drift", "{:.3f}"), ("identity_both", "ident", "{:.3f}"),
    ("identity_chunks", "id chunks", "{:.3f}"), ("caption_background", "cap bg", "{:.3f}"),
    ("shape_iou", "shape", "{:.3f}"),
)


def format_table(per_video: dict[str, dict], summary: dict) -> str:
    """A short plain-text table: one row per video and the mean over videos."""
    def cell(fmt: str, v) -> str:
        return "-" if v is None else fmt.format(v)

    headers = ["video", "frames"] + [h for _, h, _ in TABLE_COLUMNS]
    rows = [[Path(p).name, str(r["frames"])] + [cell(fmt, r["metrics"].get(m)) for m, _, fmt in TABLE_COLUMNS]
            for p, r in per_video.items()]
    if len(per_video) > 1:
        rows.append([f"mean of {summary['videos']}", ""]
                    + [cell(fmt, summary["metrics"][m]["mean"]) for m, _, fmt in TABLE_COLUMNS])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)
