"""Chunk-parallel VIN sampling over processes: the same video as `sample_vin`, split across ranks.

Ownership (`partition`): rank r owns a contiguous run of chunks [c0, c1) (any chunk count; with
fewer chunks than ranks the last ranks own none) and the frames [start(c0), start(c1)) - from the
start of its first window to the start of the next rank's first window (the last owning rank: to
the end). Owned frame ranges partition [0, N), so every keyframe belongs to exactly one rank, and
every rank keeps the solver state of its owned frames only. A rank's windows may reach past its
owned frames into the next rank(s)' (the overlap), never before them.

Per velocity evaluation (one per Euler step, two per Heun step), rank r:
1. receives from its right neighbour(s) the noisy overlap frames its last window needs ("halo");
2. computes the read exactly: the replicated global-token queries attend to the keyframes of its
   owned frames only (`VideoInterface.read_attend` -> out, log-sum-exp), then ONE sum all-reduce
   (after a max all-reduce of the log-sum-exp, for stability) merges the parts into the full
   softmax - the merge ring and flash attention use. Keyframe tokens never move. The processor
   blocks (`read_end`) then run on every rank;
3. denoises its own chunks and fuses them with the global fusion weights of those windows;
4. sends the weighted predictions for frames it does not own to their owners and adds what it
   receives, giving exactly the fused velocity of its owned frames; the solver steps them.
Traffic per evaluation: the read's all-reduce, O(B x N_global x width), whatever the video length,
plus O(B x overlap x frame) for the halo both ways. Rank 0 gathers the owned frames at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import Tensor

from vin.config import SampleConfig
from vin.distributed.group import CommStats, DistContext, collective, global_rank
from vin.models.text import TextEmbedding
from vin.models.vin import VINModel
from vin.sampling.chunking import Layout, chunk_layout, fusion_weights, merge_chunks
from vin.sampling.common import Conditioning, Progress, encode, resolve_chunk_frames, solve
from vin.sampling.noise import step_noise, video_noise
from vin.sampling.vin_parallel import chunk_velocity, fusion_active


@dataclass(frozen=True)
class Part:
    """One rank's share: chunks [c0, c1), owned frames [a, b), frames its windows cover [a, end)."""

    c0: int
    c1: int
    a: int
    b: int
    end: int

    def local_layout(self, layout: Layout) -> Layout:
        """This rank's windows relative to frame `a` (a valid layout of the span [a, end))."""
        return tuple((s - self.a, e - self.a) for s, e in layout[self.c0:self.c1])


def partition(layout: Layout, num_frames: int, world: int) -> list[Part]:
    """Contiguous, balanced runs of chunks (the first `n % world` ranks get one more) and the
    frames each rank owns; ranks beyond the chunk count own nothing (they still join collectives)."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    n = len(layout)
    base, extra = divmod(n, world)
    starts = [s for s, _ in layout] + [num_frames]
    parts, c = [], 0
    for r in range(world):
        c1 = c + base + (r < extra)
        a, b = starts[c], starts[c1]
        parts.append(Part(c, c1, a, b, layout[c1 - 1][1] if c1 > c else a))
        c = c1
    return parts


def halo_plan(parts: list[Part]) -> dict[tuple[int, int], tuple[int, int]]:
    """{(needer, owner): (f0, f1)}: frames [f0, f1) owned by `owner` that `needer`'s windows cover."""
    plan = {}
    for r, p in enumerate(parts):
        for q, o in enumerate(parts):
            f0, f1 = max(p.b, o.a), min(p.end, o.b)
            if q != r and f0 < f1:
                plan[(r, q)] = (f0, f1)
    return plan


def _exchange(ctx: DistContext, sends: list[tuple[int, Tensor]], recvs: list[tuple[int, Tensor]],
              stats: CommStats | None, category: str) -> None:
    """Point-to-point: send/receive the given tensors to/from group ranks, all at once."""
    ops = [dist.P2POp(dist.isend, t.contiguous(), global_rank(ctx, peer), ctx.group) for peer, t in sends]
    ops += [dist.P2POp(dist.irecv, t, global_rank(ctx, peer), ctx.group) for peer, t in recvs]
    if not ops:
        return
    with collective(ctx, category):
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    if stats is not None and sends:
        stats.add(category, *(t for _, t in sends))


def allreduce_attention(ctx: DistContext, out: Tensor, lse: Tensor, stats: CommStats | None) -> tuple[Tensor, Tensor]:
    """Exact merge over ranks of attention parts with the same queries and disjoint keys.

    out (B, H, L, d) normalised over this rank's keys, lse (B, H, L) (-inf for no keys) ->
    the attention over all ranks' keys and its log-sum-exp, identical on every rank.
    """
    m = lse.float().clone()
    with collective(ctx, "read all-reduce (max)"):
        dist.all_reduce(m, dist.ReduceOp.MAX, group=ctx.group)
    w = torch.exp(lse.float() - m)  # 0 on a rank without keys
    packed = torch.cat([out.float() * w[..., None], w[..., None]], dim=-1)
    with collective(ctx, "read all-reduce (sum)"):
        dist.all_reduce(packed, dist.ReduceOp.SUM, group=ctx.group)
    if stats is not None:
        stats.add("read", m, packed)
    total = packed[..., -1]
    return (packed[..., :-1] / total[..., None]).to(out.dtype), m + torch.log(total)


def distributed_read(model: VINModel, ctx: DistContext, x_own: Tensor, start: int, num_frames: int,
                     t: Tensor, text: TextEmbedding, stats: CommStats | None = None,
                     keyframe_stride: int | None = None) -> Tensor | None:
    """The interface read of the whole video, from this rank's owned frames [start, start + F_own).

    x_own (B, C, F_own, H, W) -> global tokens (B, N_global, D), equal on every rank (and to
    `model.read` of the whole video up to float rounding); None for a model without interface.
    `keyframe_stride` overrides the model's (None: the configured one), as in `model.read`.
    """
    iface = model.interface
    if iface is None:
        return None
    idx = iface.keyframe_indices(num_frames, start, start + x_own.shape[2], stride=keyframe_stride, device=x_own.device)
    c, q, z0 = iface.read_begin(t, text)
    out, lse = iface.read_attend(q, x_own[:, :, idx - start], idx, num_frames)
    out, _ = allreduce_attention(ctx, out, lse, stats)
    return iface.read_end(out, c, z0, text)


@torch.no_grad()
def sample_vin_distributed(model: VINModel, captions: list[str], cfg: SampleConfig, frame_size: tuple[int, int],
                           ctx: DistContext, progress: Progress | None = None, use_global: bool = True,
                           stats: CommStats | None = None) -> Tensor | None:
    """`sample_vin` (the `vin` strategy) across the ranks of `ctx` (every rank calls it with the
    same arguments), with the same switches: cfg.global_tokens (read | none | zeros; or
    `use_global=False`), cfg.keyframe_stride, fusion, guidance, prompt schedules ("a; b").

    Returns the video (B, C, N, H, W) on rank 0 and None on the others. `stats` (optional) counts
    the bytes this rank sends: "read" (all-reduce), "halo" (overlap frames), "gather" (final video).
    """
    check_strategy(cfg)
    if not use_global:
        cfg = replace(cfg, global_tokens="none")
    mc, device = model.cfg, ctx.device
    F = resolve_chunk_frames(model, cfg)
    N = cfg.frames
    layout = chunk_layout(N, F, cfg.overlap)
    parts = partition(layout, N, ctx.world)
    me = parts[ctx.rank]
    local = me.local_layout(layout)
    plan = halo_plan(parts)
    weights = {m: fusion_weights(layout, N, m)[me.c0:me.c1].to(device) for m in ("crossfade", "owner")}
    cond = local_conditioning(encode(model, captions, cfg, len(layout), "vin"), len(layout), me.c0, me.c1)
    stride = cfg.keyframe_stride or None
    h, w = frame_size
    B, C = len(captions), mc.channels
    x = video_noise(cfg.seed, B, C, range(me.a, me.b), h, w, device)

    def empty(frames: int) -> Tensor:
        return torch.empty(B, C, frames, h, w, device=device)

    def read(xs: Tensor, tt: Tensor, texts: TextEmbedding) -> Tensor | None:
        return distributed_read(model, ctx, xs[:, :, :me.b - me.a], me.a, N, tt, texts, stats, stride)

    def velocity(x_own: Tensor, t: float) -> Tensor:
        # 1. the overlap frames my windows need, from their owners (to my right)
        sends = [(r, x_own[:, :, f0 - me.a:f1 - me.a]) for (r, q), (f0, f1) in plan.items() if q == ctx.rank]
        recvs = [(q, empty(f1 - f0)) for (r, q), (f0, f1) in sorted(plan.items()) if r == ctx.rank]
        _exchange(ctx, sends, recvs, stats, "halo")
        x_span = torch.cat([x_own] + [buf for _, buf in recvs], dim=2)
        # 2-3. exact read (collective: every rank, with or without chunks), my chunks, my fusion
        v = chunk_velocity(model, x_span, t, local, cond, cfg, read=read)
        mode = "crossfade" if fusion_active(t, cfg.fusion, cfg.fusion_span) else "owner"
        v_span = merge_chunks(v, local, weights[mode]) if local else empty(0)
        # 4. weighted predictions of frames I do not own go to their owners; add what comes to me
        sends = [(q, v_span[:, :, f0 - me.a:f1 - me.a]) for (r, q), (f0, f1) in plan.items() if r == ctx.rank]
        recvs = [(r, (empty(f1 - f0), f0)) for (r, q), (f0, f1) in sorted(plan.items()) if q == ctx.rank]
        _exchange(ctx, sends, [(r, buf) for r, (buf, _) in recvs], stats, "halo")
        acc = torch.zeros_like(x_own)
        for _, (buf, f0) in recvs:  # senders lie to my left: earlier windows, added first (as merge_chunks)
            acc[:, :, f0 - me.a:f0 - me.a + buf.shape[2]] += buf
        return acc + v_span[:, :, :me.b - me.a]

    x = solve(velocity, x, cfg, progress, step_noise(cfg.seed, B, C, range(me.a, me.b), h, w, device))
    return gather_frames(ctx, x, parts, stats)


def check_strategy(cfg: SampleConfig) -> None:
    """Multi-process sampling is the `vin` strategy's; refuse any other in one line."""
    if cfg.strategy != "vin":
        raise ValueError(f"multi-process sampling (--procs, torchrun) runs the vin strategy only, "
                         f"not {cfg.strategy!r}; use one process for it")


def local_conditioning(cond: Conditioning, num_chunks: int, c0: int, c1: int) -> Conditioning:
    """The DiT captions of chunks [c0, c1) only, when they are per chunk (a prompt schedule: rows
    video-major, B*n); per-video captions (and the read's) are kept whole."""
    if cond.chunk_text.tokens.shape[0] == cond.batch:
        return cond
    rows = torch.tensor([b * num_chunks + k for b in range(cond.batch) for k in range(c0, c1)], dtype=torch.long)
    take = lambda e: None if e is None else e.take(rows.to(e.tokens.device))  # noqa: E731
    return replace(cond, chunk_text=take(cond.chunk_text), chunk_null=take(cond.chunk_null))


def gather_frames(ctx: DistContext, x_own: Tensor, parts: list[Part], stats: CommStats | None = None) -> Tensor | None:
    """Owned frames of every rank -> the whole video on rank 0 (None elsewhere)."""
    if ctx.rank != 0:
        _exchange(ctx, [(0, x_own)] if x_own.shape[2] else [], [], stats, "gather")
        return None
    shape = list(x_own.shape)
    bufs = []
    for q, p in enumerate(parts[1:], start=1):
        if p.b > p.a:
            shape[2] = p.b - p.a
            bufs.append((q, torch.empty(shape, dtype=x_own.dtype, device=x_own.device)))
    _exchange(ctx, [], bufs, stats, "gather")
    return torch.cat([x_own] + [buf for _, buf in bufs], dim=2)
