"""The comparison report: results.json of `vin compare` -> plots (PNG), report.html and report.md.

The HTML is self-contained (GIFs and plots embedded as data URIs) so it can be mailed or attached
to an issue; the markdown links the files next to it. Tables give the mean over seeds and prompts
(± the standard deviation when there are several), with the best value of each column marked
where the metric has a direction (`DIRECTIONS`).
"""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from vin.fileio import atomic_path, atomic_write_text

# "max": higher is better; "min": lower is better; "one": closest to 1 is best (seam ratio);
# metrics not listed (dynamic degree, flow magnitude: how much motion, not how good) are unmarked.
DIRECTIONS = {
    "temporal_flickering": "max",
    "motion_smoothness_proxy": "max",
    "subject_consistency": "max",
    "background_consistency": "max",
    "warp_error": "min",
    "mawe": "min",
    "scene_cuts": "min",
    "seam_score": "one",
    "drift_last": "max",
    "identity_both": "max",
    "identity_background": "max",
    "identity_sprites": "max",
    "identity_chunks": "max",
    "caption_background": "max",
    "caption_sprites": "max",
    "identity_texture": "max",
    "caption_texture": "max",
    "shape_iou": "max",
    "shape_clean": "max",
    "shape_consistency": "max",
    "shape_present": "max",
    "flops": "min",
    "wall_s": "min",
}
# Shown in the tables and plots, in this order, when the evaluation produced them.
TABLE_METRICS = ("identity_both", "identity_background", "identity_sprites", "identity_chunks", "identity_texture",
                 "caption_background", "caption_sprites", "caption_texture", "shape_iou", "shape_clean",
                 "shape_consistency", "shape_present", "seam_score", "subject_consistency",
                 "background_consistency", "temporal_flickering", "motion_smoothness_proxy", "warp_error",
                 "mawe", "dynamic_degree_proxy", "mean_flow_magnitude", "scene_cuts", "drift_last", "drift_slope_per_frame")
CURVES = ("frame_diff", "sim_to_first")


def scalar_metrics(video: dict) -> dict[str, float]:
    """The flat scalar metrics of one evaluated video (`evaluate_frames` output)."""
    out = {k: float(v) for k, v in video.get("metrics", {}).items() if _is_number(v)}
    return out


def aggregate(results: dict) -> dict[tuple[str, int], dict[str, tuple[float, float]]]:
    """(method, frames) -> metric -> (mean, std) over seeds and prompts; plus flops and wall_s."""
    values: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in results["runs"]:
        key = (run["method"], run["frames"])
        if "refused" in run:
            values[key]  # noqa: B018 - the cell exists, empty
            continue
        values[key]["flops"].append(run["flops"])
        values[key]["wall_s"].append(run["wall_s"])
        for video in run["videos"]:
            for name, v in scalar_metrics(video).items():
                values[key][name].append(v)
    return {key: {name: (float(np.mean(v)), float(np.std(v))) for name, v in metrics.items()}
            for key, metrics in values.items()}


def best_cells(agg: dict, methods: list[str], frames: int, names: list[str]) -> dict[str, set[str]]:
    """metric -> the methods holding the best mean at this length (ties all marked)."""
    best = {}
    for name in names:
        direction = DIRECTIONS.get(name)
        cells = {m: agg[(m, frames)][name][0] for m in methods
                 if (m, frames) in agg and name in agg[(m, frames)] and math.isfinite(agg[(m, frames)][name][0])}
        if direction is None or len(cells) < 2:
            continue
        score = {"max": lambda v: -v, "min": lambda v: v, "one": lambda v: abs(v - 1.0)}[direction]
        top = min(score(v) for v in cells.values())
        best[name] = {m for m, v in cells.items() if math.isclose(score(v), top, rel_tol=1e-9, abs_tol=1e-12)}
    return best


def write_report(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Plots + report.html + report.md in out_dir (next to results.json and videos/)."""
    out_dir = Path(out_dir)
    methods = [m["label"] for m in results["methods"]]
    lengths = list(results["lengths"])
    agg = aggregate(results)
    names = [n for n in TABLE_METRICS if any(n in cell for cell in agg.values())]
    plots = {"metrics": _plot_metrics(agg, methods, lengths, names, out_dir / "metrics_vs_length.png"),
             "compute": _plot_compute(agg, methods, lengths, out_dir / "compute_vs_length.png")}
    for n in lengths:
        path = _plot_curves(results, methods, n, out_dir / f"curves-{n}f.png")
        if path:
            plots[f"curves-{n}"] = path
    tables = {n: _table(agg, methods, n, names) for n in lengths}
    tables["compute"] = _compute_table(agg, methods, lengths)
    md = _markdown(results, tables, plots, out_dir)
    page = _html(results, tables, plots, out_dir)
    atomic_write_text(out_dir / "report.md", md)
    atomic_write_text(out_dir / "report.html", page)
    return out_dir / "report.html", out_dir / "report.md"


# ------------------------------------------------------------------------------------ tables


def _table(agg: dict, methods: list[str], frames: int, names: list[str]) -> dict:
    """{"header": [...], "rows": [[cells]], "best": [[bool]]} for one length."""
    best = best_cells(agg, methods, frames, names)
    rows, marks = [], []
    for m in methods:
        cell = agg.get((m, frames))
        if cell is None:
            continue
        if not cell:
            rows.append([m] + ["refused"] + [""] * (len(names) - 1))
            marks.append([False] * (len(names) + 1))
            continue
        rows.append([m] + [_fmt(name, *cell[name]) if name in cell else "–" for name in names])
        marks.append([False] + [m in best.get(name, set()) for name in names])
    header = ["method"] + [_label(n) for n in names]
    return {"header": header, "rows": rows, "best": marks}


def _compute_table(agg: dict, methods: list[str], lengths: list[int]) -> dict:
    """Rows: methods; columns: analytic FLOPs and wall time per length, and both relative to the
    first method (the ratio is what one run on one machine measures meaningfully)."""
    header, rows, marks = ["method"], [], []
    for n in lengths:
        header += [f"FLOPs @{n}", f"÷ {methods[0]}", f"wall s @{n}", f"÷ {methods[0]}"]
    for m in methods:
        row, mark = [m], [False]
        for n in lengths:
            cell, ref = agg.get((m, n), {}), agg.get((methods[0], n), {})
            best = best_cells(agg, methods, n, ["flops", "wall_s"])
            for name in ("flops", "wall_s"):
                if name in cell:
                    ratio = f"{cell[name][0] / ref[name][0]:.2f}" if name in ref else "–"
                    row += [_fmt(name, *cell[name]), ratio]
                    mark += [m in best.get(name, set()), False]
                else:
                    row += ["refused" if (m, n) in agg else "–", ""]
                    mark += [False, False]
        rows.append(row)
        marks.append(mark)
    return {"header": header, "rows": rows, "best": marks}


def _label(name: str) -> str:
    arrow = {"max": " ↑", "min": " ↓", "one": " →1"}.get(DIRECTIONS.get(name, ""), "")
    return {"flops": "FLOPs", "wall_s": "wall s"}.get(name, name.replace("_", " ")) + arrow


def _fmt(name: str, mean: float, std: float) -> str:
    if name == "flops":
        return f"{mean:.3g}"
    text = f"{mean:.3f}" if abs(mean) < 100 else f"{mean:.1f}"
    return text + (f" ± {std:.3f}" if std > 0 and name not in ("wall_s",) else "")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def _plot_metrics(agg, methods, lengths, names, path: Path) -> Path:
    plt = _plt()
    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for m in methods:
            xs = [n for n in lengths if name in agg.get((m, n), {})]
            if xs:
                mean = [agg[(m, n)][name][0] for n in xs]
                std = [agg[(m, n)][name][1] for n in xs]
                ax.errorbar(xs, mean, yerr=std, marker="o", ms=3, capsize=2, label=m)
        ax.set_title(_label(name), fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("frames", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _plot_compute(agg, methods, lengths, path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, name, title in zip(axes, ("flops", "wall_s"), ("FLOPs per video (analytic)", "wall time per run (s)")):
        for m in methods:
            xs = [n for n in lengths if name in agg.get((m, n), {})]
            if xs:
                ax.plot(xs, [agg[(m, n)][name][0] for n in xs], marker="o", ms=3, label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.set_xlabel("frames")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _plot_curves(results: dict, methods: list[str], frames: int, path: Path) -> Path | None:
    """Per-frame curves of the first seed and prompt per method, chunk boundaries dashed."""
    first = {}
    for run in results["runs"]:
        if run["frames"] == frames and "videos" in run and run["method"] not in first:
            first[run["method"]] = run
    if not first:
        return None
    curves = [c for c in CURVES if any(c in r["videos"][0].get("curves", {}) for r in first.values())]
    if not curves:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.0), squeeze=False)
    for ax, name in zip(axes[0], curves):
        for m in methods:
            if m in first and name in first[m]["videos"][0].get("curves", {}):
                y = np.asarray(first[m]["videos"][0]["curves"][name], dtype=float)
                x = np.arange(len(y))  # T values; a frame-pair curve holds pair (t-1, t) at t, 0 at t = 0
                ax.plot(x, y, lw=1, label=m)
        for b in next(iter(first.values()))["boundaries"]:
            ax.axvline(b, color="0.6", ls="--", lw=0.6)
        ax.set_title(f"{name.replace('_', ' ')} ({frames} frames; dashed: chunk boundaries)", fontsize=9)
        ax.set_xlabel("frame")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------ output


def _settings(results: dict) -> list[tuple[str, str]]:
    s = results["sample"]
    return [("methods", ", ".join(f"{m['label']} ({m['strategy']} on {Path(m['checkpoint']).name})" for m in results["methods"])),
            ("lengths", ", ".join(map(str, results["lengths"]))), ("seeds", ", ".join(map(str, results["seeds"]))),
            ("solver", f"{s['solver']}{_eta(s)}, {s['steps']} steps, overlap {s['overlap']}, cfg {s['cfg']}"),
            ("device", f"{results['device']}, {results['torch_threads']} torch threads"),
            ("metrics", f"feature {results['feature']}, optical flow {results['flow']}")]


def _eta(sample: dict) -> str:
    """The " (eta 1)" of a stochastic ddim run; results written before eta have none."""
    return f" (eta {sample['eta']:g})" if sample.get("eta") else ""


def _gif_rows(results: dict) -> dict[int, dict[str, list[str]]]:
    """prompt index -> method -> one gif path per length (first seed), '' when refused."""
    seed = results["seeds"][0]
    grid: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for n in results["lengths"]:
        for m in results["methods"]:
            run = next((r for r in results["runs"] if r["method"] == m["label"] and r["frames"] == n and r["seed"] == seed), None)
            for p in range(len(results["prompts"])):
                path = run["videos"][p]["path"] if run and "videos" in run else ""
                grid[p][m["label"]].append(path)
    return grid


def _md(text: str) -> str:
    """A markdown table cell / heading: no pipes or newlines that would break the table."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _markdown(results: dict, tables: dict, plots: dict, out_dir: Path) -> str:
    lines = ["# vin compare", ""]
    lines += [f"- **{k}**: {_md(v)}" for k, v in _settings(results)] + [""]
    for n, t in tables.items():
        lines += [f"## {_title(n)}", "", "| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
        for row, marks in zip(t["rows"], t["best"]):
            lines.append("| " + " | ".join(f"**{_md(c)}**" if b else _md(c) for c, b in zip(row, marks)) + " |")
        lines.append("")
    lines += ["Bold: the best value of the column (↑ higher is better, ↓ lower, →1 closest to 1). Read the "
              "consistency columns next to the motion ones (flow magnitude): a static video is perfectly consistent.", ""]
    for key, path in plots.items():
        lines += [f"![{key}]({Path(path).relative_to(out_dir)})", ""]
    for p, grid in _gif_rows(results).items():
        lines += [f"## Videos: {_md(results['prompts'][p])}", "", "| method | " + " | ".join(f"{n} frames" for n in results["lengths"]) + " |",
                  "|" + "---|" * (len(results["lengths"]) + 1)]
        for m, paths in grid.items():
            lines.append(f"| {_md(m)} | " + " | ".join(f"![]({q})" if q else "refused" for q in paths) + " |")
        lines.append("")
    return "\n".join(lines)


def _title(key) -> str:
    return "Compute (analytic FLOPs per run of all prompts; wall time in this process)" if key == "compute" else f"{key} frames"


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _html(results: dict, tables: dict, plots: dict, out_dir: Path) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>vin compare</title><style>",
             "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}",
             "table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}",
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}",
             "td.best{background:#d9f2d9;font-weight:bold}th{background:#f3f3f3}",
             "img.gif{image-rendering:pixelated;width:128px;height:128px}img.plot{max-width:100%}",
             "dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{font-weight:bold}",
             "</style></head><body><h1>vin compare</h1><dl>"]
    parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _settings(results)]
    parts.append("</dl>")
    for p, grid in _gif_rows(results).items():
        parts.append(f"<h2>Videos: “{e(results['prompts'][p])}” (seed {results['seeds'][0]})</h2><table><tr><th>method</th>")
        parts += [f"<th>{n} frames</th>" for n in results["lengths"]] + ["</tr>"]
        for m, paths in grid.items():
            cells = "".join(f"<td><img class='gif' src='{_data_uri(out_dir / q, 'image/gif')}'></td>" if q else "<td>refused</td>"
                            for q in paths)
            parts.append(f"<tr><td>{e(m)}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append("<h2>Metrics</h2><p>Mean over seeds and prompts (± standard deviation). Green: the best value of "
                 "the column (↑ higher is better, ↓ lower, →1 closest to 1); unmarked columns measure how much "
                 "motion there is, not quality. Read the consistency columns next to the motion ones: a static video "
                 "is perfectly consistent.</p>")
    for n, t in tables.items():
        parts.append(f"<h3>{_title(n)}</h3><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in t["header"]) + "</tr>")
        for row, marks in zip(t["rows"], t["best"]):
            parts.append("<tr>" + "".join(f"<td class='best'>{e(c)}</td>" if b else f"<td>{e(c)}</td>"
                                          for c, b in zip(row, marks)) + "</tr>")
        parts.append("</table>")
    parts.append("<h2>Plots</h2>")
    parts += [f"<p><img class='plot' src='{_data_uri(Path(path), 'image/png')}' alt='{e(key)}'></p>" for key, path in plots.items()]
    parts.append("</body></html>")
    return "\n".join(parts)
