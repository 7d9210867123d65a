"""FLOPs of the paper's setting, from formulas: full attention vs VIN per denoising step.

The paper claims "25-40% fewer FLOPs than full generation" (PAPER.md). Nothing is built here: the
numbers come from `vin.eval.flops` (the same formulas that agree exactly with counted runs of our
samplers) applied to a config of the paper's size. Assumptions, printed with the table:

- Base DiT "Open-Sora-like": width 1152, 28 layers, 16 heads, MLP ratio 4, patch 1x2x2 on a
  4-channel latent (Open-Sora 1.2's STDiT3-XL/2 sizes). Two readings of its attention:
  "joint" - our chunk DiT scaled up: every layer is one 3-D self-attention over
  [caption ; global tokens ; video tokens] (what the VIN concatenation [X, Z] implies);
  "stdit" - Open-Sora 1.2's factorised blocks: 28 spatial (within a frame) + 28 temporal (across
  frames at one location) self-attentions, each block with a cross-attention to the caption; the
  global tokens are taken as 512 extra keys of that cross-attention (an assumption: the paper does
  not say how an ST-DiT consumes them).
- Video 192x320 at 16 fps; VAE 8x spatial (latent 24x40, 12x20 = 240 tokens per latent frame) and
  16 -> 5 temporal: F video frames -> 5F/16 latent frames (64, 128, 256, 512 -> 20, 40, 80, 160).
- Caption: 300 T5 tokens of width 4096, projected to 1152 in every DiT call (joint: one linear into
  the sequence; stdit: per-block key/value projections); the T5 encoder itself (run once per
  video, the same for both) is left out.
- VIN: 512 global tokens of width 4096, 32 heads; the read's keys are the latent keyframes every
  5th latent frame (~1 per second), patch 2x2 (240 tokens per keyframe); MLP; 4 processor blocks over
  [global ; caption]; projection 4096 -> 1152 into every chunk.
- Chunks of 20 latent frames with context 12 at inference (stride 8), the context read as lying
  inside the chunk (our answer to open question 4), laid out by `chunk_layout` (starts spread
  evenly: 1, 4, 9, 19 chunks). Sensitivities: context 8 (the training context, stride 12) and the
  other reading of "the chunk also gets 12 context frames": windows of 32 = 20 new + 12 context.
- "full" is the base DiT alone over the whole video (no interface, no global tokens); at 64 frames
  it is a single chunk. One model evaluation per step (no CFG: guidance doubles both sides, the
  ratio is unchanged with cfg_global=recompute); x 50 steps for a whole video.
- Matmul FLOPs only (2 per multiply-add), as everywhere in `vin.eval.flops`.
"""

from __future__ import annotations

from dataclasses import replace

from vin.config import DiTConfig, ModelConfig, SampleConfig, TextConfig, VINConfig
from vin.eval.flops import attention_linear_flops, mlp_flops, analytic_flops, attention_flops, linear_flops, read_flops
from vin.sampling.chunking import chunk_layout

LATENT_SIZE = (24, 40)  # 192x320 / 8
CHUNK, STEPS, KEYFRAME_STRIDE = 20, 50, 5
CAPTION_TOKENS, CAPTION_WIDTH = 300, 4096

PAPER_MODEL = ModelConfig(
    channels=4, chunk_frames=CHUNK, prediction="velocity",
    dit=DiTConfig(width=1152, depth=28, heads=16, mlp_ratio=4.0, patch_t=1, patch_s=2),
    vin=VINConfig(num_global=512, width=4096, heads=32, processor_depth=4, keyframe_stride=KEYFRAME_STRIDE, patch_s=2),
    # depth 0: the (frozen, run-once) T5 encoder is not counted; its 300 tokens of width 4096 are
    text=TextConfig(width=CAPTION_WIDTH, max_tokens=CAPTION_TOKENS, depth=0, heads=32),
)


def latent_frames(frames: int) -> int:
    """Video frames -> latent frames of the 16 -> 5 temporal VAE."""
    if frames % 16:
        raise ValueError(f"the paper's VAE maps 16 frames to 5 latent frames; {frames} is not a multiple of 16")
    return frames * 5 // 16


def stdit_flops(latent: int, sequences: int, global_keys: int) -> int:
    """One call of an Open-Sora-1.2-like ST-DiT (28 spatial + 28 temporal blocks with caption
    cross-attention) on `sequences` windows of `latent` latent frames; `global_keys` extra keys in
    every cross-attention (the VIN's projected global tokens). The per-sequence timestep embedding
    and adaLN (a few D x 6D products per call) are left out."""
    d = PAPER_MODEL.dit
    D, heads, hd = d.width, d.heads, d.width // d.heads
    hw = (LATENT_SIZE[0] // d.patch_s) * (LATENT_SIZE[1] // d.patch_s)
    n = latent * hw
    keys = CAPTION_TOKENS + global_keys
    patch_dim = PAPER_MODEL.channels * d.patch_s**2
    common = (attention_linear_flops(n, n, D) + attention_linear_flops(n, 0, D) + linear_flops(keys, D, 2 * D)
              + attention_flops(1, heads, n, keys, hd) + mlp_flops(n, D, d.mlp_ratio))
    spatial = attention_flops(latent, heads, hw, hw, hd)
    temporal = attention_flops(hw, heads, latent, latent, hd)
    io = (linear_flops(n, patch_dim, D) + linear_flops(n, D, patch_dim)
          + linear_flops(CAPTION_TOKENS, CAPTION_WIDTH, D) + linear_flops(CAPTION_TOKENS, D, D)
          + (linear_flops(global_keys, PAPER_MODEL.vin.width, D) if global_keys else 0))
    return sequences * (io + d.depth * (2 * common + spatial + temporal))


def paper_scale_table(lengths: tuple[int, ...] = (64, 128, 256, 512),
                      layouts: tuple[tuple[int, int], ...] = ((CHUNK, 12), (CHUNK, 8), (CHUNK + 12, 12)),
                      variants: tuple[str, ...] = ("joint", "stdit")) -> list[dict]:
    """One row per (variant, layout, length): FLOPs per denoising step of full attention and of VIN
    (and of its read + processor), the ratio VIN / full and the share saved (negative: VIN costs
    more). A layout is (window, context) in latent frames: (20, 12) is the paper's inference
    setting read as "the context lies inside the 20-frame chunk" (our answer to open question 4);
    (20, 8) the training context; (32, 12) the other reading, "20 new frames plus 12 of context".
    A video shorter than the window is one window of its own length."""
    rows = []
    full_model = replace(PAPER_MODEL, vin=replace(PAPER_MODEL.vin, enabled=False))
    for variant in variants:
        if variant not in ("joint", "stdit"):
            raise ValueError(f"unknown variant {variant!r} (joint or stdit)")
        for window, context in layouts:
            for frames in lengths:
                n_lat = latent_frames(frames)
                w = min(window, n_lat)
                chunks = len(chunk_layout(n_lat, w, min(context, w - 1)))
                read = sum(read_flops(PAPER_MODEL, 1, n_lat, LATENT_SIZE, KEYFRAME_STRIDE))
                if variant == "joint":
                    model = replace(PAPER_MODEL, chunk_frames=w)
                    sample = SampleConfig(frames=n_lat, chunk_frames=w, overlap=min(context, w - 1), steps=1)
                    full = analytic_flops(full_model, sample, LATENT_SIZE, "full")["total"]
                    vin = analytic_flops(model, sample, LATENT_SIZE, "vin")["total"]
                else:
                    full = stdit_flops(n_lat, 1, 0)
                    vin = stdit_flops(w, chunks, PAPER_MODEL.vin.num_global) + read
                rows.append({"variant": variant, "window": window, "context": context, "frames": frames,
                             "latent_frames": n_lat, "chunks": chunks, "full_flops": full, "vin_flops": vin,
                             "vin_read_flops": read, "ratio": vin / full, "saved": 1.0 - vin / full})
    return rows


_VARIANT_TITLE = {"joint": "joint 3-D attention (our chunk DiT at Open-Sora size)",
                  "stdit": "factorised spatial + temporal attention (Open-Sora 1.2 STDiT3-like; global tokens as "
                           "extra cross-attention keys)"}


def format_paper_table(rows: list[dict], steps: int = STEPS) -> str:
    """Markdown: the assumptions, then one table per variant."""
    lines = ["Paper-scale FLOPs (analytic, matmuls only, 2 FLOPs per multiply-add). Assumptions: DiT width 1152, "
             "28 layers, 16 heads, patch 1x2x2 on a 4-channel latent; 192x320 video, VAE 8x spatial (24x40 latent, "
             "240 tokens per latent frame) and 16->5 temporal (F frames -> 5F/16 latent frames); caption 300 T5 tokens "
             "of width 4096 projected to 1152 (T5 itself not counted); VIN: 512 global tokens of width 4096, read of "
             "keyframes every 5th latent frame (patch 2x2), 4 processor blocks of width 4096; window/context in latent "
             "frames (20/12: the paper's chunk and inference context, context inside the chunk; 20/8: the training "
             "context; 32/12: 20 new frames + 12 of context); full = the DiT alone over the whole video; one "
             f"evaluation per step (no CFG), x{steps} steps per video. PAPER.md: \"25-40% fewer FLOPs than full "
             "generation\"."]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["variant"], []).append(r)
    for variant, group in groups.items():
        lines += ["", _VARIANT_TITLE[variant],
                  f"| window/context | frames | latent frames | chunks | full TFLOP/step | VIN TFLOP/step | "
                  f"of which read+processor | full PFLOP x{steps} | VIN PFLOP x{steps} | VIN/full | saved |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in group:
            lines.append(f"| {r['window']}/{r['context']} | {r['frames']} | {r['latent_frames']} | {r['chunks']} | "
                         f"{r['full_flops'] / 1e12:.1f} | {r['vin_flops'] / 1e12:.1f} | {r['vin_read_flops'] / 1e12:.2f} | "
                         f"{steps * r['full_flops'] / 1e15:.2f} | {steps * r['vin_flops'] / 1e15:.2f} | "
                         f"{r['ratio']:.2f} | {100 * r['saved']:+.0f}% |")
    return "\n".join(lines)
