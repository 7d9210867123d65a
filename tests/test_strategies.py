"""Tests for the long-video strategies (`vin.sampling.strategies`): one signature, the same weights.

Equivalences are checked on a "trained-like" tiny model (all zero-initialised parameters made
random and the global-token gate open), since a fresh DiT predicts exactly 0 and every strategy
would then return its initial noise: vin on one chunk is full; vin without global tokens is the
independent chunk velocity plus the fusion; spectral with cut-off 1 is full; autoregressive holds
its context frames to the known frames; FreeNoise's noise repeats the first window, shuffled.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.nn.functional as F

from vin.checkpoint import save_checkpoint
from vin.cli import main
from vin.config import STRATEGIES as CONFIG_STRATEGIES
from vin.config import SampleConfig, load_config
from vin.diffusion.flow import sample_ode, timestep_schedule
from vin.models.vin import VINModel
from vin.sampling import autoregressive, freenoise, full, independent, spectral, vin_parallel
from vin.sampling.chunking import chunk_layout, fusion_weights, merge_chunks, split_chunks
from vin.sampling.common import encode, prompt_schedule, video_positions
from vin.sampling.noise import video_noise
from vin.sampling.strategies import STRATEGIES, progress_steps
from helpers import random_xs_model

H = W = 16
CAPTIONS = ["a red ball bouncing", "two blue squares"]



@pytest.fixture(scope="module")
def model() -> VINModel:
    return random_xs_model()


def sc(**kw) -> SampleConfig:
    base = dict(frames=20, chunk_frames=8, overlap=4, steps=2, seed=0)
    base.update(kw)
    return SampleConfig(**base)


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# Two strategies that must agree run the same chains in batches of different shapes, which take
# different float32 GEMM kernels: the samples (|x| up to ~6 after guidance 2) then differ by ~10 ulp
# (4.3e-6 measured for autoregressive vs independent, on AVX2 and AVX-512 CPUs alike). A real
# difference between the chains is > 1e-3 (the tests below check that the ablations do differ).
ROUNDING = 2e-5


# ------------------------------------------------------------------------------ the registry


def test_registry_is_the_config_list_with_one_signature():
    assert tuple(STRATEGIES) == CONFIG_STRATEGIES
    params = {name: list(inspect.signature(fn).parameters) for name, fn in STRATEGIES.items()}
    assert all(p == ["model", "captions", "cfg", "frame_size", "device", "progress"] for p in params.values()), params


@pytest.mark.parametrize("name", CONFIG_STRATEGIES)
def test_shape_determinism_progress(model, name):
    cfg = sc(strategy=name, cfg=2.0)
    calls = []
    a = STRATEGIES[name](model, CAPTIONS, cfg, (H, W), progress=lambda i, t: calls.append(i))
    b = STRATEGIES[name](model, CAPTIONS, cfg, (H, W))
    c = STRATEGIES[name](model, CAPTIONS, sc(strategy=name, cfg=2.0, seed=1), (H, W))
    assert a.shape == (2, 3, 20, H, W) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1
    assert calls == list(range(progress_steps(cfg, 8)))
    assert (a - video_noise(0, 2, 3, 20, H, W)).abs().max() > 0.1  # the model did something


@pytest.mark.parametrize("name", CONFIG_STRATEGIES)
def test_ddim_in_every_strategy(model, name):
    """--solver ddim: eta 0 is the Euler video bit for bit; eta 1 draws fresh noise every step
    (reproducibly from the seed), so the video changes, and changes with the seed."""
    euler = STRATEGIES[name](model, CAPTIONS, sc(strategy=name, steps=3), (H, W))
    assert torch.equal(STRATEGIES[name](model, CAPTIONS, sc(strategy=name, steps=3, solver="ddim"), (H, W)), euler)
    a = STRATEGIES[name](model, CAPTIONS, sc(strategy=name, steps=3, solver="ddim", eta=1.0), (H, W))
    b = STRATEGIES[name](model, CAPTIONS, sc(strategy=name, steps=3, solver="ddim", eta=1.0), (H, W))
    c = STRATEGIES[name](model, CAPTIONS, sc(strategy=name, steps=3, solver="ddim", eta=1.0, seed=1), (H, W))
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert (a - euler).abs().max() > 0.1 and (a - c).abs().max() > 0.1


# ------------------------------------------------------------------------------ equivalences


@pytest.mark.parametrize("global_tokens, eta", [("read", 0.0), ("zeros", 0.0), ("read", 1.0)])
def test_vin_on_one_chunk_is_full(model, global_tokens, eta):
    cfg = dict(frames=8, cfg=2.0, global_tokens=global_tokens, steps=3, solver="ddim" if eta else "euler", eta=eta)
    close(vin_parallel.sample(model, CAPTIONS, sc(**cfg), (H, W)), full.sample(model, CAPTIONS, sc(**cfg), (H, W)), ROUNDING)


def test_full_positions_switch(model):
    assert video_positions(4, 4, "interpolate", "cpu") is None  # one chunk: a chunk's own positions
    torch.testing.assert_close(video_positions(7, 4, "interpolate", "cpu"), torch.linspace(0, 3, 7))
    torch.testing.assert_close(video_positions(7, 4, "extrapolate", "cpu"), torch.arange(7.0))
    a = full.sample(model, CAPTIONS, sc(frames=16, positions="interpolate"), (H, W))
    b = full.sample(model, CAPTIONS, sc(frames=16, positions="extrapolate"), (H, W))
    assert (a - b).abs().max() > 1e-3


def test_vin_without_global_tokens_is_independent(model):
    # windows that do not overlap: no fusion to do, so vin without global tokens IS independent
    assert chunk_layout(24, 8, 0) == ((0, 8), (8, 16), (16, 24))
    for fusion, eta in (("early", 0.0), ("none", 0.0), ("early", 1.0)):  # eta 1: the same step noise per frame
        cfg = sc(frames=24, overlap=0, global_tokens="none", fusion=fusion, cfg=2.0, solver="ddim", eta=eta)
        close(vin_parallel.sample(model, CAPTIONS, cfg, (H, W)), independent.sample(model, CAPTIONS, cfg, (H, W)), ROUNDING)
    # overlapping windows: vin without global tokens = the independent chunk velocity + the fusion
    cfg = sc(global_tokens="none", fusion="always", cfg=2.0)
    layout = chunk_layout(20, 8, 4)
    weights = fusion_weights(layout, 20, "crossfade")
    with torch.no_grad():
        cond = encode(model, CAPTIONS, cfg, len(layout), "independent")
        want = sample_ode(lambda x, t: merge_chunks(independent.chunk_velocity(model, split_chunks(x, layout), t, cond, cfg),
                                                    layout, weights),
                          video_noise(0, 2, 3, 20, H, W), timestep_schedule(cfg.steps))
    got = vin_parallel.sample(model, CAPTIONS, cfg, (H, W))
    close(got, want, ROUNDING)
    # ... and independent (no fusion, no shared state) differs, as do the token ablations
    assert (got - independent.sample(model, CAPTIONS, cfg, (H, W))).abs().max() > 1e-3
    read = vin_parallel.sample(model, CAPTIONS, sc(fusion="always", cfg=2.0), (H, W))
    zeros = vin_parallel.sample(model, CAPTIONS, sc(fusion="always", cfg=2.0, global_tokens="zeros"), (H, W))
    assert min((read - got).abs().max(), (zeros - got).abs().max(), (zeros - read).abs().max()) > 1e-3


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_autoregressive_without_context_is_independent(model, eta):
    """Windows that share no frame and no global tokens: each autoregressive chunk is its own chain
    from its own frames' noise, as in independent (eta 1: the step noise of the same frames)."""
    cfg = sc(frames=24, overlap=0, global_tokens="none", cfg=2.0, steps=3, solver="ddim", eta=eta)
    close(autoregressive.sample(model, CAPTIONS, cfg, (H, W)), independent.sample(model, CAPTIONS, cfg, (H, W)), ROUNDING)


def test_independent_ignores_global_tokens(model, monkeypatch):
    monkeypatch.setattr(model, "read", lambda *a, **k: pytest.fail("independent must not read"))
    a = independent.sample(model, CAPTIONS, sc(global_tokens="read"), (H, W))
    close(a, independent.sample(model, CAPTIONS, sc(global_tokens="none"), (H, W)), 0)


def test_keyframe_stride_override(model, monkeypatch):
    seen = []
    read = model.interface.keyframe_indices
    monkeypatch.setattr(model.interface, "keyframe_indices", lambda *a, **k: seen.append(read(*a, **k)) or seen[-1])
    a = vin_parallel.sample(model, CAPTIONS, sc(steps=1), (H, W))
    b = vin_parallel.sample(model, CAPTIONS, sc(steps=1, keyframe_stride=2), (H, W))
    assert seen[0].tolist() == [0, 4, 8, 12, 16] and seen[1].tolist() == list(range(0, 20, 2))
    assert (a - b).abs().max() > 1e-4


# ---------------------------------------------------------------------------- autoregressive


def test_autoregressive_holds_the_known_context(model, monkeypatch):
    cfg = sc(strategy="autoregressive", steps=3)
    layout = chunk_layout(20, 8, 4)
    assert layout == ((0, 8), (4, 12), (8, 16), (12, 20))
    calls, reads = [], []
    den, read = model.denoise_chunks, model.read

    def denoise(chunks, t, *a, **k):
        calls.append((chunks[:, 0].clone(), float(t[0])))
        return den(chunks, t, *a, **k)

    monkeypatch.setattr(model, "denoise_chunks", denoise)
    monkeypatch.setattr(model, "read", lambda x, *a, **k: reads.append(x.shape[2]) or read(x, *a, **k))
    out = autoregressive.sample(model, CAPTIONS, cfg, (H, W))
    monkeypatch.undo()
    assert len(calls) == 4 * 3
    # the read sees only what exists so far: the prefix up to the end of the current chunk
    assert reads == [8] * 3 + [12] * 3 + [16] * 3 + [20] * 3
    noise = video_noise(0, 2, 3, 20, H, W)
    for k, (s, e) in enumerate(layout[1:], start=1):
        for x, t in calls[3 * k:3 * k + 3]:
            # the context frames the model sees are the known frames re-noised to t
            close(x[:, :, :4], (1 - t) * out[:, :, s:s + 4] + t * noise[:, :, s:s + 4], 1e-6)
    # the first chunk is an ordinary one-chunk chain, never rewritten by the later chunks
    close(out[:, :, :8], vin_parallel.sample(model, CAPTIONS, sc(frames=8, steps=3), (H, W)), ROUNDING)
    # and every chunk is its own chain: chunk 1 alone (with chunk 0 as context) gives frames 8..12
    two = autoregressive.sample(model, CAPTIONS, sc(frames=12, steps=3, strategy="autoregressive"), (H, W))
    close(two, out[:, :, :12], ROUNDING)


# ------------------------------------------------------------------------------------ FreeNoise


def test_freenoise_noise_structure():
    noise, source = freenoise.freenoise_noise(3, 2, 3, 30, 8, 3, H, W)
    base = video_noise(3, 2, 3, 8, H, W)
    assert noise.shape == (2, 3, 30, H, W)
    assert torch.equal(noise[:, :, :8], base)  # the first window: the ordinary per-frame noise
    for b in range(2):
        for f in range(30):
            assert torch.equal(noise[b, :, f], base[b, :, source[b, f]])  # every frame repeats window 1
        for i in range(8, 30, 3):  # each block is a permutation of the block one window earlier
            m = min(3, 30 - i)
            assert sorted(source[b, i:i + m].tolist()) == sorted(source[b, i - 8:i - 8 + m].tolist())
    assert not torch.equal(source[:, 8:16], source[:, :8])  # it was shuffled
    assert not torch.equal(source[0], source[1])  # per video
    assert torch.equal(freenoise.freenoise_noise(3, 1, 3, 30, 8, 3, H, W)[0], noise[:1])  # batch-independent
    # a stochastic solver's step noise is rescheduled the same way: fresh, but the same pattern
    fresh, same = freenoise.freenoise_noise(3, 2, 3, 30, 8, 3, H, W, step=4)
    assert torch.equal(same, source)
    step_base = video_noise(3, 2, 3, 8, H, W, step=4)
    assert not torch.equal(step_base, base)
    for b in range(2):
        assert torch.equal(fresh[b], step_base[b][:, source[b]])


def test_freenoise_starts_from_that_noise_and_averages(model, monkeypatch):
    monkeypatch.setattr(model, "denoise_chunks", lambda chunks, *a, **k: torch.zeros_like(chunks))
    out = freenoise.sample(model, CAPTIONS, sc(), (H, W))
    assert torch.equal(out, freenoise.freenoise_noise(0, 2, 3, 20, 8, 4, H, W)[0])
    layout = chunk_layout(20, 8, 4)
    pyr = freenoise.window_weights(layout, 20, "pyramid")
    flat = freenoise.window_weights(layout, 20, "flat")
    for wts in (pyr, flat):
        torch.testing.assert_close(merge_chunks(torch.ones(1, 4, 1, 8, 1, 1), layout, wts), torch.ones(1, 1, 20, 1, 1))
    assert (pyr[0] / pyr[0, 0]).tolist()[:4] == [1.0, 1.0, 1.0, 1.0]  # frames 0-3 are under one window only
    assert flat[1, :4].tolist() == [0.5] * 4
    monkeypatch.undo()
    a = freenoise.sample(model, CAPTIONS, sc(freenoise_weights="flat"), (H, W))
    b = freenoise.sample(model, CAPTIONS, sc(freenoise_weights="pyramid"), (H, W))
    assert (a - b).abs().max() > 1e-4


# ------------------------------------------------------------------------------------- spectral


def test_spectral_cutoff_one_is_full(model):
    cfg = dict(frames=16, cfg=2.0, steps=2)  # 8 latent frames, local windows of 4
    want = full.sample(model, CAPTIONS, sc(**cfg), (H, W))
    close(spectral.sample(model, CAPTIONS, sc(spectral_cutoff=1.0, **cfg), (H, W)), want, 1e-5)
    low = spectral.sample(model, CAPTIONS, sc(spectral_cutoff=0.25, **cfg), (H, W))
    assert (low - want).abs().max() > 1e-3


def test_spectral_pieces():
    band = spectral.band_mask(8, 4)
    assert band.sum(1).tolist() == [4] * 8
    assert band[0].tolist() == [True] * 4 + [False] * 4 and band[7].tolist() == [False] * 4 + [True] * 4
    assert band[4].tolist() == [False, False, True, True, True, True, False, False]
    assert spectral.lowpass(8, 0.0).tolist() == [True, False, False, False, False]
    assert spectral.lowpass(8, 0.5).tolist() == [True, True, True, False, False]
    assert spectral.lowpass(8, 1.0).all()


def test_default_attention_path_unchanged(model):
    """The hook's default is the trained path, bit for bit; an explicit SDPA hook gives the same."""
    x, t = torch.randn(2, 3, 8, H, W), torch.rand(2)
    with torch.no_grad():
        text = model.encode_text(CAPTIONS)
        z = model.read(x, t, text)
        a = model.dit(x, t, text, z)
        b = model.dit(x, t, text, z, None, lambda q, k, v, bias: F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
    assert torch.equal(a, b)


# ----------------------------------------------------------------- errors and prompt schedules


def test_full_refuses_what_would_not_fit(model, monkeypatch):
    monkeypatch.setattr(model, "denoise_chunks", lambda *a, **k: pytest.fail("must refuse before the model runs"))
    for name in ("full", "spectral"):
        with pytest.raises(ValueError, match="GiB"):
            STRATEGIES[name](model, CAPTIONS, sc(frames=4096, strategy=name), (H, W))
    with pytest.raises(ValueError, match="temporal patch"):
        full.sample(model, CAPTIONS, sc(frames=15), (H, W))


def test_prompt_schedule():
    assert prompt_schedule("a; b ;c", 7) == ["a", "a", "a", "b", "b", "c", "c"]
    assert prompt_schedule("a red ball", 3) == ["a red ball"] * 3
    assert prompt_schedule("a;b", 2) == ["a", "b"]
    with pytest.raises(ValueError, match="at least as many chunks"):
        prompt_schedule("a;b;c", 2)
    with pytest.raises(ValueError, match="empty prompt"):
        prompt_schedule("a;;b", 4)


def test_multi_prompt_reaches_each_chunk(model, monkeypatch):
    seen = []
    den = model.denoise_chunks
    monkeypatch.setattr(model, "denoise_chunks", lambda c, t, text, *a, **k: seen.append(text.tokens) or den(c, t, text, *a, **k))
    schedule = ["red circle; blue square", "green"]
    for name in ("vin", "independent", "freenoise"):
        seen.clear()
        out = STRATEGIES[name](model, schedule, sc(steps=1, strategy=name), (H, W))
        with torch.no_grad():
            want = model.encode_text(["red circle"] * 2 + ["blue square"] * 2 + ["green"] * 4).tokens
        assert torch.equal(seen[0], want), name  # 4 chunks per video, video-major
        assert (out - STRATEGIES[name](model, ["red circle", "green"], sc(steps=1), (H, W))).abs().max() > 1e-4
    for name in ("full", "spectral"):
        with pytest.raises(ValueError, match="schedule"):
            STRATEGIES[name](model, schedule, sc(strategy=name), (H, W))


def test_multi_prompt_reaches_each_autoregressive_chunk(model, monkeypatch):
    """Autoregressive sampling runs chunk by chunk: chunk k is denoised with prompt k of each schedule
    (each distinct set of prompts encoded once)."""
    seen, encoded = [], []
    den, enc = model.denoise_chunks, model.encode_text
    monkeypatch.setattr(model, "denoise_chunks", lambda c, t, text, *a, **k: seen.append(text.tokens) or den(c, t, text, *a, **k))
    monkeypatch.setattr(model, "encode_text", lambda captions: encoded.append(list(captions)) or enc(captions))
    schedule = ["red circle; blue square", "green"]
    STRATEGIES["autoregressive"](model, schedule, sc(steps=1, strategy="autoregressive"), (H, W))
    per_chunk = [["red circle", "green"]] * 2 + [["blue square", "green"]] * 2
    assert len(seen) == len(per_chunk)  # one Euler step per chunk
    for tokens, prompts in zip(seen, per_chunk):
        with torch.no_grad():
            assert torch.equal(tokens, enc(prompts).tokens), prompts
    assert encoded == [["red circle", "green"], ["blue square", "green"]]


def test_cli_generate_every_strategy(tmp_path, model, monkeypatch, capsys):
    cfg = load_config(None, ["data.height=16", "data.width=16"], preset="VIN-XS/4")
    ckpt = save_checkpoint(tmp_path / "m.safetensors", cfg, model)
    monkeypatch.chdir(tmp_path)
    args = ["generate", "--checkpoint", str(ckpt), "--frames", "16", "--steps", "1", "--quiet", "--no-strip", "--scale", "1"]
    for name in CONFIG_STRATEGIES:
        assert main([*args, "--strategy", name, "--out", f"{name}.gif"]) == 0, capsys.readouterr().err
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["strategy"] == name and record["sample"]["strategy"] == name
    capsys.readouterr()
    assert main([*args, "--strategy", "full", "--frames", "4096", "--out", "big.gif"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vin: error: strategy 'full' at 4096 frames") and "GiB" in err[0]
    assert not (tmp_path / "big.gif").exists()
    assert main([*args, "--strategy", "spectral", "--prompt", "a;b", "--out", "s.gif"]) == 2
    assert "schedule" in capsys.readouterr().err
