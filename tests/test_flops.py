"""Compute accounting (`vin.eval.flops`, `vin.eval.paper_scale`) and `vin bench` over strategies.

The analytic FLOPs must equal what FlopCounterMode counts on the real samplers, part by part and
exactly (both count matmuls only: linear layers and attention products; elementwise ops are left
out of both). The pieces have known answers computed by hand here.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from helpers import random_xs_model
from vin.config import STRATEGIES, SampleConfig
from vin.eval.flops import (PARTS, analytic_flops, attention_flops, count, counted_flops, flop_counter, frozen,
                            linear_flops)
from vin.eval.paper_scale import PAPER_MODEL, latent_frames, paper_scale_table, stdit_flops
from vin.models.text import TextEmbedding

SIZE = (16, 16)
CAPTION = ["a red circle on a blue background"]


@pytest.fixture(scope="module")
def xs():
    return random_xs_model()


def _counted_total(fn) -> int:
    with flop_counter() as c:
        fn()
    return c.get_total_flops()


# ------------------------------------------------------------------------------ known answers

def test_linear_known_answer():
    layer = torch.nn.Linear(5, 7)
    x = torch.randn(3, 4, 5)
    assert linear_flops(12, 5, 7) == 840  # 12 rows x 5 x 7 multiply-adds, 2 FLOPs each
    assert _counted_total(lambda: layer(x)) == 840


def test_sdpa_formula_matches_manual_count_with_float_mask():
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 8)
    mask = torch.zeros(2, 1, 1, 12).masked_fill(torch.arange(12) > 9, float("-inf"))  # like key_padding_bias
    manual = 2 * (2 * 3 * 10 * 12 * 8) * 2  # q k^T and p v: b h Lq Lk d multiply-adds each
    assert manual == 23040 == attention_flops(2, 3, 10, 12, 8)
    with flop_counter() as c:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert c.get_total_flops() == manual
    # the op CPU actually runs, also with an additive float mask, is the one the formula is for
    ops = {str(op) for op in c.get_flop_counts()["Global"]}
    assert ops == {"aten._scaled_dot_product_flash_attention_for_cpu"}


def test_sdpa_math_backend_counts_the_same():
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8)
    for v in (torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 16)):  # value width = or != query width
        mask = torch.randn(10, 12)
        flash = _counted_total(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        with sdpa_kernel(SDPBackend.MATH):  # decomposes into two bmm, which torch counts itself
            math = _counted_total(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        assert flash == math == attention_flops(2, 3, 10, 12, 8, v.shape[-1])


def test_sdpa_backward_formula_matches_manual_count():
    b, h, lq, lk, d = 2, 3, 10, 12, 8
    q = torch.randn(b, h, lq, d, requires_grad=True)
    k = torch.randn(b, h, lk, d, requires_grad=True)
    v = torch.randn(b, h, lk, d, requires_grad=True)
    with flop_counter() as c:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    # forward: 2 products; backward: scores recomputed, dP = dO v^T, dV = P^T dO, dQ = dS k, dK = dS^T q
    assert c.get_total_flops() == (2 + 5) * 2 * b * h * lq * lk * d


def test_count_does_not_depend_on_grad(xs, monkeypatch):
    """Frozen parameters (needed under the samplers' no_grad) change no FLOP, except that trainable
    global-token gates take `attention_with_key_logits` on the CPU: one more q/k and v channel per
    head, 2 * 2 q k more products per attention map, and nothing else."""
    from vin.models import layers

    x, t = torch.randn(2, 3, 8, *SIZE), torch.rand(2)
    z = torch.randn(2, xs.cfg.vin.num_global, xs.cfg.vin.width)
    shapes, fold = [], layers.attention_with_key_logits
    monkeypatch.setattr(layers, "attention_with_key_logits", lambda q, *a: shapes.append(q.shape) or fold(q, *a))

    def call():
        text = xs.encode_text(CAPTION * 2)
        return xs.dit(x, t, text, z)

    with torch.enable_grad():
        with_grad = count(call)
    assert len(shapes) == xs.cfg.dit.depth
    with frozen(xs), torch.no_grad():
        without = count(call)
    assert len(shapes) == xs.cfg.dit.depth  # frozen: the plain path
    extra = sum(2 * b * h * lq * lq * 2 for b, h, lq, _ in shapes)
    assert with_grad.keys() == without.keys() and without["total"] > 0
    differ = {part: with_grad[part] - without[part] for part in with_grad if with_grad[part] != without[part]}
    assert set(differ) <= {"total", "dit_attention", "attention"} and differ["total"] == extra, differ
    assert sum(v for k, v in differ.items() if k != "total") == extra  # all of it in the one attention part
    assert all(p.requires_grad for p in xs.parameters())  # restored


def test_dit_flops_known_answer(xs):
    """One DiT call by hand: VIN-XS/4 (width 32, 2 blocks, MLP 128), a chunk of 8 frames of 16x16
    (patch 2x4x4: 4 x 16 = 64 video tokens of 96 values), 24 caption tokens of width 32, 8 global tokens."""
    D, S, n_x, P = 32, 24 + 8 + 64, 64, 96
    linear = 2 * (n_x * P * D + 256 * D + D * D + 32 * D + 24 * 32 * D + D * 2 * D + n_x * D * P + 8 * 32 * D
                  + 2 * (D * 6 * D + S * D * D * 4 + S * D * 128 * 2))
    attention = 2 * 4 * S * S * D
    text = TextEmbedding(torch.randn(1, 24, 32), torch.ones(1, 24, dtype=torch.bool), torch.randn(1, 32))
    with frozen(xs), torch.no_grad():
        got = count(lambda: xs.dit(torch.randn(1, 3, 8, *SIZE), torch.rand(1), text, torch.randn(1, 8, 32)))
    assert (got["dit_linear"], got["dit_attention"]) == (linear, attention)


# ------------------------------------------------------------------------------ analytic = counted

@pytest.mark.parametrize("frames", [16, 20])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_analytic_equals_counted(xs, strategy, frames):
    sample = SampleConfig(frames=frames, steps=2, overlap=4)
    counted = counted_flops(xs, CAPTION, sample, SIZE, strategy)
    assert counted["other"] == 0
    assert {p: counted[p] for p in (*PARTS, "total")} == analytic_flops(xs.cfg, sample, SIZE, strategy)


SETTINGS = {
    "cfg_recompute": dict(cfg=3.0),
    "cfg_shared": dict(cfg=3.0, cfg_global="shared"),
    "heun": dict(solver="heun"),
    "zeros": dict(global_tokens="zeros"),
    "none": dict(global_tokens="none"),
    "stride3_overlap2": dict(keyframe_stride=3, overlap=2),
}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_analytic_equals_counted_settings(xs, strategy, setting):
    sample = SampleConfig(frames=20, steps=2, **SETTINGS[setting])
    captions = CAPTION + ["a white square"] if setting == "cfg_recompute" else CAPTION  # and batch 2
    counted = counted_flops(xs, captions, sample, SIZE, strategy)
    assert {p: counted[p] for p in (*PARTS, "total")} == analytic_flops(xs.cfg, sample, SIZE, strategy, len(captions))


@pytest.mark.parametrize("override", ["model.vin.inject=cross", "model.vin.enabled=false", "model.dit.refine_width=8"])
@pytest.mark.parametrize("strategy", ["vin", "full", "autoregressive", "spectral"])
def test_analytic_equals_counted_other_models(strategy, override):
    model = random_xs_model(override)
    sample = SampleConfig(frames=16, steps=1, overlap=4, cfg=2.0)
    counted = counted_flops(model, CAPTION, sample, SIZE, strategy)
    assert {p: counted[p] for p in (*PARTS, "total")} == analytic_flops(model.cfg, sample, SIZE, strategy)


@pytest.mark.parametrize("strategy, solver", [("vin", "euler"), ("autoregressive", "euler"), ("spectral", "heun")])
def test_counted_flops_affine_in_steps(xs, strategy, solver):
    """The extrapolation from 1 and 2 steps equals a real count at 4 steps."""
    sample = SampleConfig(frames=16, steps=4, overlap=4, solver=solver)
    assert counted_flops(xs, CAPTION, sample, SIZE, strategy) == \
        counted_flops(xs, CAPTION, sample, SIZE, strategy, extrapolate=False)


def test_strategy_relations(xs):
    """Known relations between strategies, from the samplers' definitions."""
    mc = xs.cfg
    s = SampleConfig(frames=24, steps=10, overlap=4)
    flops = {name: analytic_flops(mc, s, SIZE, name) for name in STRATEGIES}
    assert flops["vin"] == flops["freenoise"]  # the same windows, reads and DiT calls
    assert flops["independent"]["vin_read"] == flops["independent"]["vin_processor"] == 0
    assert flops["spectral"]["dit_attention"] == 2 * flops["full"]["dit_attention"]
    assert flops["spectral"]["dit_linear"] == flops["full"]["dit_linear"]
    one_chunk = replace(s, frames=8)  # full on one chunk's length is vin on one chunk
    assert analytic_flops(mc, one_chunk, SIZE, "full") == analytic_flops(mc, one_chunk, SIZE, "vin")
    doubled = analytic_flops(mc, replace(s, cfg=2.0), SIZE, "vin")  # recompute: everything runs twice
    assert all(doubled[k] == 2 * flops["vin"][k] for k in doubled)
    # autoregressive = vin's DiT work (one chain per chunk, same chunks, same steps) but reads of prefixes
    assert flops["autoregressive"]["dit_linear"] == flops["vin"]["dit_linear"]
    assert flops["autoregressive"]["text"] == flops["vin"]["text"]  # 5 chunks, the same captions encoded once
    assert flops["autoregressive"]["vin_processor"] == 5 * flops["vin"]["vin_processor"]


# ------------------------------------------------------------------------------ paper scale

def test_paper_latent_frames_and_chunks():
    assert [latent_frames(f) for f in (64, 128, 256, 512)] == [20, 40, 80, 160]
    with pytest.raises(ValueError, match="multiple of 16"):
        latent_frames(100)
    rows = paper_scale_table(layouts=((20, 12),), variants=("joint",))
    assert [r["chunks"] for r in rows] == [1, 4, 9, 19]  # ceil((N - 12) / 8) windows


def test_paper_full_joint_dominant_terms():
    """Full attention over 512 frames = 160 x 240 video tokens + 300 caption tokens: 28 blocks of
    q/kv/proj/MLP (24 S D^2) and attention (4 S^2 D) make up all but a fraction of a per cent."""
    (row,) = paper_scale_table(lengths=(512,), layouts=((20, 12),), variants=("joint",))
    S, D = 160 * 240 + 300, 1152
    hand = 28 * (24 * S * D * D + 4 * S * S * D)
    assert hand <= row["full_flops"] < 1.001 * hand
    assert row["ratio"] == row["vin_flops"] / row["full_flops"]


def test_paper_stdit_dominant_terms():
    """ST-DiT over T latent frames of 240 tokens: 56 blocks of self-attention projections (8 N D^2),
    cross-attention q/proj (4 N D^2), MLP (16 N D^2), spatial (4 T 240^2 D) or temporal
    (4 x 240 T^2 D) attention and cross-attention to 300 caption keys (4 N 300 D)."""
    T, D = 160, 1152
    N = T * 240
    hand = 28 * (2 * (28 * N * D * D + 4 * N * 300 * D) + 4 * T * 240 * 240 * D + 4 * 240 * T * T * D)
    got = stdit_flops(T, 1, 0)
    assert hand <= got < 1.002 * hand
    assert PAPER_MODEL.vin.num_global == 512 and PAPER_MODEL.vin.width == 4096


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_meta_device_counts_the_same(xs, strategy):
    sample = SampleConfig(frames=20, steps=2, overlap=4, cfg=2.0)
    assert counted_flops(xs, CAPTION, sample, SIZE, strategy, meta=True) == counted_flops(xs, CAPTION, sample, SIZE, strategy)


# ------------------------------------------------------------------------------ vin bench

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """VIN-XS/4 with random non-zero weights at 16x16, saved like a training checkpoint."""
    from vin.checkpoint import save_checkpoint
    from vin.config import load_config

    cfg = load_config(None, ["data.height=16", "data.width=16"], preset="VIN-XS/4")
    path = tmp_path_factory.mktemp("bench") / "xs.safetensors"
    save_checkpoint(path, cfg, random_xs_model())
    return path


def _cli(argv, capsys):
    from vin.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_bench_strategies_timed_json(tiny_checkpoint, tmp_path, capsys):
    """Timed rows in fresh processes, a refused full-attention row, counted = analytic, JSON written."""
    out = tmp_path / "bench.json"
    # full at 16 frames: 2 heads x (8 x 16 + 24 + 8)^2 x 4 B = 205 kB > 1e-4 GiB = 107 kB > 74 kB at 8 frames
    rc, stdout, err = _cli(["bench", "--strategies", "vin", "full", "--frames", "8", "16", "--steps", "2",
                            "--checkpoint", str(tiny_checkpoint), "--count-flops", "--attention-limit-gb", "1e-4",
                            "--out", str(out), "--quiet"], capsys)
    assert rc == 0, err
    record = json.loads(out.read_text())
    rows = {(r["strategy"], r["frames"]): r for r in record["rows"]}
    assert list(rows) == [("vin", 8), ("full", 8), ("vin", 16), ("full", 16)]
    assert rows[("full", 16)]["status"] == "refused" and "attention" in rows[("full", 16)]["reason"]
    assert rows[("full", 16)]["wall_s"] is None and "refused" in stdout
    model = random_xs_model()
    for (strategy, frames), r in rows.items():
        sample = SampleConfig(frames=frames, steps=2, chunk_frames=8, attention_limit_gb=1e-4)
        assert r["flops_parts"] == analytic_flops(model.cfg, sample, SIZE, strategy)
        if r["status"] == "ok":
            assert r["counted_flops"] == r["flops"]
            assert len(r["wall_s_runs"]) == 1 and r["wall_s"] > 0 and r["peak_mem_mb"] >= 0
    assert rows[("vin", 16)]["windows"] == 3  # chunks of 8, overlap 4
    assert record["sample"]["steps"] == 2 and record["frame_size"] == [16, 16]
    assert "| vin | 16 | 3 |" in stdout


def test_measure_flops_only(tiny_checkpoint):
    from vin.eval.bench import measure

    sample = SampleConfig(frames=12, steps=3, cfg=2.0)
    row = measure(tiny_checkpoint, "autoregressive", sample, ["a", "b"], timed=False, count_flops=True)
    assert row["status"] == "not timed" and row["wall_s"] is None and row["windows"] == 2
    assert row["flops_parts"] == analytic_flops(random_xs_model().cfg, sample, SIZE, "autoregressive", batch=2)
    assert row["counted_flops"] == row["flops"] and row["counted_flops_parts"]["other"] == 0


def test_bench_procs_still_works(tiny_checkpoint, capsys):
    rc, stdout, err = _cli(["bench", "--procs", "1", "--frames", "12", "--steps", "1",
                            "--checkpoint", str(tiny_checkpoint)], capsys)
    assert rc == 0, err
    assert "| processes |" in stdout and "| 1 | 2 |" in stdout  # 1 process holding both chunks


def test_bench_paper_json(tmp_path, capsys):
    out = tmp_path / "paper.json"
    rc, stdout, err = _cli(["bench", "--paper", "--out", str(out)], capsys)
    assert rc == 0, err
    rows = json.loads(out.read_text())["paper"]
    assert len(rows) == 2 * 3 * 4  # variants x layouts x lengths
    assert "| 20/12 | 512 | 160 | 19 |" in stdout and "25-40% fewer FLOPs" in stdout


@pytest.mark.parametrize("argv, words", [
    (["--strategies", "vin", "--frames", "5"], ["vin at 5 frames", "5 frames"]),
    (["--strategies", "full", "--frames", "7"], ["full at 7 frames", "temporal patch"]),
    (["--strategies", "vin", "--procs", "1"], ["--procs", "--strategies"]),
    (["--strategies", "vin", "--repeats", "0"], ["repeats"]),
    (["--strategies", "nope"], ["nope"]),
    (["--count-flops"], ["--strategies"]),
    (["--procs", "1", "--out", "x.json"], ["--out"]),
])
def test_bench_bad_input(tiny_checkpoint, tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = _cli(["bench", "--checkpoint", str(tiny_checkpoint), *argv], capsys)
    assert rc == 2 and stdout == ""
    (line,) = err.splitlines()
    assert line.startswith("vin: error: ") and all(w in line for w in words), line
    assert list(tmp_path.iterdir()) == []


def test_bench_row_of_a_dead_process(tiny_checkpoint, monkeypatch):
    """A measuring process that dies (e.g. killed for memory) makes a "failed" row, not a hang or a crash."""
    from concurrent.futures.process import BrokenProcessPool

    from vin.eval import bench

    def dies(*args):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(bench, "_in_fresh_process", dies)
    record = bench.bench_strategies(tiny_checkpoint, ["vin"], [8], SampleConfig(steps=1), ["a"])
    (row,) = record["rows"]
    assert row["status"] == "failed" and "died" in row["reason"] and row["wall_s"] is None
    assert "| vin | 8 | 1 | failed |" in bench.format_strategy_table(record)


def test_peak_memory_excludes_the_parent(tiny_checkpoint):
    """The measuring process is spawned from this one; its peak must not include our memory (on
    Linux ru_maxrss of a spawned child does: the forked image's peak survives the exec)."""
    from vin.eval.bench import measure

    ballast = torch.ones(100_000_000)  # 400 MB resident here
    row = measure(tiny_checkpoint, "vin", SampleConfig(frames=8, steps=1), ["a"])
    assert ballast[-1] == 1 and row["status"] == "ok"
    assert 0 <= row["peak_mem_mb"] < 200  # a tiny model on 8 frames of 16x16 needs a few MB


@pytest.mark.parametrize("strategy", ["vin", "spectral", "freenoise", "independent"])
def test_meta_device_counts_the_same_with_a_refiner(strategy):
    model = random_xs_model("model.dit.refine_width=8")
    sample = SampleConfig(frames=20, steps=2, overlap=4)
    meta = counted_flops(model, CAPTION, sample, SIZE, strategy, meta=True)
    assert meta == counted_flops(model, CAPTION, sample, SIZE, strategy) == \
        {**analytic_flops(model.cfg, sample, SIZE, strategy), "other": 0}
