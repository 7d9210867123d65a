"""`vin compare`: strategies x lengths x seeds on one checkpoint -> videos, metrics, compute, a report.

Every method runs in this process on the same loaded weights, one after another, with the same
prompts, seeds and solver steps, so the wall times are comparable ratios (taken in one run on one
machine) and the videos differ only by the method. A method is a strategy (`vin`, `full`, ...)
on the main checkpoint, or `vin` on another checkpoint (`--also LABEL=PATH`, e.g. the
no-global-token ablation trained on the same data and budget).

Seam scores and per-chunk identity use the same reference chunk windows for every method: the
chunk layout the chunked strategies use (`chunk_layout(frames, chunk_frames, overlap)`), so a
whole-video method (full, spectral) is measured at the same frames where a chunked one could seam.

Outputs in `--out`: `videos/*.gif`, `results.json` (every run: metrics, curves, FLOPs, wall time),
`report.html` (self-contained: GIFs and plots embedded) and `report.md` (links to the files).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from vin.config import STRATEGIES, SampleConfig
from vin.data.video_io import to_uint8, write_video
from vin.fileio import atomic_write_text
from vin.sampling.chunking import boundaries, chunk_layout
from vin.sampling.common import AttentionLimitError, resolve_chunk_frames
from vin.sampling.strategies import get_strategy, strategy_layout


@dataclass(frozen=True)
class Method:
    """One column of the comparison: a strategy on a checkpoint (labelled for the report)."""

    label: str
    strategy: str
    checkpoint: str


def parse_methods(strategies: list[str], checkpoint: str, also: list[str]) -> list[Method]:
    """`--strategies a b` on `checkpoint`, plus `--also LABEL=PATH` (strategy vin on PATH)."""
    methods = []
    for name in strategies:
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r} (one of {', '.join(STRATEGIES)})")
        methods.append(Method(name, name, str(checkpoint)))
    for item in also:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ValueError(f"--also takes LABEL=CHECKPOINT, got {item!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--also {label}: no checkpoint at {path}")
        methods.append(Method(label, "vin", path))
    slugs = [_slug(m.label) for m in methods]  # the GIF file names
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"method labels must be unique (after mapping to file names), got {[m.label for m in methods]}")
    if not methods:
        raise ValueError("nothing to compare: give --strategies and/or --also")
    return methods


def run_comparison(methods: list[Method], lengths: list[int], seeds: list[int], prompts: list[str],
                   base: SampleConfig, out_dir: str | Path, device: str = "cpu", feature: str = "pixels",
                   flow: str = "farneback", progress: bool = True) -> dict:
    """Run every (method, length, seed) on all prompts, evaluate, and write results.json + the report.

    Returns the results dict (what results.json holds). A run a method refuses (e.g. `full` over its
    attention memory limit) is recorded with its reason instead of metrics. results.json is
    rewritten (atomically) after every run with ``"complete": false`` until the last one, so an
    interrupted comparison keeps what it measured.
    """
    from vin.eval.evaluate import evaluate_frames
    from vin.eval.flops import analytic_flops
    from vin.eval.report import write_report
    from vin.generate import load_model

    out_dir = Path(out_dir)
    if not lengths or not seeds or not prompts:
        raise ValueError("compare needs at least one length, one seed and one prompt")
    models = {}
    for m in methods:  # load (and so check) every checkpoint and layout before the first run
        if m.checkpoint not in models:
            models[m.checkpoint] = load_model(m.checkpoint, device)
        model, cfg = models[m.checkpoint]
        for n in lengths:
            sample = replace(base, frames=n, strategy=m.strategy, chunk_frames=base.chunk_frames or cfg.model.chunk_frames)
            strategy_layout(sample, sample.chunk_frames)
            chunk_layout(n, sample.chunk_frames, sample.overlap)  # the reference windows of every method
            resolve_chunk_frames(model, sample)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    for path, (model, cfg) in models.items():  # untimed warm-up: the first call pays for allocator and code paths
        F = base.chunk_frames or cfg.model.chunk_frames
        with torch.no_grad():
            get_strategy("vin")(model, prompts[:1], replace(base, frames=F, steps=1, strategy="vin", chunk_frames=F),
                                (cfg.data.height, cfg.data.width), device)
    runs: list[dict] = []
    results = {"methods": [asdict(m) for m in methods], "lengths": lengths, "seeds": seeds, "prompts": prompts,
               "sample": asdict(base), "device": device, "torch_threads": torch.get_num_threads(),
               "feature": feature, "flow": flow, "complete": False, "runs": runs}

    def save() -> None:  # at the start (replacing an older comparison's) and after every run
        atomic_write_text(out_dir / "results.json", json.dumps(results, indent=1))

    save()
    for n in lengths:
        for m in methods:
            model, cfg = models[m.checkpoint]
            F = base.chunk_frames or cfg.model.chunk_frames
            for seed in seeds:
                sample = replace(base, frames=n, seed=seed, strategy=m.strategy, chunk_frames=F)
                ref_layout = chunk_layout(n, F, sample.overlap)
                ref = boundaries(ref_layout)
                run = {"method": m.label, "strategy": m.strategy, "checkpoint": m.checkpoint, "frames": n,
                       "seed": seed, "boundaries": ref,
                       "windows": [list(w) for w in strategy_layout(sample, F)]}
                if progress:
                    print(f"compare: {m.label} {n} frames seed {seed}", file=sys.stderr)
                size = (cfg.data.height, cfg.data.width)
                try:
                    _sync(device)
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        video = get_strategy(m.strategy)(model, prompts, sample, size, device)
                    _sync(device)
                    run["wall_s"] = time.perf_counter() - t0
                except AttentionLimitError as e:  # full/spectral over --attention-limit-gb
                    run["refused"] = str(e).splitlines()[0]
                    runs.append(run)
                    save()
                    continue
                run["flops"] = analytic_flops(cfg.model, sample, size, m.strategy, batch=len(prompts))["total"]
                run["videos"] = []
                for p, clip in enumerate(video):
                    frames = to_uint8(clip.float().cpu())
                    name = f"videos/{_slug(m.label)}-{n}f-s{seed}-p{p}.gif"
                    write_video(out_dir / name, frames, fps=cfg.data.fps, scale=4)
                    ev = evaluate_frames(frames, feature=feature, flow=flow, synthetic=True, fps=cfg.data.fps,
                                         layout=ref_layout, caption=prompts[p])
                    run["videos"].append({"prompt": prompts[p], "path": name, **ev})
                runs.append(run)
                save()
    results["complete"] = True
    save()
    write_report(results, out_dir)
    return results


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label)
