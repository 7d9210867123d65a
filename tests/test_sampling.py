"""Tests for `vin.sampling`: per-frame noise, the VIN-parallel sampler, fusion schedule and CFG.

The sampler is checked against naive re-implementations (a plain Euler loop with per-frame fusion
written out by hand), so a wrong window, weight, fusion time or guidance pass shows up as a
numerical difference.
"""

from __future__ import annotations

import pytest
import torch

from vin.config import SampleConfig, load_config
from vin.diffusion.flow import guided, sample_ode, timestep_schedule
from vin.models.text import TextEmbedding
from vin.models.vin import VINModel
from vin.sampling.chunking import chunk_layout, split_chunks
from vin.sampling.noise import step_noise, video_noise
from vin.sampling.vin_parallel import fusion_active, sample_vin
from helpers import random_xs_model

H = W = 16
CAPTIONS = ["a red ball bouncing", "two blue squares"]



@pytest.fixture(scope="module")
def model() -> VINModel:
    """VIN-XS/4 with every zero-initialised parameter (adaLN, final layer, gates) made non-zero,
    so that the velocity, the captions and the global tokens all matter."""
    return random_xs_model()


def sample_cfg(**kw) -> SampleConfig:
    base = dict(frames=20, chunk_frames=8, overlap=4, steps=3, seed=0)
    base.update(kw)
    return SampleConfig(**base)


# ---------------------------------------------------------------------------------- noise


def test_video_noise_is_per_frame():
    long = video_noise(7, 2, 3, 40, H, W)
    short = video_noise(7, 2, 3, 20, H, W)
    assert long.shape == (2, 3, 40, H, W) and short.shape == (2, 3, 20, H, W)
    assert torch.equal(long[:, :, :20], short)
    # any frame range, in any order, gives the same frames
    assert torch.equal(video_noise(7, 2, 3, range(10, 30), H, W), long[:, :, 10:30])
    assert torch.equal(video_noise(7, 2, 3, range(35, 5, -10), H, W), long[:, :, [35, 25, 15]])
    # video b's noise does not depend on the batch size
    assert torch.equal(video_noise(7, 3, 3, 20, H, W)[:2], short)
    # frames, videos and seeds all get different noise
    assert not torch.equal(long[:, :, 0], long[:, :, 1])
    assert not torch.equal(long[0], long[1])
    assert not torch.equal(video_noise(8, 2, 3, 20, H, W), short)
    assert abs(long.mean().item()) < 0.02 and abs(long.std().item() - 1) < 0.02
    half = video_noise(7, 1, 3, 4, H, W, dtype=torch.float16)
    assert half.dtype == torch.float16


def test_step_noise_is_per_frame_and_fresh_each_step():
    """A stochastic solver's noise at step i: per frame like the initial noise (any frame range
    gives the same frames), different from the initial noise (step 0 included: numpy's
    SeedSequence would read a trailing 0 as no entry at all) and from every other step."""
    steps = [video_noise(7, 2, 3, 20, H, W, step=i) for i in range(3)]
    assert torch.equal(video_noise(7, 2, 3, range(5, 12), H, W, step=1), steps[1][:, :, 5:12])
    assert torch.equal(step_noise(7, 2, 3, range(5, 12), H, W)(2), steps[2][:, :, 5:12])
    initial = video_noise(7, 2, 3, 20, H, W)
    for i, z in enumerate(steps):
        assert not torch.equal(z, initial), i
        assert (z - initial).abs().max() > 1  # independent draws, not a shifted copy
        for later in steps[i + 1:]:
            assert not torch.equal(z, later)
    assert abs(steps[0].std().item() - 1) < 0.03


# ---------------------------------------------------------------------------- determinism


def test_same_seed_same_video_different_seed_different(model):
    a = sample_vin(model, CAPTIONS, sample_cfg(seed=0), (H, W))
    b = sample_vin(model, CAPTIONS, sample_cfg(seed=0), (H, W))
    c = sample_vin(model, CAPTIONS, sample_cfg(seed=1), (H, W))
    assert a.shape == (2, 3, 20, H, W)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1
    # the model did something: the result is not the initial noise
    assert (a - video_noise(0, 2, 3, 20, H, W)).abs().max() > 0.1


# ----------------------------------------------------------------------- a single chunk


@pytest.mark.parametrize("solver, cfg, shift, eta", [("euler", 1.0, 1.0, 0.0), ("heun", 2.5, 3.0, 0.0),
                                                     ("ddim", 1.0, 1.0, 1.0), ("ddim", 2.0, 1.0, 0.5)])
def test_single_chunk_is_plain_ode_integration(model, solver, cfg, shift, eta):
    """A video of exactly one chunk: no fusion, the sampler is sample_ode on the model (a stochastic
    one with the per-frame step noise of the run's seed)."""
    sc = sample_cfg(frames=8, steps=4, solver=solver, eta=eta, cfg=cfg, shift=shift, seed=5)
    got = sample_vin(model, CAPTIONS, sc, (H, W))
    with torch.no_grad():
        text = model.encode_text(CAPTIONS)
        null = model.encode_text(["", ""])

        def v_for(x, t, tx):
            tt = torch.full((2,), t)
            return model.denoise_chunks(x[:, None], tt, tx, model.read(x, tt, tx))[:, 0]

        def velocity(x, t):
            v = v_for(x, t, text)
            return v if cfg == 1.0 else guided(v, v_for(x, t, null), cfg)

        want = sample_ode(velocity, video_noise(5, 2, 3, 8, H, W), timestep_schedule(4, shift), solver,
                          eta=eta, noise=lambda i: video_noise(5, 2, 3, 8, H, W, step=i))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------- fusion schedule


@pytest.mark.parametrize("mode, span, expected", [
    # t:                 1.0    0.8    0.5    0.3    0.0
    ("always", 0.6, [True, True, True, True, True]),
    ("none", 0.6, [False, False, False, False, False]),
    ("early", 0.6, [True, True, True, False, False]),  # t >= 0.4
    ("late", 0.4, [False, False, False, True, True]),  # t <= 0.4
    ("mid", 0.5, [False, False, True, True, False]),  # 0.25 <= t <= 0.75
    ("early", 0.0, [True, False, False, False, False]),
    ("early", 1.0, [True, True, True, True, True]),
])
def test_fusion_active(mode, span, expected):
    assert [fusion_active(t, mode, span) for t in (1.0, 0.8, 0.5, 0.3, 0.0)] == expected


def test_fusion_active_unknown_mode():
    with pytest.raises(ValueError):
        fusion_active(0.5, "sometimes", 0.5)


def _naive_fuse(chunks: torch.Tensor, layout, num_frames: int, crossfade: bool) -> torch.Tensor:
    """Per frame: the earliest covering window ("owner"), or the paper's linear cross-fade over
    two windows overlapping by K frames (left (K - j) / (K + 1), right (j + 1) / (K + 1))."""
    B, _, C, _, h, w = chunks.shape
    out = torch.zeros(B, C, num_frames, h, w)
    for g in range(num_frames):
        cover = [i for i, (s, e) in enumerate(layout) if s <= g < e]
        a = cover[0]
        if not crossfade or len(cover) == 1:
            out[:, :, g] = chunks[:, a, :, g - layout[a][0]]
            continue
        assert len(cover) == 2, "the reference handles two-window overlaps only"
        b = cover[1]
        k = layout[a][1] - layout[b][0]
        j = g - layout[b][0]
        out[:, :, g] = ((k - j) * chunks[:, a, :, g - layout[a][0]] + (j + 1) * chunks[:, b, :, j]) / (k + 1)
    return out


def _naive_sampler(model, sc: SampleConfig, fuse_at) -> torch.Tensor:
    layout = chunk_layout(sc.frames, sc.chunk_frames, sc.overlap)
    with torch.no_grad():
        text = model.encode_text(CAPTIONS)
        x = video_noise(sc.seed, 2, 3, sc.frames, H, W)
        ts = timestep_schedule(sc.steps, sc.shift).tolist()
        for t, t_next in zip(ts[:-1], ts[1:]):
            tt = torch.full((2,), t)
            v = model.denoise_chunks(split_chunks(x, layout), tt, text, model.read(x, tt, text))
            x = x + (t_next - t) * _naive_fuse(v, layout, sc.frames, fuse_at(t))
    return x


@pytest.mark.parametrize("fusion", ["early", "always", "none"])
def test_sampler_matches_naive_fusion(model, fusion):
    # early, span 0.5, 4 steps: cross-fade at t = 1, 0.75, 0.5, owner weights at t = 0.25
    sc = sample_cfg(steps=4, fusion=fusion, fusion_span=0.5)
    expected_modes = {"early": [True, True, True, False], "always": [True] * 4, "none": [False] * 4}[fusion]
    ts = timestep_schedule(4).tolist()[:-1]
    got = sample_vin(model, CAPTIONS, sc, (H, W))
    want = _naive_sampler(model, sc, lambda t: expected_modes[ts.index(t)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_fusion_modes_make_a_difference(model):
    fused = sample_vin(model, CAPTIONS, sample_cfg(fusion="always"), (H, W))
    owner = sample_vin(model, CAPTIONS, sample_cfg(fusion="none"), (H, W))
    late = sample_vin(model, CAPTIONS, sample_cfg(fusion="late", fusion_span=0.5), (H, W))
    assert (fused - owner).abs().max() > 1e-3
    assert (late - owner).abs().max() > 1e-3 and (late - fused).abs().max() > 1e-3
    # frames covered by one window only are never fused: the first and last 4 frames of the
    # first step's update agree; with 3 steps the state differs everywhere, so compare 1 step
    one_f = sample_vin(model, CAPTIONS, sample_cfg(fusion="always", steps=1), (H, W))
    one_o = sample_vin(model, CAPTIONS, sample_cfg(fusion="none", steps=1), (H, W))
    torch.testing.assert_close(one_f[:, :, :4], one_o[:, :, :4], rtol=0, atol=0)
    torch.testing.assert_close(one_f[:, :, 16:], one_o[:, :, 16:], rtol=0, atol=0)
    assert (one_f[:, :, 4:16] - one_o[:, :, 4:16]).abs().max() > 1e-3


def test_overlap_larger_than_training_context(model, monkeypatch):
    """Overlap 6 in chunks of 8 (training context: 2 frames); frames under up to 4 windows."""
    assert model.cfg.chunk_frames == 8
    seen = []
    original = model.denoise_chunks

    def denoise(chunks, *args, **kw):
        seen.append(tuple(chunks.shape))
        return original(chunks, *args, **kw)

    monkeypatch.setattr(model, "denoise_chunks", denoise)
    sc = sample_cfg(overlap=6, fusion="always", steps=2)
    layout = chunk_layout(20, 8, 6)
    assert len(layout) == 7 and all(e0 - s1 >= 6 for (_, e0), (s1, _) in zip(layout, layout[1:]))
    fused = sample_vin(model, CAPTIONS, sc, (H, W))
    assert seen == [(2, 7, 3, 8, H, W)] * 2
    assert fused.shape == (2, 3, 20, H, W) and torch.isfinite(fused).all()
    monkeypatch.undo()
    # no fusion: every frame comes from its earliest window, checked against the naive sampler
    sc_owner = sample_cfg(overlap=6, fusion="none", steps=2)
    owner = sample_vin(model, CAPTIONS, sc_owner, (H, W))
    torch.testing.assert_close(owner, _naive_sampler(model, sc_owner, lambda t: False), rtol=0, atol=1e-5)
    assert (fused - owner).abs().max() > 1e-3
    # fused predictions are convex combinations: a constant velocity field is left unchanged
    with monkeypatch.context() as m:
        m.setattr(model, "read", lambda x, t, text: None)
        m.setattr(model, "denoise_chunks", lambda chunks, *a, **k: torch.ones_like(chunks))
        out = sample_vin(model, CAPTIONS, sc, (H, W))
    torch.testing.assert_close(out, video_noise(0, 2, 3, 20, H, W) - 1.0, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ CFG


class _Recorder:
    """Wraps a model's encode_text / read / denoise_chunks and records what they were given."""

    def __init__(self, model, monkeypatch):
        self.captions, self.reads, self.read_texts, self.denoises = [], [], [], []
        enc, read, den = model.encode_text, model.read, model.denoise_chunks

        def encode_text(captions):
            self.captions.append(list(captions))
            return enc(captions)

        def read_(x, t, text):
            z = read(x, t, text)
            self.reads.append((x.shape[0], t.clone(), text.tokens.shape[0]))
            self.read_texts.append(text.tokens.clone())
            return z

        def denoise(chunks, t, text, global_tokens, t_pos=None):
            self.denoises.append((chunks.shape[0], text.tokens.shape[0], global_tokens))
            return den(chunks, t, text, global_tokens, t_pos)

        monkeypatch.setattr(model, "encode_text", encode_text)
        monkeypatch.setattr(model, "read", read_)
        monkeypatch.setattr(model, "denoise_chunks", denoise)


def test_cfg_one_makes_no_unconditional_pass(model, monkeypatch):
    rec = _Recorder(model, monkeypatch)
    sample_vin(model, CAPTIONS, sample_cfg(cfg=1.0, steps=3), (H, W))
    assert rec.captions == [CAPTIONS]  # no empty caption is ever encoded
    assert [(b, n) for b, _, n in rec.reads] == [(2, 2)] * 3
    assert [(b, n) for b, n, _ in rec.denoises] == [(2, 2)] * 3


@pytest.mark.parametrize("cfg_global", ["shared", "recompute"])
def test_cfg_global(model, monkeypatch, cfg_global):
    rec = _Recorder(model, monkeypatch)
    out = sample_vin(model, CAPTIONS, sample_cfg(cfg=3.0, cfg_global=cfg_global, steps=3), (H, W))
    assert rec.captions == [CAPTIONS, ["", ""]]
    assert len(rec.reads) == 3  # one read per step
    assert [(b, n) for b, n, _ in rec.denoises] == [(4, 4)] * 3  # cond and uncond in one call
    for (_, t, _), ts in zip(rec.reads, timestep_schedule(3).tolist()):
        assert torch.all(t == ts)
    for _, _, z in rec.denoises:
        assert z.shape[0] == 4
        if cfg_global == "shared":  # the conditional Z is reused for the unconditional pass
            assert torch.equal(z[:2], z[2:])
        else:  # Z is read again with the empty caption
            assert (z[:2] - z[2:]).abs().max() > 1e-4
    batch = 2 if cfg_global == "shared" else 4
    assert [(b, n) for b, _, n in rec.reads] == [(batch, batch)] * 3
    monkeypatch.undo()
    with torch.no_grad():
        cond, null = model.encode_text(CAPTIONS).tokens, model.encode_text(["", ""]).tokens
    # shared: read with the real captions; recompute: captions then empty captions, one batch
    want = cond if cfg_global == "shared" else torch.cat([cond, null])
    assert all(torch.equal(tokens, want) for tokens in rec.read_texts)
    other = sample_vin(model, CAPTIONS, sample_cfg(cfg=3.0, cfg_global="recompute" if cfg_global == "shared" else "shared",
                                                   steps=3), (H, W))
    assert (out - other).abs().max() > 1e-4


def test_cfg_scale_is_applied(model):
    """cfg = 0 samples with the empty caption only: the same as cfg = 1 with empty captions."""
    uncond = sample_vin(model, CAPTIONS, sample_cfg(cfg=0.0, steps=2), (H, W))
    empty = sample_vin(model, ["", ""], sample_cfg(cfg=1.0, steps=2), (H, W))
    cond = sample_vin(model, CAPTIONS, sample_cfg(cfg=1.0, steps=2), (H, W))
    torch.testing.assert_close(uncond, empty, rtol=0, atol=1e-5)
    assert (uncond - cond).abs().max() > 1e-3


def test_use_global_false_never_reads(model, monkeypatch):
    rec = _Recorder(model, monkeypatch)
    sample_vin(model, CAPTIONS, sample_cfg(steps=2), (H, W), use_global=False)
    assert rec.reads == []
    assert all(z is None for _, _, z in rec.denoises) and len(rec.denoises) == 2


def test_text_embedding_cat_and_take(model):
    with torch.no_grad():
        a, b = model.encode_text(["one"]), model.encode_text(["two words", "three more words"])
    both = TextEmbedding.cat([a, b])
    assert both.tokens.shape[0] == 3
    picked = both.take(torch.tensor([2, 0]))
    assert torch.equal(picked.tokens[0], b.tokens[1]) and torch.equal(picked.pooled[1], a.pooled[0])
