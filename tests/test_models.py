"""Tests for `vin.models`: the chunk DiT, the Video Interface (read) and their composition.

A freshly built model predicts exactly zero (adaLN-Zero blocks and a zero final layer, as in DiT),
so almost every test first gives the zero-initialised parameters random values ("trained-like"),
leaving the global-token gate / cross-attention output at zero unless the test opens it.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from vin.config import SampleConfig, load_config
from vin.models.dit import patchify, unpatchify
from vin.models.interface import VideoInterface
from vin.models.layers import attention_with_key_logits, merge_attention
from vin.models.vin import VINModel
from vin.sampling import vin_parallel
from vin.sampling.chunking import chunk_layout, split_chunks
from vin.training.trainer import build_model

SETTINGS = settings(max_examples=25, deadline=None)
H = W = 16  # divisible by dit.patch_s (4) and vin.patch_s (8) of VIN-XS/4
CAPTIONS = ["a red ball bouncing", "two blue squares"]



def make_model(*overrides: str, trained: bool = True, seed: int = 0) -> VINModel:
    cfg = load_config(None, list(overrides), preset="VIN-XS/4")
    model = build_model(cfg).eval()
    if trained:
        trained_like(model, seed)
    return model


def trained_like(model: VINModel, seed: int = 0, std: float = 0.2) -> None:
    """Give every all-zero parameter random values, except the global-token gate of the DiT
    (concat: `dit.gate_logits`; cross: the output projection of each gated cross-attention)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_gate(name):
                continue
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def is_gate(name: str) -> bool:
    return name == "dit.gate_logits" or (name.startswith("dit.cross.") and ".attn.proj." in name)


def open_gates(model: VINModel, seed: int = 1) -> None:
    """What training does to the gate: concat -> log-weight 0 (w = 1), cross -> random output projection."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if model.dit.inject == "concat":
            model.dit.gate_logits.fill_(0.0)
        else:
            for block in model.dit.cross:
                for p in block.attn.proj.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def plain_copy(model: VINModel) -> VINModel:
    """A vin-disabled model holding the same text-encoder and DiT weights as `model`."""
    plain = build_model(load_config(None, ["model.vin.enabled=false"], preset="VIN-XS/4")).eval()
    plain = plain.to(next(model.parameters()).dtype)
    result = plain.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == []
    assert all(k.startswith(("interface.", "dit.gate_logits", "dit.global_proj.", "dit.cross."))
               for k in result.unexpected_keys)
    return plain


def video(frames: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, H, W, generator=g)


def times(batch: int = 2) -> torch.Tensor:
    return torch.linspace(0.3, 0.8, batch)


# ---------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("inject", ["concat", "cross"])
def test_denoise_and_read_shapes(inject):
    model = make_model(f"model.vin.inject={inject}")
    cfg = model.cfg
    x = video(20)
    text = model.encode_text(CAPTIONS)
    z = model.read(x, times(), text)
    assert z.shape == (2, cfg.vin.num_global, cfg.vin.width)
    layout = chunk_layout(20, cfg.chunk_frames, 4)
    chunks = split_chunks(x, layout)
    v = model.denoise_chunks(chunks, times(), text, z)
    assert v.shape == chunks.shape
    assert torch.isfinite(v).all() and v.abs().mean() > 1e-3
    # the DiT on its own: (B, C, F, H, W) -> same shape
    flat = chunks.flatten(0, 1)
    out = model.dit(flat, times(2).repeat_interleave(len(layout)),
                    text.take(torch.arange(2).repeat_interleave(len(layout))),
                    z.repeat_interleave(len(layout), 0))
    assert out.shape == flat.shape
    torch.testing.assert_close(model.to_velocity(chunks, times(), out.view_as(v)), v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("t", [0.02, 0.3, 1.0])
def test_data_prediction_gives_the_velocity_of_the_straight_path(t):
    """prediction="data": a DiT output equal to the true x0 gives exactly the true velocity eps - x0
    (for t above the clamp); below the clamp, the velocity is (x_t - x0) / t_min."""
    model = make_model()
    assert model.cfg.prediction == "data"
    x0, eps = video(8), torch.randn(2, 3, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    tt = torch.full((2,), t)
    x_t = (1 - t) * x0 + t * eps
    v = model.to_velocity(x_t, tt, x0)
    expected = eps - x0 if t >= model.cfg.prediction_t_min else (x_t - x0) / model.cfg.prediction_t_min
    torch.testing.assert_close(v, expected, rtol=0, atol=1e-5)
    velocity_model = make_model("model.prediction=velocity")
    assert torch.equal(velocity_model.to_velocity(x_t, tt, eps - x0), eps - x0)


def test_chunk_dit_rejects_bad_chunks():
    model = make_model()
    text = model.encode_text(CAPTIONS[:1])
    t = torch.tensor([0.5])
    with pytest.raises(ValueError):
        model.dit(torch.randn(1, 3, 7, H, W), t, text)  # frames not divisible by patch_t = 2
    with pytest.raises(ValueError):
        model.dit(torch.randn(1, 3, 8, 10, W), t, text)  # height not divisible by patch_s = 4
    with pytest.raises(ValueError):
        model.dit(torch.randn(1, 2, 8, H, W), t, text)  # wrong channel count


def test_text_per_video_or_per_chunk():
    model = make_model()
    open_gates(model)
    x = video(20)
    layout = chunk_layout(20, 8, 4)
    chunks = split_chunks(x, layout)
    n = len(layout)
    text = model.encode_text(CAPTIONS)
    z = model.read(x, times(), text)
    per_video = model.denoise_chunks(chunks, times(), text, z)
    # the same captions given once per chunk (video-major) -> the same prediction
    per_chunk = model.denoise_chunks(chunks, times(), model.encode_text([c for c in CAPTIONS for _ in range(n)]), z)
    torch.testing.assert_close(per_chunk, per_video, rtol=0, atol=1e-6)
    # per-chunk captions really are used per chunk: give chunk 0 of video 0 another caption
    other = [c for c in CAPTIONS for _ in range(n)]
    other[0] = "something else entirely"
    changed = model.denoise_chunks(chunks, times(), model.encode_text(other), z)
    assert (changed[0, 0] - per_video[0, 0]).abs().max() > 1e-3
    torch.testing.assert_close(changed[:, 1:], per_video[:, 1:], rtol=0, atol=1e-6)
    torch.testing.assert_close(changed[1], per_video[1], rtol=0, atol=1e-6)
    for bad in (1, 3, 2 * n + 1):
        with pytest.raises(ValueError):
            model.denoise_chunks(chunks, times(), model.encode_text(["x"] * bad), z)


# --------------------------------------------------------------------- patchify / unpatchify


@st.composite
def patch_case(draw):
    pt, ps_h, ps_w = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    b, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    f, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (b, c, f * pt, h * ps_h, w * ps_w), (pt, ps_h, ps_w), (f, h, w)


@settings(max_examples=60, deadline=None)
@given(patch_case(), st.integers(0, 2**31 - 1))
def test_patchify_round_trip(case, seed):
    shape, patch, grid = case
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    tokens = patchify(x, patch)
    f, h, w = grid
    pt, ph, pw = patch
    assert tokens.shape == (shape[0], f * h * w, shape[1] * pt * ph * pw)
    assert torch.equal(unpatchify(tokens, patch, grid), x)
    assert torch.equal(patchify(unpatchify(tokens, patch, grid), patch), tokens)
    # frame-major token order, (c, pt, ph, pw) order inside a token: check against plain slicing
    for fi in range(f):
        for hi in range(h):
            for wi in range(w):
                block = x[:, :, fi * pt:(fi + 1) * pt, hi * ph:(hi + 1) * ph, wi * pw:(wi + 1) * pw]
                assert torch.equal(tokens[:, (fi * h + hi) * w + wi], block.reshape(shape[0], -1))


# --------------------------------------------------------------------------- zero-init gate


@pytest.mark.parametrize("inject", ["concat", "cross"])
def test_fresh_gate_is_the_plain_dit(inject):
    model = make_model(f"model.vin.inject={inject}")
    plain = plain_copy(model)
    x = video(20)
    layout = chunk_layout(20, 8, 4)
    text = model.encode_text(CAPTIONS)
    z = model.read(x, times(), text)
    assert z.abs().max() > 0.1  # real global tokens are passed
    chunks = split_chunks(x, layout)
    v = model.denoise_chunks(chunks, times(), text, z)
    v_plain = plain.denoise_chunks(chunks, times(), plain.encode_text(CAPTIONS), None)
    assert v.abs().mean() > 0.1  # the DiT is not the trivial all-zero predictor
    # concat: the global keys carry weight exp(-16) ~ 1e-7 each and the sequence is longer (float32
    # rounding of the attention sums); cross: the added branch is an exact 0
    if inject == "cross":
        assert torch.equal(v, v_plain)
    else:
        torch.testing.assert_close(v, v_plain, rtol=0, atol=1e-5)
    # the same vin model without global tokens is exactly the plain DiT
    assert torch.equal(model.denoise_chunks(chunks, times(), text, None), v_plain)


@pytest.mark.parametrize("inject", ["concat", "cross"])
def test_open_gate_changes_the_prediction(inject):
    model = make_model(f"model.vin.inject={inject}")
    plain = plain_copy(model)
    open_gates(model)
    x = video(20)
    layout = chunk_layout(20, 8, 4)
    text = model.encode_text(CAPTIONS)
    chunks = split_chunks(x, layout)
    v = model.denoise_chunks(chunks, times(), text, model.read(x, times(), text))
    v_plain = plain.denoise_chunks(chunks, times(), plain.encode_text(CAPTIONS), None)
    assert (v - v_plain).abs().max() > 1e-2


def test_gate_gradient_is_the_log_weight_derivative():
    """The gate is a log-weight s on the global keys: at init (s = -16) every block and head gets a
    finite, non-zero gradient, and at a partly open gate the gradient matches a finite difference."""
    model = make_model("model.vin.inject=concat")
    x = video(16)
    layout = chunk_layout(16, 8, 0)
    with torch.no_grad():
        text = model.encode_text(CAPTIONS)
        z = model.read(x, times(), text)
    chunks = split_chunks(x, layout)
    target = torch.randn(chunks.shape, generator=torch.Generator().manual_seed(5))

    def loss() -> torch.Tensor:
        return ((model.denoise_chunks(chunks, times(), text, z) - target) ** 2).mean()

    gates = model.dit.gate_logits
    assert torch.equal(gates, torch.full_like(gates, model.cfg.vin.gate_init))
    model.zero_grad()
    loss().backward()
    assert torch.isfinite(gates.grad).all() and gates.grad.abs().min() > 0  # a signal to open every gate
    with torch.no_grad():
        gates.fill_(-1.0)
    model.zero_grad()
    loss().backward()
    grad = gates.grad.clone()
    delta = 1e-2  # central difference in float32
    with torch.no_grad():
        for block in range(grad.shape[0]):
            for head in range(grad.shape[1]):
                gates[block, head] = -1.0 + delta
                up = loss().item()
                gates[block, head] = -1.0 - delta
                down = loss().item()
                gates[block, head] = -1.0
                assert (up - down) / (2 * delta) == pytest.approx(grad[block, head].item(), rel=0.05, abs=1e-5)


@pytest.mark.parametrize("masked, dtype", [(False, torch.float32), (True, torch.float32), (True, torch.bfloat16)])
def test_key_logits_folded_into_a_channel_equal_the_bias(masked, dtype):
    """`attention_with_key_logits` (the gate as an extra q/k channel) is softmax attention with the
    logits added to the mask: the same output and the same gradients, the logits' included, also
    beside -inf padding, and in bfloat16 (as under autocast) to bfloat16 rounding."""
    g = torch.Generator().manual_seed(0)
    B, heads, L, d = 2, 3, 11, 8
    q, k, v = (torch.randn(B, heads, L, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
    logits = (3 * torch.randn(heads, L, generator=g)).requires_grad_()
    mask = torch.zeros(B, 1, 1, L)
    if masked:
        mask[1, ..., -3:] = float("-inf")
    weight = torch.randn(B, heads, L, d, generator=g).to(dtype)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=(mask + logits[None, :, None, :]).to(dtype))
    got = attention_with_key_logits(q, k, v, mask.to(dtype), logits)
    tol = 1e-6 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    grads_want = torch.autograd.grad((want * weight).sum(), (q, k, v, logits))
    grads_got = torch.autograd.grad((got * weight).sum(), (q, k, v, logits))
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=10 * tol)
    assert grads_got[3].abs().min() > 0  # every logit gets a gradient


def test_training_the_gates_takes_the_fused_kernel_with_the_same_numbers(monkeypatch):
    """A VIN training step on the CPU: with the gates folded into a channel, SDPA runs its fused
    (flash) kernel forward and backward instead of the math path a learned mask forces; the loss
    and every gradient are those of the plain bias path."""
    from torch.profiler import profile

    from vin.models import layers
    from vin.training.objective import training_loss

    model = make_model("model.vin.inject=concat").train()
    with torch.no_grad():
        model.dit.gate_logits.copy_(torch.linspace(-3, 1, model.dit.gate_logits.numel()).reshape(model.dit.gate_logits.shape))
    cfg = load_config(None, ["train.chunks=[2]", "train.context_frames=2"], preset="VIN-XS/4")
    clip = video(14).clamp(-1, 1)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss, _ = training_loss(model, clip, CAPTIONS, cfg.train, torch.Generator().manual_seed(3))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    with profile() as prof:
        loss, grads = step()
    kernels = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu_backward" in kernels
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    monkeypatch.setattr(layers, "_fold_key_logits", lambda q, key_logits: False)
    with profile() as prof:
        loss_bias, grads_bias = step()
    assert "aten::_scaled_dot_product_attention_math" in {e.key for e in prof.key_averages()}  # what it replaces
    torch.testing.assert_close(loss, loss_bias, rtol=0, atol=1e-7)
    assert grads.keys() == grads_bias.keys() and "dit.gate_logits" in grads
    for name in grads:
        torch.testing.assert_close(grads[name], grads_bias[name], rtol=1e-4, atol=1e-6, msg=name)


def test_linear_gate_checkpoint_loads_as_log_weights():
    """Checkpoints from before the log-space gate stored `dit.gates` = w >= 0: they load as s = log(w)."""
    model = make_model("model.vin.inject=concat")
    state = model.state_dict()
    w = torch.rand(state["dit.gate_logits"].shape) * 0.05
    w[0, 0] = -0.3  # a negative stored gate acted as a closed one
    state["dit.gates"] = w
    del state["dit.gate_logits"]
    fresh = make_model("model.vin.inject=concat")
    fresh.load_state_dict(state)
    expected = torch.log(w.clamp(min=0) + 1e-12)
    torch.testing.assert_close(fresh.dit.gate_logits.detach(), expected)
    assert fresh.dit.gate_logits[0, 0].item() < -27


def test_cross_gate_gradient_at_init():
    model = make_model("model.vin.inject=cross")
    x = video(16)
    text = model.encode_text(CAPTIONS)
    chunks = split_chunks(x, chunk_layout(16, 8, 0))
    v = model.denoise_chunks(chunks, times(), text, model.read(x, times(), text))
    (v ** 2).mean().backward()
    for block in model.dit.cross:
        grad = block.attn.proj.weight.grad
        assert torch.isfinite(grad).all() and grad.abs().max() > 0
    # at init only the gate itself learns: nothing flows back through the zero output to the read
    assert all(p.grad is None or not p.grad.any() for p in model.interface.parameters())


# ------------------------------------------------------------ locality through global tokens


@pytest.mark.parametrize("inject", ["concat", "cross"])
@pytest.mark.parametrize("j", [0, 2])
def test_chunks_interact_only_through_global_tokens(inject, j):
    model = make_model(f"model.vin.inject={inject}")
    plain = plain_copy(model)
    open_gates(model)
    stride = model.cfg.vin.keyframe_stride
    n_frames, F = 32, model.cfg.chunk_frames
    layout = chunk_layout(n_frames, F, 0)  # 4 disjoint chunks
    assert len(layout) == 4
    s, e = layout[j]
    assert any(f % stride == 0 for f in range(s, e))  # chunk j holds a keyframe
    x = video(n_frames)
    x2 = x.clone()
    x2[:, :, s:e] = torch.randn(x2[:, :, s:e].shape, generator=torch.Generator().manual_seed(9))
    t = times()
    text = model.encode_text(CAPTIONS)
    z, z2 = model.read(x, t, text), model.read(x2, t, text)
    assert (z - z2).abs().max() > 1e-3

    v = model.denoise_chunks(split_chunks(x, layout), t, text, z)
    v_reread = model.denoise_chunks(split_chunks(x2, layout), t, text, z2)
    v_fixed = model.denoise_chunks(split_chunks(x2, layout), t, text, z)
    p_text = plain.encode_text(CAPTIONS)
    p = plain.denoise_chunks(split_chunks(x, layout), t, p_text, None)
    p2 = plain.denoise_chunks(split_chunks(x2, layout), t, p_text, None)
    others = [i for i in range(len(layout)) if i != j]
    for i in others:
        # Z re-read from the changed video: chunk i sees the change
        assert (v_reread[:, i] - v[:, i]).abs().max() > 1e-3
        # Z held fixed: chunk i is untouched
        torch.testing.assert_close(v_fixed[:, i], v[:, i], rtol=0, atol=1e-6)
        # no global tokens: chunk i is untouched
        torch.testing.assert_close(p2[:, i], p[:, i], rtol=0, atol=1e-6)
    assert (v_fixed[:, j] - v[:, j]).abs().max() > 1e-3
    assert (p2[:, j] - p[:, j]).abs().max() > 1e-3


def test_read_sees_only_keyframes():
    model = make_model()
    open_gates(model)
    stride = model.cfg.vin.keyframe_stride
    x = video(32)
    x2 = x.clone()
    non_key = [f for f in range(16, 24) if f % stride]
    x2[:, :, non_key] += 1.0
    t, text = times(), model.encode_text(CAPTIONS)
    assert torch.equal(model.read(x, t, text), model.read(x2, t, text))
    layout = chunk_layout(32, 8, 0)
    v = model.denoise_chunks(split_chunks(x, layout), t, text, model.read(x, t, text))
    v2 = model.denoise_chunks(split_chunks(x2, layout), t, text, model.read(x2, t, text))
    for i in (0, 1, 3):
        torch.testing.assert_close(v2[:, i], v[:, i], rtol=0, atol=1e-6)
    assert (v2[:, 2] - v[:, 2]).abs().max() > 1e-3


# --------------------------------------------------------------- the read vs the chunking


def test_read_takes_no_layout():
    # the only extra argument is the inference-time keyframe-stride ablation, not a chunk layout
    assert list(inspect.signature(VINModel.read).parameters) == ["self", "x_t", "t", "text", "keyframe_stride"]
    assert list(inspect.signature(VINModel.denoise_chunks).parameters)[:5] == [
        "self", "chunks", "t", "text", "global_tokens"]


@pytest.mark.parametrize("frames", [1, 3, 17, 64])
def test_read_size_independent_of_length(frames):
    model = make_model()
    z = model.read(video(frames, batch=3), times(3), model.encode_text(["a", "b", "c"]))
    assert z.shape == (3, model.cfg.vin.num_global, model.cfg.vin.width)
    assert torch.isfinite(z).all()


def _read_flops(model: VINModel, frames: int) -> int:
    x, t, text = video(frames, batch=1), times(1), model.encode_text(CAPTIONS[:1])
    # (grad mode on: torch's FlopCounterMode module tracker trips over views of parameters taken
    # under no_grad)
    with FlopCounterMode(display=False) as counter:
        model.read(x, t, text)
    return counter.get_total_flops()


def test_read_cost_linear_in_keyframes():
    model = make_model()
    stride = model.cfg.vin.keyframe_stride
    # k keyframes: 0, s, ..., (k-1)s -> videos of (k-1)s + 1 frames
    costs = [_read_flops(model, (k - 1) * stride + 1) for k in range(1, 7)]
    steps = [b - a for a, b in zip(costs, costs[1:])]
    assert steps[0] > 0
    assert all(d == steps[0] for d in steps)  # affine in the keyframe count
    # frames between keyframes cost nothing: 17 and 20 frames both have keyframes 0, 4, .., 16
    assert _read_flops(model, 4 * stride + 1) == _read_flops(model, 5 * stride) == costs[4]


def test_sampler_read_is_independent_of_chunking(monkeypatch):
    """The first sampler step reads the same Z (same cost) whatever chunk_frames/overlap are used;
    only the chunk DiT's cost depends on the layout."""
    layouts = [(8, 4), (4, 2), (6, 2), (20, 0)]  # (chunk_frames, overlap): 4, 9, 5 and 1 chunks
    model = make_model()
    open_gates(model)
    original_read, original_denoise = model.read, model.denoise_chunks
    records: dict[str, list] = {"z": [], "x": [], "read_flops": [], "denoise_flops": [], "chunks": []}

    def read(x_t, t, text):
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:  # see _read_flops
            z = original_read(x_t, t, text).detach()
        records["x"].append(x_t.clone())
        records["z"].append(z.clone())
        records["read_flops"].append(counter.get_total_flops())
        return z

    def denoise(chunks, t, text, global_tokens, t_pos=None):
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            v = original_denoise(chunks, t, text, global_tokens, t_pos).detach()
        records["chunks"].append(chunks.shape[1])
        records["denoise_flops"].append(counter.get_total_flops())
        return v

    monkeypatch.setattr(model, "read", read)
    monkeypatch.setattr(model, "denoise_chunks", denoise)
    for chunk_frames, overlap in layouts:
        cfg = SampleConfig(frames=20, chunk_frames=chunk_frames, overlap=overlap, steps=1, seed=3)
        vin_parallel.sample_vin(model, CAPTIONS, cfg, (H, W))
    assert len(records["z"]) == len(layouts)  # one read per step
    assert sorted(set(records["chunks"])) == sorted({len(chunk_layout(20, f, k)) for f, k in layouts})
    for x, z, flops in zip(records["x"], records["z"], records["read_flops"]):
        assert x.shape == (2, 3, 20, H, W)  # the whole video, never a chunk
        assert torch.equal(x, records["x"][0])
        assert torch.equal(z, records["z"][0])
        assert flops == records["read_flops"][0]
    # the counter does see the layout: the chunk DiT's cost differs between all four layouts
    assert len(set(records["denoise_flops"])) == len(layouts)


# ------------------------------------------------------------------------- exact split read


@st.composite
def split_case(draw):
    frames = draw(st.integers(1, 40))
    parts = draw(st.integers(1, 4))
    n_key = -(-frames // 4)
    owner = draw(st.lists(st.integers(0, parts - 1), min_size=n_key, max_size=n_key))
    return frames, owner


@pytest.mark.parametrize("time_pos", ["absolute", "relative"])
@SETTINGS
@given(case=split_case())
def test_split_read_is_exact(time_pos, case):
    frames, owner = case
    model = _split_model(time_pos)
    iface = model.interface
    assert iface.cfg.keyframe_stride == 4
    x = video(frames, seed=frames)
    t, text = times(), _TEXT[time_pos]
    full = model.read(x, t, text)
    idx = iface.keyframe_indices(frames)
    c, q, z0 = iface.read_begin(t, text)
    outs, lses = [], []
    for part in sorted(set(owner)):
        sel = idx[[i for i, o in enumerate(owner) if o == part]]
        out, lse = iface.read_attend(q, x[:, :, sel], sel, frames)
        assert lse.shape == out.shape[:-1]
        outs.append(out)
        lses.append(lse)
    merged, _ = merge_attention(outs, lses)
    torch.testing.assert_close(iface.read_end(merged, c, z0, text), full, rtol=0, atol=1e-5)


_MODELS: dict[str, VINModel] = {}
_TEXT: dict = {}


def _split_model(time_pos: str) -> VINModel:
    if time_pos not in _MODELS:
        _MODELS[time_pos] = make_model(f"model.vin.time_pos={time_pos}")
        with torch.no_grad():
            _TEXT[time_pos] = _MODELS[time_pos].encode_text(CAPTIONS)
    return _MODELS[time_pos]


def test_split_read_by_frame_ranges():
    """What a process holding frames [start, end) does: its keyframes via keyframe_indices."""
    model = make_model("model.vin.time_pos=relative")
    iface = model.interface
    x, t, text = video(37), times(), model.encode_text(CAPTIONS)
    c, q, z0 = iface.read_begin(t, text)
    parts = [iface.read_attend(q, x[:, :, idx], idx, 37)
             for s, e in [(0, 10), (10, 23), (23, 37)]
             for idx in [iface.keyframe_indices(37, s, e)]]
    merged, _ = merge_attention([o for o, _ in parts], [l for _, l in parts])
    torch.testing.assert_close(iface.read_end(merged, c, z0, text), model.read(x, t, text), rtol=0, atol=1e-5)


def test_split_read_with_a_part_holding_no_keyframe():
    """A process whose frames [5, 7) hold no keyframe (stride 4) contributes nothing, exactly."""
    model = make_model()
    iface = model.interface
    x, t, text = video(20), times(), model.encode_text(CAPTIONS)
    c, q, z0 = iface.read_begin(t, text)
    empty = iface.keyframe_indices(20, 5, 7)
    assert empty.numel() == 0
    out_e, lse_e = iface.read_attend(q, x[:, :, empty], empty, 20)
    assert torch.isneginf(lse_e).all() and not out_e.isnan().any()
    parts = [iface.read_attend(q, x[:, :, idx], idx, 20)
             for idx in (iface.keyframe_indices(20, 0, 5), iface.keyframe_indices(20, 7, 20))]
    merged, _ = merge_attention([parts[0][0], out_e, parts[1][0]], [parts[0][1], lse_e, parts[1][1]])
    torch.testing.assert_close(iface.read_end(merged, c, z0, text), model.read(x, t, text), rtol=0, atol=1e-5)


# ----------------------------------------------------------------- time positions, keyframes


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(1, 60), st.data())
def test_keyframe_indices(stride, num_frames, data):
    iface = VideoInterface(load_config(None, [f"model.vin.keyframe_stride={stride}"], preset="VIN-XS/4").model)
    assert iface.keyframe_indices(num_frames).tolist() == list(range(0, num_frames, stride))
    start = data.draw(st.integers(0, num_frames))
    end = data.draw(st.integers(start, num_frames))
    got = iface.keyframe_indices(num_frames, start, end).tolist()
    assert got == [f for f in range(start, end) if f % stride == 0]
    # disjoint ranges partition the keyframes (what split reads rely on)
    mid = data.draw(st.integers(0, num_frames))
    assert (iface.keyframe_indices(num_frames, 0, mid).tolist()
            + iface.keyframe_indices(num_frames, mid, num_frames).tolist()) == list(range(0, num_frames, stride))


def _with_stride(model: VINModel, time_pos: str, stride: int) -> VINModel:
    other = make_model(f"model.vin.time_pos={time_pos}", f"model.vin.keyframe_stride={stride}", trained=False)
    other.load_state_dict(model.state_dict())  # time_pos / stride change no parameter
    return other


@pytest.mark.parametrize("time_pos", ["absolute", "relative"])
def test_time_pos(time_pos):
    base = make_model()
    t, text = times(), base.encode_text(CAPTIONS)
    m4, m8 = _with_stride(base, time_pos, 4), _with_stride(base, time_pos, 8)
    # (a) trailing frames without a keyframe: 17 and 19 frames share keyframes 0, 4, .., 16
    x = video(19)
    z17, z19 = m4.read(x[:, :, :17], t, text), m4.read(x, t, text)
    # (b) the same keyframe contents at the same fraction of the video: 16 frames with stride 4
    # (keyframes 0, 4, 8, 12) vs 32 frames with stride 8 (keyframes 0, 8, 16, 24)
    y16 = video(16, seed=1)
    y32 = torch.zeros(2, 3, 32, H, W)
    y32[:, :, ::2] = y16
    y32[:, :, 1::2] = 7.0  # never read
    za, zb = m4.read(y16, t, text), m8.read(y32, t, text)
    for z in (z17, z19, za, zb):
        assert z.shape == (2, 8, 32) and torch.isfinite(z).all()
    if time_pos == "absolute":  # a keyframe's position is its frame index
        assert torch.equal(z17, z19)
        assert (za - zb).abs().max() > 1e-4
    else:  # a keyframe's position is its fraction of the video
        assert (z17 - z19).abs().max() > 1e-4
        torch.testing.assert_close(za, zb, rtol=0, atol=1e-6)
