"""Tests for `vin compare` and its report: aggregation and best-value marking on known answers,
method parsing, and an end-to-end run on a tiny random model (every file written, GIFs and plots
embedded in the HTML, the metrics in the table are the ones in results.json)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vin.checkpoint import save_checkpoint
from vin.cli import main
from vin.config import load_config
from vin.eval.compare import Method, parse_methods
from vin.eval.report import aggregate, best_cells

from helpers import random_xs_model

REPO = Path(__file__).resolve().parents[1]


def _run(method, frames, seed, metrics, flops=1.0, wall=1.0):
    return {"method": method, "frames": frames, "seed": seed, "flops": flops, "wall_s": wall,
            "videos": [{"metrics": metrics}]}


def test_aggregate_means_and_stds_over_seeds():
    results = {"runs": [_run("a", 8, 0, {"seam_score": 1.0, "warp_error": 2.0}),
                        _run("a", 8, 1, {"seam_score": 3.0, "warp_error": 4.0, "scene_cuts": True}),
                        {"method": "b", "frames": 8, "seed": 0, "refused": "too long"}]}
    agg = aggregate(results)
    assert agg[("a", 8)]["seam_score"] == (2.0, 1.0)
    assert agg[("a", 8)]["warp_error"] == (3.0, 1.0)
    assert "scene_cuts" not in agg[("a", 8)]  # a bool is not a scalar metric
    assert agg[("b", 8)] == {}  # a refused run keeps its (empty) cell


def test_best_cells_follow_each_metrics_direction():
    agg = {("a", 8): {"identity_both": (0.9, 0), "warp_error": (2.0, 0), "seam_score": (1.3, 0), "mean_flow_magnitude": (5, 0)},
           ("b", 8): {"identity_both": (0.7, 0), "warp_error": (1.0, 0), "seam_score": (0.95, 0), "mean_flow_magnitude": (1, 0)},
           ("c", 8): {"identity_both": (0.9, 0), "warp_error": (3.0, 0), "seam_score": (2.0, 0), "mean_flow_magnitude": (3, 0)}}
    best = best_cells(agg, ["a", "b", "c"], 8, ["identity_both", "warp_error", "seam_score", "mean_flow_magnitude"])
    assert best["identity_both"] == {"a", "c"}  # higher is better, ties all marked
    assert best["warp_error"] == {"b"}  # lower is better
    assert best["seam_score"] == {"b"}  # closest to 1
    assert "mean_flow_magnitude" not in best  # no direction: not marked


def test_parse_methods(tmp_path):
    ckpt = tmp_path / "abl.safetensors"
    ckpt.write_bytes(b"x")
    methods = parse_methods(["vin", "full"], "main.safetensors", [f"no-global={ckpt}"])
    assert methods == [Method("vin", "vin", "main.safetensors"), Method("full", "full", "main.safetensors"),
                       Method("no-global", "vin", str(ckpt))]
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        parse_methods(["nope"], "c", [])
    with pytest.raises(ValueError, match="LABEL=CHECKPOINT"):
        parse_methods([], "c", ["no-equals-sign"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        parse_methods([], "c", ["x=/does/not/exist"])
    with pytest.raises(ValueError, match="unique"):
        parse_methods(["vin"], "c", [f"vin={ckpt}"])
    with pytest.raises(ValueError, match="unique"):  # both would write videos/no-global-*.gif
        parse_methods([], "c", [f"no global={ckpt}", f"no-global={ckpt}"])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """VIN-XS/4 with random weights on 16x16 frames, 4-frame chunks (every strategy runs in ms)."""
    overrides = ["data.height=16", "data.width=16", "model.chunk_frames=4", "train.context_frames=2"]
    cfg = load_config(None, overrides, preset="VIN-XS/4")
    model = random_xs_model(*overrides)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, cfg, model)
    return path


def test_compare_end_to_end(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["compare", "--checkpoint", str(tiny_checkpoint), "--strategies", "vin", "full", "independent",
               "--also", f"other={tiny_checkpoint}", "--frames", "8", "12", "--seeds", "0", "1",
               "--steps", "2", "--overlap", "2", "--out", str(out), "--quiet", "--threads", "1"])
    stdout, _ = capsys.readouterr()
    assert rc == 0 and stdout.split() == [str(out / "report.html"), str(out / "report.md")]
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4 * 2 * 2 and results["complete"] is True
    for run in results["runs"]:
        assert run["flops"] > 0 and run["wall_s"] > 0
        video = run["videos"][0]
        assert (out / video["path"]).is_file()
        assert 0 <= video["metrics"]["temporal_flickering"] <= 1
        # the same reference boundaries for chunked and whole-video methods
        assert run["boundaries"] == ([2, 4] if run["frames"] == 8 else [2, 4, 6, 8])
    # the same weights and seed: the `other` column (vin on the same file) equals `vin`
    by = {(r["method"], r["frames"], r["seed"]): r for r in results["runs"]}
    assert by[("vin", 12, 1)]["videos"][0]["metrics"] == by[("other", 12, 1)]["videos"][0]["metrics"]
    assert by[("vin", 12, 0)]["videos"][0]["metrics"] != by[("vin", 12, 1)]["videos"][0]["metrics"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/gif;base64,") == 4 * 2  # one per method and length (first seed)
    assert page.count("data:image/png;base64,") == 2 + 2  # metrics + compute plots, curves per length
    metrics_8 = page.split("<h3>8 frames</h3>")[1].split("<h3>")[0]
    assert "<td class='best'>" in metrics_8  # a metric column, not only the compute table, is marked
    md = (out / "report.md").read_text()
    for name in ("metrics_vs_length.png", "compute_vs_length.png", "curves-8f.png", "curves-12f.png"):
        assert (out / name).is_file() and name in md
    # the 12-frame table holds the aggregated values of results.json, in the columns named
    agg = aggregate(results)
    section = md.split("## 12 frames")[1].split("## ")[0]
    header = next(line for line in section.splitlines() if line.startswith("| method"))
    row = next(line for line in section.splitlines() if line.startswith("| full |"))
    cells = dict(zip([c.strip() for c in header.split("|")[1:-1]], [c.strip(" *") for c in row.split("|")[1:-1]]))
    mean, std = agg[("full", 12)]["temporal_flickering"]
    assert cells["temporal flickering ↑"] == f"{mean:.3f} ± {std:.3f}"
    # the compute table: FLOPs relative to the first method (vin); `other` is vin on the same weights
    row = next(line for line in md.splitlines() if line.startswith("| other |") and "e+" in line)
    assert row.split(" | ")[2] == "1.00"


def test_refused_runs_are_recorded_not_fatal(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["compare", "--checkpoint", str(tiny_checkpoint), "--strategies", "vin", "full", "--frames", "8",
               "--steps", "1", "--overlap", "2", "--attention-limit-gb", "1e-9", "--out", str(out), "--quiet"])
    capsys.readouterr()
    assert rc == 0
    runs = {r["method"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert "attention" in runs["full"]["refused"] and "videos" not in runs["full"]
    assert "videos" in runs["vin"]  # a chunked strategy does not need the whole-video attention
    md = (out / "report.md").read_text()
    assert re.search(r"^\| full \| refused", md, re.M)  # metrics table
    assert "| full | refused |" in md  # the video grid


def test_compare_records_a_stochastic_solver(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["compare", "--checkpoint", str(tiny_checkpoint), "--strategies", "vin", "--frames", "8", "--steps", "2",
               "--overlap", "2", "--solver", "ddim", "--eta", "1", "--out", str(out), "--quiet"])
    capsys.readouterr()
    assert rc == 0
    sample = json.loads((out / "results.json").read_text())["sample"]
    assert (sample["solver"], sample["eta"]) == ("ddim", 1.0)
    assert "ddim (eta 1), 2 steps" in (out / "report.md").read_text()


def test_an_interrupted_comparison_keeps_its_finished_runs(tiny_checkpoint, tmp_path, monkeypatch):
    """results.json is rewritten after every run: a crash in the third run leaves the first two."""
    import vin.eval.evaluate as evaluate

    real, calls = evaluate.evaluate_frames, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("crash in the third run")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_frames", failing)
    out = tmp_path / "c"
    from vin.config import SampleConfig
    from vin.eval.compare import run_comparison

    methods = parse_methods(["vin", "independent"], str(tiny_checkpoint), [])
    with pytest.raises(RuntimeError, match="third run"):
        run_comparison(methods, [8], [0, 1], ["a red circle"], SampleConfig(steps=1, overlap=2), out, progress=False)
    partial = json.loads((out / "results.json").read_text())
    assert partial["complete"] is False
    assert [(r["method"], r["seed"]) for r in partial["runs"]] == [("vin", 0), ("vin", 1)]
    assert all("videos" in r for r in partial["runs"]) and not (out / "report.html").exists()


def test_compare_bad_input_is_one_line(tmp_path, capsys):
    rc = main(["compare", "--strategies", "nope", "--out", str(tmp_path / "r")])
    _, err = capsys.readouterr()
    assert rc == 2 and err.strip().count("\n") == 0 and "unknown strategy 'nope'" in err
    assert not (tmp_path / "r").exists()
    rc = main(["compare", "--frames", "2", "--out", str(tmp_path / "r")])  # shorter than one chunk
    _, err = capsys.readouterr()
    assert rc == 2 and err.startswith("vin: error:") and not (tmp_path / "r").exists()
