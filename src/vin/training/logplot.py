"""Loss curves of training runs (their `log.jsonl`) as one PNG: `vin plot RUN_DIR... --out loss.png`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from vin.fileio import atomic_path


def read_log(run_dir: str | Path) -> list[dict[str, float]]:
    """The records of `run_dir/log.jsonl`, one per logged step (a resumed run may repeat steps:
    the last record of a step wins)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path}")
    by_step: dict[int, dict[str, float]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            by_step[int(record["step"])] = record
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{n} is not a training log record") from None
    return [by_step[s] for s in sorted(by_step)]


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over `window` records (window 1 = unchanged)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def parse_marks(specs: Sequence[str] | None) -> dict[int, str]:
    """["5750=wider t", ...] -> {5750: "wider t"}; ValueError naming the bad one otherwise."""
    marks = {}
    for spec in specs or []:
        step, sep, label = spec.partition("=")
        if not sep or not step.isdigit():
            raise ValueError(f"--mark takes STEP=LABEL (e.g. 5750='wider t'), got {spec!r}")
        marks[int(step)] = label
    return marks


def label_rows(spans: Sequence[tuple[float, float]], gap: float = 2.0) -> list[int]:
    """Line of each label, given their horizontal (start, end) extents in the order of their
    starts: the first line whose last label ends at least `gap` before this one starts."""
    ends: list[float] = []
    rows = []
    for start, end in spans:
        row = next((i for i, e in enumerate(ends) if e + gap <= start), len(ends))
        if row == len(ends):
            ends.append(end)
        else:
            ends[row] = end
        rows.append(row)
    return rows


def plot_losses(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
                window: int = 8, title: str | None = None, marks: dict[int, str] | None = None) -> Path:
    """Training loss against step for each run (raw, faint; smoothed, solid), log-scale loss.
    `marks`: step -> label, drawn as dashed vertical lines (e.g. where the training settings change)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels else [Path(r).name for r in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    logs = [read_log(r) for r in run_dirs]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for label, log in zip(labels, logs):
        steps = [r["step"] for r in log]
        loss = [r["loss"] for r in log]
        (line,) = ax.plot(steps, smooth(loss, window), label=f"{label} (last {loss[-1]:.4f})" if loss else label)
        ax.plot(steps, loss, color=line.get_color(), alpha=0.25, linewidth=0.8)
    notes = []
    for step, text in sorted((marks or {}).items()):
        ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
        notes.append(ax.annotate(text, (step, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                                 textcoords="offset points", va="top", fontsize=7, color="dimgrey"))
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss (MSE on velocity)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if notes:  # each mark's label goes on the first line where it overlaps no earlier label
        renderer = fig.canvas.get_renderer()
        boxes = [n.get_window_extent(renderer) for n in notes]
        for note, row in zip(notes, label_rows([(b.x0, b.x1) for b in boxes])):
            note.set_position((3, -3 - 9 * row))
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out
