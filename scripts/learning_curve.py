"""Learning curves of the sprites: held-out x0 error on sprite pixels against step and wall time.

    python scripts/learning_curve.py "VIN-S/4=runs/scale/s" "VIN-M/4=runs/scale/m" \
        --point "shipped=src/vin/weights/vin-s.safetensors" --out docs/img/learning-curve.png

For each checkpoint a run has kept (its steps that are multiples of `--every`, and its last one),
its EMA weights' x0 error on the sprite pixels of the same held-out videos of `--chunks` chunks,
noise and t (`scripts/loss_by_noise.py --sprites`, caption given, global tokens read). The
whole-frame loss of the training log is dominated by the background, which a model learns early;
this is the part it learns slowly. A run keeps only its last `train.keep_checkpoints` checkpoints:
raise it for a curve. Wall time comes from
the run's log (`wall_s` of the checkpoint's step; a resumed run's clock restarts, so use runs
trained in one go; `--panels step` leaves the wall-time panel out, e.g. for runs continued from
other weights). `--point` adds a single weights file (its step from its metadata) as a marker.
Results are cached per checkpoint file and t in `--cache`, so a growing run can be re-measured cheaply.
Bad input (a missing run or file, a run without checkpoints, a bad option value, an unreadable
cache) is a one-line error and exit status 2; the cache and the figure are written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vin.fileio import atomic_path, atomic_write_text
from vin.training.logplot import read_log
from vin.training.trainer import checkpoints

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_by_noise import held_out_frames, heldout_errors, load_ema  # noqa: E402


def sprite_errors(path: Path, ts: list[float], batches: int, chunks: int, seed: int = 999) -> tuple[int, dict[float, float]]:
    """(step, {t: x0 error on sprite pixels}) of the EMA weights in `path` (caption given, global tokens read)."""
    model, cfg, step = load_ema(path)
    return step, heldout_errors(model, cfg, ts, batches, held_out_frames(cfg, chunks), seed, sprites=True)


CACHE_VERSION = 2  # raise when what is measured changes (the mask, the pooling, the held-out data)


def measure(files: list[Path], ts: list[float], batches: int, chunks: int, cache: dict,
            seed: int = 999) -> list[tuple[int, dict[float, float]]]:
    """`sprite_errors` of each file, through `cache`, keyed by the file (path, size, mtime), the
    settings and each t, so only what is missing is measured."""
    out = []
    for path in files:
        st = path.stat()
        base = f"v{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|b{batches}|c{chunks}|s{seed}"
        missing = [t for t in ts if f"{base}|t{t!r}" not in cache]
        if missing:
            step, errs = sprite_errors(path, missing, batches, chunks, seed)
            for t, e in errs.items():
                cache[f"{base}|t{t!r}"] = {"step": step, "error": e}
            print(f"{path}: step {step} " + " ".join(f"t={t:g} {e:.4f}" for t, e in errs.items()), file=sys.stderr)
        entries = [cache[f"{base}|t{t!r}"] for t in ts]
        out.append((entries[0]["step"], {t: e["error"] for t, e in zip(ts, entries)}))
    return out


def plot(curves: dict[str, list[tuple[int, float | None, dict[float, float]]]], points: dict[str, tuple[int, dict[float, float]]],
         ts: list[float], out: Path, chunks: int = 1, panels: tuple[str, ...] = ("step", "wall")) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(panels), figsize=(max(8.0, 5.5 * len(panels)), 4), dpi=120, squeeze=False)
    axes = axes[0]
    styles = ["-", "--", ":", "-."]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, x_of in zip(axes, panels):
        for c, (label, rows) in enumerate(curves.items()):
            for s, t in enumerate(ts):
                # log axes: only positive values (a step-0 checkpoint, a record without wall time are left out)
                pts = [((step if x_of == "step" else (wall or 0) / 3600), errs[t]) for step, wall, errs in rows]
                pts = [(x, y) for x, y in pts if x > 0 and y > 0]
                if pts:
                    ax.plot(*zip(*pts), styles[s % len(styles)], color=colours[c % len(colours)], marker=".",
                            label=f"{label}, t={t:g}")
        if x_of == "step":
            for c, (label, (step, errs)) in enumerate(points.items()):
                for s, t in enumerate(ts):
                    ax.plot([step], [errs[t]], marker="*", markersize=10, linestyle="none",
                            color=colours[(len(curves) + c) % len(colours)], label=f"{label} (each t)" if s == 0 else None)
        if not ax.lines:
            ax.text(0.5, 0.5, "no wall times in the runs' logs", ha="center", va="center", transform=ax.transAxes)
            continue
        xs = [x for line in ax.lines for x in line.get_xdata()]
        if max(xs) >= 10 * min(xs):  # a power law is a line; a span under a decade reads better linear
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yscale("log")
        ax.set_xlabel("training step" if x_of == "step" else "training wall time (h)")
        ax.set_ylabel("x0 MSE on sprite pixels (held-out)")
        ax.grid(True, which="both", alpha=0.3)
    videos = "one-chunk" if chunks == 1 else f"{chunks}-chunk"
    fig.suptitle(f"how fast the sprites are learned ({videos} held-out videos, EMA weights)")
    handles, labels = axes[0].get_legend_handles_labels()
    rows = (len(labels) + 2) // 3
    fig.tight_layout(rect=(0, 0.06 * rows, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    p.add_argument("--point", action="append", default=[], help="LABEL=WEIGHTS: one more file, drawn as a marker")
    p.add_argument("--t", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    p.add_argument("--every", type=int, default=500, help="measure the checkpoints at multiples of this step")
    p.add_argument("--batches", type=int, default=4, help="held-out batches of 8 videos")
    p.add_argument("--chunks", type=int, default=1, help="chunks per held-out video")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=Path("outputs/learning-curve.json"))
    p.add_argument("--out", type=Path, default=Path("outputs/learning-curve.png"))
    p.add_argument("--panels", nargs="+", choices=["step", "wall"], default=["step", "wall"],
                   help="x axes to draw (wall: the run's own training time; leave it out for runs continued "
                        "from other weights, whose logs start at 0)")
    args = p.parse_args()
    try:
        curves, points = run(args)
    except (ValueError, OSError) as e:
        print(f"learning_curve: error: {e}", file=sys.stderr)
        return 2
    head = "| model | step | wall (h) | " + " | ".join(f"t={t:g}" for t in args.t) + " |"
    lines = [head, "|---" * (len(args.t) + 3) + "|"]
    for label, rows in curves.items():
        lines += [f"| {label} | {step} | {'' if wall is None else f'{wall / 3600:.2f}'} | " + " | ".join(f"{errs[t]:.4f}" for t in args.t) + " |"
                  for step, wall, errs in rows]
    for label, (step, errs) in points.items():
        lines.append(f"| {label} | {step} |  | " + " | ".join(f"{errs[t]:.4f}" for t in args.t) + " |")
    print("\n".join(lines))
    print(plot(curves, points, args.t, args.out, args.chunks, tuple(dict.fromkeys(args.panels))))
    return 0


def checked(args: argparse.Namespace) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]], dict]:
    """The arguments checked, before anything is measured: (runs, points, the cache's contents),
    each run and point as (label, path); a ValueError names the first bad one."""
    if args.every < 1 or args.batches < 1 or args.chunks < 1 or args.threads < 1:
        raise ValueError("--every, --batches, --chunks and --threads must be >= 1")
    if not all(0 < t <= 1 for t in args.t):
        raise ValueError(f"--t must be in (0, 1], got {args.t}")

    def split(spec: str, what: str, exists) -> tuple[str, Path]:
        label, _, path = spec.partition("=")
        if not label or not path or not exists(Path(path)):
            raise ValueError(f"{spec!r} is not LABEL={what} of an existing {what.lower().replace('_', ' ')}")
        return label, Path(path)

    runs = [split(s, "RUN_DIR", Path.is_dir) for s in args.runs]
    extra = [split(s, "WEIGHTS", Path.is_file) for s in args.point]
    labels = [label for label, _ in runs + extra]
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {labels}")
    for label, path in runs:
        if not checkpoints(path):
            raise ValueError(f"no checkpoints in {path}/checkpoints")
    try:
        cache = json.loads(args.cache.read_text()) if args.cache.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{args.cache} is not a learning-curve cache ({e}); move it away") from None
    return runs, extra, cache


def run(args: argparse.Namespace) -> tuple[dict, dict]:
    """Check the arguments (`checked`), measure through the cache and save it; (curves, points)."""
    runs, extra, cache = checked(args)
    torch.set_num_threads(args.threads)
    curves, points = {}, {}
    try:
        for label, path in runs:
            files = checkpoints(path)
            files = [f for f in files[:-1] if int(f.stem.split("-")[1]) % args.every == 0] + files[-1:]
            walls = {int(r["step"]): r.get("wall_s") for r in read_log(path)} if (path / "log.jsonl").is_file() else {}
            curves[label] = [(step, walls.get(step), errs) for step, errs in measure(files, args.t, args.batches, args.chunks, cache)]
        for label, path in extra:
            points[label] = measure([path], args.t, args.batches, args.chunks, cache)[0]
    finally:
        atomic_write_text(args.cache, json.dumps(cache, indent=1))
    return curves, points


if __name__ == "__main__":
    raise SystemExit(main())
