"""Compute accounting: FLOPs of one generated video, per strategy, from formulas and counted.

Convention (that of `torch.utils.flop_counter`): a multiply-add is 2 FLOPs, and only matrix
products are counted - every linear layer (2 x tokens x d_in x d_out), convolution
(2 x output pixels x c_in x c_out x k^2) and attention
(2 x q_len x k_len x head_dim for the scores plus as much for the weighted values, per head).
Elementwise work (norms, softmax, GELU, adaLN modulation, positional encodings, the solver update,
fusion, spectral blending's FFT) and the embedding lookup are left out by both `analytic_flops` and
the counter, so the two agree exactly, not to a tolerance. The left-out part is small: counting one
FLOP per output element of every elementwise op and 5 per attention score (mask, max, exp, sum,
divide), `vin` sampling adds 1.5% on the shipped VIN-S (width 128) and 4% on VIN-XS (width 32)
to the matmul FLOPs; it shrinks roughly as 1/width.

- `analytic_flops(model_cfg, sample, frame_size, strategy)`: from the configs alone, following
  what each sampler in `vin.sampling` does (how many model evaluations per step, which windows the
  DiT sees, what the read sees).
- `counted_flops(model, captions, sample, frame_size, strategy)`: the real sampler run under
  `FlopCounterMode` (with a formula for the CPU attention kernel, which torch does not count).
- `paper_scale_table()` (in `vin.eval.paper_scale`): the paper's setting from the same formulas.

Parts (keys of both results, plus "total"):
    text           the caption encoder (once per run; a prompt schedule, not counted, encodes more)
    vin_read       the interface except its processor blocks: keyframe embedding, conditioning,
                   the read cross-attention, its MLP, the caption projection
    vin_processor  the interface's self-attention blocks over [global tokens ; caption]
    dit_linear     every linear layer of the DiT (embeddings, adaLN, q/kv/proj, MLP, output) and
                   the convolutions of its pixel refiner, if any
    dit_attention  the DiT's attention products (spectral: both streams)
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from dataclasses import replace
from typing import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from vin.config import ModelConfig, SampleConfig, TextConfig
from vin.sampling.chunking import chunk_layout

PARTS = ("text", "vin_read", "vin_processor", "dit_linear", "dit_attention")
_FREQ_DIM = 256  # TimestepEmbedder's sinusoidal features (vin.models.layers)

aten = torch.ops.aten


# ------------------------------------------------------------------------------ known pieces

def linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    """nn.Linear(d_in, d_out) on `tokens` rows (the bias add is elementwise, not counted)."""
    return 2 * tokens * d_in * d_out


def attention_flops(batch: int, heads: int, q_len: int, k_len: int, head_dim: int, v_head_dim: int | None = None) -> int:
    """Softmax attention: scores q k^T (2 q k d per head) and the weighted sum of values (2 q k d_v)."""
    v_head_dim = head_dim if v_head_dim is None else v_head_dim
    return 2 * batch * heads * q_len * k_len * (head_dim + v_head_dim)


# ------------------------------------------------------------------------------ the counter

def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """aten._scaled_dot_product_flash_attention_for_cpu: the same products as the CUDA kernels
    (an additive mask and the softmax are elementwise; causal masking is not discounted, as torch)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch (2.13) registers formulas for the CUDA attention kernels only: on CPU, F.scaled_dot_product_
# attention dispatches to this op (also with our additive float mask) and would count 0. The math
# fallback (e.g. `sdpa_kernel(SDPBackend.MATH)`) decomposes into two bmm, which torch counts, to
# the same number.
CPU_SDPA_FORMULAS: dict = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flop,
}


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts CPU attention (per instance; torch's global
    registry is left alone)."""
    return FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FORMULAS)


# ------------------------------------------------------------------------------ model pieces

def attention_linear_flops(q_tokens: int, kv_tokens: int, dim: int, kv_dim: int | None = None) -> int:
    """The q, kv and output projections of `vin.models.layers.Attention`."""
    kv_dim = dim if kv_dim is None else kv_dim
    return 2 * linear_flops(q_tokens, dim, dim) + linear_flops(kv_tokens, kv_dim, 2 * dim)


def mlp_flops(tokens: int, dim: int, ratio: float = 4.0) -> int:
    hidden = int(dim * ratio)
    return linear_flops(tokens, dim, hidden) + linear_flops(tokens, hidden, dim)


def _timestep_embedder(dim: int) -> int:
    return linear_flops(1, _FREQ_DIM, dim) + linear_flops(1, dim, dim)


def _adaln_block(seq: int, dim: int, heads: int, mlp_ratio: float, attention_maps: int = 1) -> tuple[int, int]:
    """One `AdaLNBlock` over `seq` tokens -> (linear, attention) FLOPs per sequence."""
    linear = linear_flops(1, dim, 6 * dim) + attention_linear_flops(seq, seq, dim) + mlp_flops(seq, dim, mlp_ratio)
    return linear, attention_maps * attention_flops(1, heads, seq, seq, dim // heads)


def conv_flops(pixels: int, c_in: int, c_out: int, kernel: int = 3) -> int:
    """A 2-D convolution producing `pixels` output pixels (FlopCounterMode's count, bias left out)."""
    return 2 * pixels * c_in * c_out * kernel * kernel


def refine_flops(mc: ModelConfig, n_x: int, frames: int, frame_size: tuple[int, int]) -> int:
    """`PixelRefiner` and its feature decoder on one window of `n_x` tokens, `frames` frames."""
    d, C = mc.dit, mc.channels
    if not d.refine_width:
        return 0
    pixels, R, K = frames * frame_size[0] * frame_size[1], d.refine_width, d.refine_features
    return (linear_flops(n_x, d.width, K * d.patch_t * d.patch_s**2) + linear_flops(1, d.width, 2 * R)
            + conv_flops(pixels, 2 * C + K, R) + conv_flops(pixels, R, R) + conv_flops(pixels, R, C))


def text_flops(tc: TextConfig, captions: int) -> int:
    """`TextEncoder` on `captions` captions (always padded to max_tokens)."""
    L, W = tc.max_tokens, tc.width
    per_block = attention_linear_flops(L, L, W) + mlp_flops(L, W) + attention_flops(1, tc.heads, L, L, W // tc.heads)
    return captions * tc.depth * per_block


def dit_flops(mc: ModelConfig, sequences: int, latent_frames: int, frame_size: tuple[int, int],
              global_tokens: bool, attention_maps: int = 1) -> tuple[int, int]:
    """One `ChunkDiT` call on `sequences` windows of `latent_frames` latent frames each ->
    (linear, attention) FLOPs. `global_tokens`: the DiT is handed global tokens (concatenated into
    the sequence, or cross-attended, per model.vin.inject); `attention_maps` = 2 for spectral."""
    d, v = mc.dit, mc.vin
    D, H, W = d.width, *frame_size
    patch_dim = mc.channels * d.patch_t * d.patch_s**2
    n_x = latent_frames * (H // d.patch_s) * (W // d.patch_s)
    L_t, W_t = mc.text.max_tokens, mc.text.width
    use_global = global_tokens and v.enabled
    concat = use_global and v.inject == "concat"
    seq = L_t + (v.num_global if concat else 0) + n_x
    linear = (linear_flops(n_x, patch_dim, D) + _timestep_embedder(D) + linear_flops(1, W_t, D)
              + linear_flops(L_t, W_t, D) + linear_flops(1, D, 2 * D) + linear_flops(n_x, D, patch_dim))
    block_linear, block_attention = _adaln_block(seq, D, d.heads, d.mlp_ratio, attention_maps)
    linear += d.depth * block_linear + refine_flops(mc, n_x, latent_frames * d.patch_t, frame_size)
    attention = d.depth * block_attention
    if use_global:
        linear += linear_flops(v.num_global, v.width, D)
        if v.inject == "cross":  # a cross-attention from the whole sequence to the projected tokens
            linear += d.depth * attention_linear_flops(seq, v.num_global, D)
            attention += d.depth * attention_flops(1, d.heads, seq, v.num_global, D // d.heads)
    return sequences * linear, sequences * attention


def read_flops(mc: ModelConfig, rows: int, frames: int, frame_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """One `VideoInterface` call on `rows` videos of `frames` frames, keyframes every `stride`-th
    -> (read, processor) FLOPs."""
    v, tc = mc.vin, mc.text
    H, W = frame_size
    n_key = math.ceil(frames / stride) * (H // v.patch_s) * (W // v.patch_s)
    Dv, N = v.width, v.num_global
    read = (linear_flops(n_key, mc.channels * v.patch_s**2, Dv) + _timestep_embedder(Dv)
            + linear_flops(1, tc.width, Dv) + linear_flops(1, Dv, 2 * Dv)
            + attention_linear_flops(N, n_key, Dv) + attention_flops(1, v.heads, N, n_key, Dv // v.heads)
            + mlp_flops(N, Dv) + linear_flops(tc.max_tokens, tc.width, Dv))
    processor = v.processor_depth * sum(_adaln_block(N + tc.max_tokens, Dv, v.heads, 4.0))
    return rows * read, rows * processor


# ------------------------------------------------------------------------------ strategies

def model_evaluations(sample: SampleConfig) -> int:
    """Velocity evaluations of one sampling chain: euler and ddim 1 per step; heun 2, but Euler on the last."""
    return 2 * sample.steps - 1 if sample.solver == "heun" else sample.steps


def analytic_flops(model_cfg: ModelConfig, sample: SampleConfig, frame_size: tuple[int, int], strategy: str,
                   batch: int = 1) -> dict[str, int]:
    """FLOPs of sampling `batch` videos of sample.frames frames of frame_size (H, W) with `strategy`
    (sample.strategy is ignored) -> {part: FLOPs} for PARTS and "total".

    Follows `vin.sampling`: classifier-free guidance (cfg != 1) doubles the DiT rows, and the read's
    rows with cfg_global="recompute" (with "shared" the read runs once); global_tokens "none"
    drops the read and the tokens, "zeros" keeps the tokens without a read; `independent` never
    has them. Captions are taken to be plain prompts: a prompt schedule ("a; b") adds text
    encodings per chunk, not counted here. Does not check the attention memory limit.
    """
    mc, s = model_cfg, sample
    F = s.chunk_frames or mc.chunk_frames
    pt = mc.dit.patch_t
    guidance = s.cfg != 1.0
    rows = 2 * batch if guidance else batch
    has_read = mc.vin.enabled and s.global_tokens == "read" and strategy != "independent"
    read_rows = (batch if guidance and s.cfg_global == "shared" else rows) if has_read else 0
    dit_global = mc.vin.enabled and s.global_tokens != "none" and strategy != "independent"
    stride = s.keyframe_stride or mc.vin.keyframe_stride
    evals = model_evaluations(s)
    out = dict.fromkeys(PARTS, 0)

    def add_eval(read_frames: int, sequences: int, latent_frames: int, maps: int = 1) -> None:
        """`evals` model evaluations: a read of `read_frames` frames, the DiT on `sequences` windows."""
        linear, attention = dit_flops(mc, sequences, latent_frames, frame_size, dit_global, maps)
        read, processor = read_flops(mc, read_rows, read_frames, frame_size, stride)
        out["dit_linear"] += evals * linear
        out["dit_attention"] += evals * attention
        out["vin_read"] += evals * read
        out["vin_processor"] += evals * processor

    texts = rows  # the captions, and the empty caption for each with guidance
    if strategy in ("full", "spectral"):
        if s.frames % pt:
            raise ValueError(f"strategy {strategy!r} needs frames divisible by the temporal patch ({pt}), got {s.frames}")
        add_eval(s.frames, rows, s.frames // pt, maps=2 if strategy == "spectral" else 1)
    elif strategy in ("vin", "freenoise", "independent"):
        n = len(chunk_layout(s.frames, F, s.overlap))
        add_eval(s.frames, rows * n, F // pt)
    elif strategy == "autoregressive":  # one chain per chunk; the read sees the prefix [0, end)
        layout = chunk_layout(s.frames, F, s.overlap)
        for _, end in layout:
            add_eval(end, rows, F // pt)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    out["text"] = text_flops(mc.text, texts)
    out["total"] = sum(out[p] for p in PARTS)
    return out


# ------------------------------------------------------------------------------ counted

_LINEAR_OPS = (aten.mm, aten.addmm, aten.convolution)
_PROCESSOR = re.compile(r"VideoInterface\.processor\.\d+")


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters with requires_grad=False for the duration (restored after).

    FlopCounterMode's module tracker hooks every module input that requires grad; under the
    samplers' no_grad, a view of a parameter (the interface's `global_tokens[None].expand(...)`)
    requires grad but has no grad_fn, and the hook fails ("Expected gradient function to be set").
    Frozen parameters change no FLOP but the global-token gates' extra attention channel, which
    only trainable gates take (tested: the same count, part by part, with grad enabled)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def count(fn: Callable[[], object]) -> dict[str, int]:
    """Run fn() under the counter -> {part: FLOPs} for PARTS, "total" and "other" (counted FLOPs
    outside the text encoder, the interface and the DiT; 0 for our samplers). Parts are told apart
    by the module that runs them, as FlopCounterMode names them: a module first called on its own
    is a root named by its class (`TextEncoder`, `VideoInterface`, `ChunkDiT`)."""
    with flop_counter() as counter:
        fn()
    counts = counter.get_flop_counts()

    def total(name: str) -> int:
        return sum(counts.get(name, {}).values())

    processor = sum(total(k) for k in counts if _PROCESSOR.fullmatch(k))
    dit_linear = sum(v for op, v in counts.get("ChunkDiT", {}).items() if op in _LINEAR_OPS)
    out = {"text": total("TextEncoder"), "vin_read": total("VideoInterface") - processor, "vin_processor": processor,
           "dit_linear": dit_linear, "dit_attention": total("ChunkDiT") - dit_linear, "total": total("Global")}
    out["other"] = out["total"] - sum(out[p] for p in PARTS)
    return out


def counted_flops(model, captions: list[str], sample: SampleConfig, frame_size: tuple[int, int], strategy: str,
                  extrapolate: bool = True, meta: bool = False) -> dict[str, int]:
    """FLOPs of the real sampler `strategy` on `model` (a `VINModel`) -> same keys as `count`.

    Counting runs the sampler. FLOPs are affine in the number of steps (the captions are encoded
    once, every step costs the same; heun's 2 steps - 1 too), so with `extrapolate` and
    sample.steps > 2 the run is counted at 1 and 2 steps and extended exactly:
    c(steps) = c(1) + (steps - 1) (c(2) - c(1)). `meta`: run a copy of the model on the meta device,
    the same ops dispatched on shapes alone, no arithmetic (tested to count the same), so that
    counting a large run takes seconds."""
    from vin.sampling.strategies import get_strategy

    sampler = get_strategy(strategy)
    s = replace(sample, strategy=strategy)
    if meta:
        model = copy.deepcopy(model).to("meta")
    device = next(model.parameters()).device

    def run(steps: int) -> dict[str, int]:
        with frozen(model):
            return count(lambda: sampler(model, captions, replace(s, steps=steps), frame_size, device))

    if not extrapolate or s.steps <= 2:
        return run(s.steps)
    one, two = run(1), run(2)
    return {k: one[k] + (s.steps - 1) * (two[k] - one[k]) for k in one}
