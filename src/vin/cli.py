"""Command line: thin wrappers that parse arguments into typed configs and call library functions.

Bad input ends with one line `vin: error: ...` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path

from vin.config import SOLVERS, STRATEGIES, SampleConfig, load_config
from vin.distributed import DistributedError, launched_by_torchrun

EPILOG_TRAIN = """Any config field can be overridden as --section.key=value, e.g.
  vin train --config configs/vin-s.yaml --train.steps=2000 --model.vin.enabled=false --out runs/ablation
A cool-down branched off a constant-rate run (warmup-stable-decay), which goes on untouched:
  vin train --out runs/cool-24000 --train.steps=24600 --train.lr_decay=linear --train.decay_steps=600 \\
      --resume-from runs/trunk/checkpoints/step-0024000.safetensors
(without --config the config is the checkpoint's, changed by the overrides)"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `vin: error: ...` line like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"vin: error: {' '.join(message.split())} (see {self.prog} --help)\n")


EPILOG_BENCH = """examples:
  vin bench --procs 1 2 --frames 64 --steps 10            # multi-process VIN sampling: time, same video, traffic
  vin bench --strategies vin full independent autoregressive freenoise spectral --frames 32 64 --steps 5 --out bench.json
  vin bench --strategies vin full --frames 64 256 --flops-only --count-flops   # FLOPs, analytic and counted
  vin bench --paper                                        # the paper's setting: full vs VIN FLOPs per step
  vin bench --train configs/vin-s.yaml --steps 20          # training step time, eager vs torch.compile
  vin bench --train configs/vin-s.yaml --train.autocast_bf16=false --train-modes eager   # any config override"""


def _check_device(name: str) -> None:
    import torch

    try:
        torch.empty(0, device=name)
    except (RuntimeError, AssertionError) as e:  # unknown device string; torch built without CUDA; no such GPU
        raise ValueError(f"--device {name!r} is not usable here ({str(e).strip().splitlines()[0]})") from None


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from vin.training.trainer import check_run_dir, describe, train

    from vin.checkpoint import checkpoint_config
    from vin.training.rundir import checkpoints

    base = None  # without --config or --preset: the config of the run that goes on, changed by the overrides
    if args.config is None and args.preset is None:
        if args.resume_from is not None and Path(args.resume_from).is_file():
            base = checkpoint_config(args.resume_from)
        elif args.resume and args.out is not None and checkpoints(Path(args.out)):
            base = checkpoint_config(checkpoints(Path(args.out))[-1])
    cfg = load_config(args.config, overrides, preset=args.preset, base=base)
    out = Path(args.out or f"runs/{cfg.name}")
    _check_device(args.device)
    check_run_dir(cfg, out, args.resume, args.resume_from)  # before anything is printed: bad input ends in one line
    if not launched_by_torchrun():
        print(describe(cfg), file=sys.stderr)
        stats = train(cfg, out, resume=args.resume, device=args.device, progress=not args.quiet,
                      resume_from=args.resume_from)
    else:  # torchrun --nproc_per_node P -m vin train ...: DDP, train.batch_size is the global batch
        with _torchrun_group(args.device) as ctx:
            if ctx.rank == 0:
                print(f"{describe(cfg)}; data-parallel on {ctx.world} processes", file=sys.stderr)
            stats = train(cfg, out, resume=args.resume, progress=not args.quiet, ctx=ctx, resume_from=args.resume_from)
            if ctx.rank != 0:
                return _stopped_code(stats)
    if "stopped_by" in stats:
        how = "--resume in place of --resume-from" if args.resume_from is not None else "--resume"
        print(f"vin: stopped by {stats['stopped_by']} at step {stats['step']}; checkpoint written to {out}; "
              f"continue with the same command and {how}", file=sys.stderr)
        return _stopped_code(stats)
    print(f"trained to step {stats.get('step', cfg.train.steps)} in {out} (loss {stats.get('loss', float('nan')):.4f})")
    return 0


def _stopped_code(stats: dict) -> int:
    """0 for a finished run; 128 + the signal's number for a run stopped by one (the shell's convention,
    so a script can tell a stopped run from a finished one)."""
    if "stopped_by" not in stats:
        return 0
    import signal

    name = stats["stopped_by"]
    return 128 + int(getattr(signal, name, signal.SIGTERM))


def _warn_unseen_words(prompts: list[str]) -> None:
    """Captions are hashed, so any word is accepted, but the models are trained on the sprite
    world's captions only: say which words they never saw (they act as noise, not as meaning)."""
    from vin.data.synthetic import VOCABULARY
    from vin.models.text import caption_words

    unseen = sorted({w for p in prompts for w in caption_words(p) if w not in VOCABULARY})
    if unseen and os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(f"vin: warning: the training captions never use {', '.join(map(repr, unseen))}; known words: "
              f"{' '.join(VOCABULARY)}", file=sys.stderr)


def _generate(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unknown arguments: {' '.join(overrides)}")
    from vin.generate import DEFAULT_PROMPT, generate

    sample = SampleConfig(frames=args.frames, chunk_frames=args.chunk_frames, overlap=args.overlap,
                          steps=args.steps, solver=args.solver, eta=args.eta, shift=args.shift, cfg=args.cfg,
                          cfg_global=args.cfg_global, fusion=args.fusion, fusion_span=args.fusion_span,
                          seed=args.seed, strategy=args.strategy,
                          global_tokens="none" if args.no_global else args.global_tokens,
                          keyframe_stride=args.keyframe_stride, positions=args.positions,
                          attention_limit_gb=args.attention_limit_gb, freenoise_weights=args.freenoise_weights,
                          spectral_cutoff=args.spectral_cutoff)
    prompts = args.prompt or [DEFAULT_PROMPT]
    _warn_unseen_words(prompts)
    _check_device(args.device)
    kwargs = dict(checkpoint=args.checkpoint, device=args.device, strip=not args.no_strip, scale=args.scale,
                  progress=not args.quiet)
    if launched_by_torchrun():  # torchrun --nproc_per_node P -m vin generate ...
        if args.procs != 1:
            raise ValueError("--procs spawns local processes; under torchrun use --nproc_per_node instead")
        with _torchrun_group(args.device) as ctx:
            written = generate(prompts, sample, args.out, ctx=ctx, **kwargs)
    else:
        from vin.generate import generate_multiprocess

        written = generate_multiprocess(args.procs, prompts, sample, args.out, threads=args.threads, **kwargs)
    for path in written:
        print(path)
    return 0


@contextlib.contextmanager
def _torchrun_group(device: str):
    from vin.distributed.group import setup_from_env, teardown

    try:
        yield setup_from_env(device)
    finally:
        teardown()


def _bench(args: argparse.Namespace, overrides: list[str]) -> int:
    """Four benchmarks: --procs (multi-process VIN sampling, the default), --strategies (time,
    memory and FLOPs per strategy and length), --paper (analytic FLOPs of the paper's setting),
    --train (training step time, eager vs compiled; takes config overrides)."""
    if args.train is not None:
        return _bench_training(args, overrides)
    if args.train_modes is not None:
        raise ValueError("--train-modes needs --train CONFIG")
    if overrides:
        raise ValueError(f"unknown arguments: {' '.join(overrides)}")
    if args.strategies and args.procs is not None:
        raise ValueError("--procs and --strategies are separate benchmarks; give one of them")
    run_procs = args.procs is not None or not (args.strategies or args.paper)
    if args.out is not None and run_procs:
        raise ValueError("--out records --strategies and --paper runs, not --procs")
    for flag in ("count_flops", "flops_only"):
        if getattr(args, flag) and not args.strategies:
            raise ValueError(f"--{flag.replace('_', '-')} needs --strategies")
    _check_device(args.device)
    from vin.generate import DEFAULT_CHECKPOINT, DEFAULT_PROMPT

    prompts = args.prompt or [DEFAULT_PROMPT]
    sample = SampleConfig(frames=args.frames[0], chunk_frames=args.chunk_frames, overlap=args.overlap,
                          steps=args.steps, seed=args.seed, solver=args.solver, eta=args.eta, cfg=args.cfg,
                          attention_limit_gb=args.attention_limit_gb)
    record: dict = {}
    if args.strategies:
        from vin.eval.bench import bench_strategies, format_strategy_table

        progress = None if args.quiet else (lambda message: print(f"bench: {message}", file=sys.stderr))
        record = bench_strategies(args.checkpoint, args.strategies, args.frames, sample, prompts, args.device,
                                  args.threads, args.repeats, args.count_flops, not args.flops_only, progress)
        print(format_strategy_table(record))
    if args.paper:
        from vin.eval.paper_scale import format_paper_table, paper_scale_table

        record["paper"] = paper_scale_table()
        print(("\n" if args.strategies else "") + format_paper_table(record["paper"]))
    if args.out is not None:
        from vin.eval.bench import write_record

        print(write_record(args.out, record), file=sys.stderr)
    if not run_procs:
        return 0
    from vin.distributed.bench import bench, format_table

    checkpoint = args.checkpoint or DEFAULT_CHECKPOINT
    worst = 0.0
    for i, frames in enumerate(args.frames):
        rows, resolved = bench(checkpoint, replace(sample, frames=frames), args.procs or [1, 2], prompts,
                               args.device, args.threads)
        print(("\n" if i else "") + format_table(rows, resolved, args.threads))
        worst = max([worst] + [r.max_diff for r in rows])
    if worst > 1e-5:
        print(f"vin: error: the videos differ across process counts (max |diff| {worst:.2e})", file=sys.stderr)
        return 1
    return 0


def _bench_training(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.strategies or args.procs is not None or args.paper:
        raise ValueError("--train is its own benchmark; give it without --procs, --strategies or --paper")
    _check_device(args.device)
    from vin.training.bench import bench_training, format_training_table

    cfg = load_config(args.train, overrides)
    progress = None if args.quiet else (lambda message: print(f"bench: {message}", file=sys.stderr))
    record = {"train": bench_training(cfg, args.train_modes or ["eager", "compile"], args.steps, args.device,
                                      args.threads, progress)}
    print(format_training_table(record["train"]))
    if args.out is not None:
        from vin.eval.bench import write_record

        print(write_record(args.out, record), file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unknown arguments: {' '.join(overrides)}")
    from vin.eval.compare import parse_methods, run_comparison
    from vin.generate import DEFAULT_CHECKPOINT, DEFAULT_PROMPT

    _check_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    methods = parse_methods(args.strategies, str(args.checkpoint or DEFAULT_CHECKPOINT), args.also or [])
    if any(n < 1 for n in args.frames) or args.steps < 1:
        raise ValueError("--frames and --steps must be positive")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    base = SampleConfig(chunk_frames=args.chunk_frames, overlap=args.overlap, steps=args.steps, solver=args.solver,
                        eta=args.eta, cfg=args.cfg, attention_limit_gb=args.attention_limit_gb)
    prompts = args.prompt or [DEFAULT_PROMPT]
    _warn_unseen_words(prompts)
    run_comparison(methods, sorted(set(args.frames)), list(dict.fromkeys(args.seeds)), prompts, base, args.out,
                   device=args.device, feature=args.feature, flow=args.flow, progress=not args.quiet)
    print(args.out / "report.html")
    print(args.out / "report.md")
    return 0


def _export(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unknown arguments: {' '.join(overrides)}")
    from vin.checkpoint import export_weights

    print(export_weights(args.checkpoint, args.out))
    return 0


def _plot(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unknown arguments: {' '.join(overrides)}")
    from vin.training.logplot import parse_marks, plot_losses

    print(plot_losses(args.runs, args.out, labels=args.label, window=args.smooth, marks=parse_marks(args.mark)))
    return 0


def _downscale_arg(value: str) -> str | int:
    if value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {value!r}")
    return k


def _evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unknown arguments: {' '.join(overrides)}")
    import json

    from vin.eval.evaluate import evaluate_paths, format_table
    from vin.fileio import atomic_write_text

    if args.chunk_frames is not None and args.chunk_frames < 1:
        raise ValueError(f"--chunk-frames must be a positive integer, got {args.chunk_frames}")
    first = Path(args.inputs[0])
    out = args.out or (first if first.is_dir() else first.parent) / "evaluation.json"
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out} must end in .json")
    per_video, summary = evaluate_paths(args.inputs, args.chunk_frames, args.overlap, feature=args.feature,
                                        flow=args.flow, synthetic=not args.no_synthetic,
                                        downscale_factor=args.downscale, fps=args.fps)
    record = {"inputs": [str(p) for p in args.inputs],
              "settings": {"chunk_frames": args.chunk_frames, "overlap": args.overlap, "feature": args.feature,
                           "flow": args.flow, "synthetic": not args.no_synthetic, "downscale": args.downscale,
                           "fps": args.fps},
              "summary": summary, "videos": per_video}
    atomic_write_text(out, json.dumps(record, indent=2))
    print(format_table(per_video, summary))
    ours, chance = summary["metrics"], summary["mismatched_captions"]
    pairs = [(m.split("_")[1], ours[m]["mean"], chance[m]["mean"]) for m in chance
             if chance[m]["mean"] is not None and ours[m]["mean"] is not None]
    if pairs:
        print("caption adherence, own caption / chance (on the videos of other prompts): "
              + ", ".join(f"{name} {own:.3f} / {base:.3f}" for name, own, base in pairs))
    print(f"wrote {out}")
    return 0


def _solver_args(p: argparse.ArgumentParser, d: SampleConfig) -> None:
    p.add_argument("--solver", choices=SOLVERS, default=d.solver,
                   help="euler, heun (2nd order, 2 calls per step) or ddim (with --eta: stochastic)")
    p.add_argument("--eta", type=float, default=d.eta,
                   help="ddim: 0 deterministic (= euler), 1 ancestral sampling (fresh noise each step)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vin", description="Long video generation with Video Interface Networks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a VIN + chunk DiT on synthetic long videos",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="YAML config (see configs/)")
    p.add_argument("--preset", help="named size when no --config names one (VIN-XS/4, VIN-S/4, VIN-B/4)")
    p.add_argument("--out", help="run directory (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out (without --config or --preset, with "
                        "that checkpoint's config, changed by the overrides)")
    p.add_argument("--resume-from", type=Path, metavar="CKPT",
                   help="start --out (a new run directory) where the run that wrote this training checkpoint "
                        "would have gone on: weights, optimizer, step, schedule and log (e.g. a cool-down "
                        "branched off a constant-rate run); without --config or --preset, the config is the "
                        "checkpoint's, changed by the --section.key=value overrides")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    d = SampleConfig()
    p = sub.add_parser("generate", help="generate a long video (VIN-parallel or another strategy)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint (default: the one shipped with vin)")
    p.add_argument("--strategy", choices=STRATEGIES, default=d.strategy,
                   help=f"long-video strategy, all on the same weights (default {d.strategy}; see the README)")
    p.add_argument("--prompt", action="append",
                   help="caption; repeat for several videos; 'a; b; c' is a schedule (one prompt per chunk, in order)")
    p.add_argument("--frames", type=int, default=d.frames, help=f"video length in frames (default {d.frames})")
    p.add_argument("--chunk-frames", type=int, default=0, help="chunk window (default: the model's)")
    p.add_argument("--overlap", type=int, default=d.overlap, help=f"frames shared by neighbouring chunks (default {d.overlap})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"solver steps (default {d.steps})")
    _solver_args(p, d)
    p.add_argument("--shift", type=float, default=d.shift, help="timestep shift (>1: more steps at high noise)")
    p.add_argument("--cfg", type=float, default=d.cfg, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--cfg-global", choices=("recompute", "shared"), default=d.cfg_global,
                   help="unconditional pass: read global tokens again with the empty caption, or reuse")
    p.add_argument("--fusion", choices=("early", "mid", "late", "always", "none"), default=d.fusion,
                   help="when overlapping predictions are cross-faded")
    p.add_argument("--fusion-span", type=float, default=d.fusion_span, help="fraction of the trajectory with fusion")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--global-tokens", choices=("read", "none", "zeros"), default=d.global_tokens,
                   help="global tokens the DiT gets: read from the video, none, or zeros (ablations)")
    p.add_argument("--no-global", action="store_true", help="same as --global-tokens none")
    p.add_argument("--keyframe-stride", type=int, default=0, help="the read's keyframe stride (default: the model's)")
    p.add_argument("--positions", choices=("interpolate", "extrapolate"), default=d.positions,
                   help="full/spectral: temporal positions beyond one chunk")
    p.add_argument("--attention-limit-gb", type=float, default=d.attention_limit_gb,
                   help=f"full/spectral: refuse when attention would need more (default {d.attention_limit_gb})")
    p.add_argument("--freenoise-weights", choices=("flat", "pyramid"), default=d.freenoise_weights,
                   help="freenoise: how overlapping windows are averaged")
    p.add_argument("--spectral-cutoff", type=float, default=d.spectral_cutoff,
                   help="spectral: fraction of temporal frequencies taken from global attention (1 = full)")
    p.add_argument("--out", type=Path, default=Path("outputs/video.mp4"), help="output .mp4 or .gif")
    p.add_argument("--scale", type=int, default=8, help="integer upscaling of the written video")
    p.add_argument("--no-strip", action="store_true", help="do not write the PNG frame strip")
    p.add_argument("--device", default="cpu", help="cpu or cuda (several processes: one GPU each)")
    p.add_argument("--procs", type=int, default=1,
                   help="spawn this many local processes for chunk-parallel sampling (same video); "
                        "or launch with torchrun --nproc_per_node P -m vin generate ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process with --procs (0: share the cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_generate)

    p = sub.add_parser("bench", help="benchmarks: multi-process sampling (--procs), strategies (--strategies), "
                                     "the paper's FLOPs (--paper)",
                       epilog=EPILOG_BENCH, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+",
                   help="process counts to compare for VIN sampling (the default benchmark: 1 2)")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, metavar="STRATEGY",
                   help=f"time, peak memory and FLOPs of these strategies ({', '.join(STRATEGIES)})")
    p.add_argument("--paper", action="store_true", help="print the analytic FLOPs of the paper's setting (full vs VIN)")
    p.add_argument("--train", type=Path, metavar="CONFIG",
                   help="time training steps of this config (--steps measured steps after a warm-up), eager vs "
                        "torch.compile; config overrides --section.key=value apply")
    p.add_argument("--train-modes", nargs="+", choices=("eager", "compile"),
                   help="--train: the modes to compare, the first the reference (default: eager compile)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint (default: the one shipped with vin)")
    p.add_argument("--prompt", action="append")
    p.add_argument("--frames", type=int, nargs="+", default=[64], help="video lengths (default 64)")
    p.add_argument("--chunk-frames", type=int, default=0)
    p.add_argument("--overlap", type=int, default=d.overlap)
    p.add_argument("--steps", type=int, default=10)
    _solver_args(p, d)
    p.add_argument("--cfg", type=float, default=d.cfg, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--attention-limit-gb", type=float, default=d.attention_limit_gb,
                   help="full/spectral: larger attention is reported as refused")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="--strategies: fresh-process runs per row (median)")
    p.add_argument("--count-flops", action="store_true", help="--strategies: also count FLOPs of the real run")
    p.add_argument("--flops-only", action="store_true", help="--strategies: FLOPs only, no timed runs")
    p.add_argument("--out", type=Path, help="--strategies / --paper / --train: write every row to this JSON file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_bench)

    p = sub.add_parser("evaluate", help="offline long-video metrics (no downloaded weights) of videos or folders",
                       description="Offline long-video metrics of .mp4/.gif videos (folders: every video inside). "
                                   "Chunk boundaries come from the .json vin generate writes next to a video, else "
                                   "from --chunk-frames/--overlap. Writes per-video results and a summary as JSON.")
    p.add_argument("inputs", nargs="+", metavar="VIDEO_OR_FOLDER", help=".mp4/.gif files or folders of them")
    p.add_argument("--chunk-frames", type=int, help="chunk length, for videos without a vin generate .json")
    p.add_argument("--overlap", type=int, help="frames shared by neighbouring chunks, with --chunk-frames (default 0)")
    p.add_argument("--feature", default="pixels",
                   help="similarity for consistency and drift: pixels, ssim, hist, dino:PATH or clip:PATH (default pixels)")
    p.add_argument("--flow", choices=("farneback", "dis"), default="farneback", help="optical flow (default farneback)")
    p.add_argument("--no-synthetic", action="store_true", help="skip the sprite-world identity metrics")
    p.add_argument("--downscale", type=_downscale_arg, default="auto",
                   help="undo the upscale of written videos: auto (from the .json or detected), or a factor (1 = none)")
    p.add_argument("--fps", type=float, help="frame rate for the dynamic-degree sampling (default: the .json's or the file's)")
    p.add_argument("--out", type=Path, help="output JSON (default: evaluation.json next to the first input)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("compare", help="strategies x lengths x seeds on one checkpoint -> an HTML/markdown report")
    p.add_argument("--strategies", nargs="*", default=["vin", "independent", "full"], metavar="STRATEGY",
                   help=f"strategies to run on --checkpoint (of {', '.join(STRATEGIES)}; default vin independent full)")
    p.add_argument("--also", action="append", metavar="LABEL=CHECKPOINT",
                   help="also run vin on another checkpoint, e.g. the no-global ablation (repeatable)")
    p.add_argument("--checkpoint", type=Path, help="checkpoint (default: the one shipped with vin)")
    p.add_argument("--prompt", action="append", help="caption (repeat for several; default: the demo prompt)")
    p.add_argument("--frames", type=int, nargs="+", default=[32, 64], help="video lengths (default 32 64)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"solver steps (default {d.steps})")
    _solver_args(p, d)
    p.add_argument("--chunk-frames", type=int, default=0, help="chunk window (default: the model's)")
    p.add_argument("--overlap", type=int, default=d.overlap)
    p.add_argument("--cfg", type=float, default=d.cfg, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--attention-limit-gb", type=float, default=d.attention_limit_gb,
                   help="full/spectral: a run needing more attention memory is recorded as refused")
    p.add_argument("--feature", default="pixels", help="consistency feature: pixels, ssim, hist, dino:PATH, clip:PATH")
    p.add_argument("--flow", choices=("farneback", "dis"), default="farneback", help="optical flow for the motion metrics")
    p.add_argument("--out", type=Path, default=Path("outputs/compare"), help="report folder (default outputs/compare)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_compare)

    p = sub.add_parser("export", help="strip a training checkpoint to its EMA weights + config")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_export)

    p = sub.add_parser("plot", help="plot the loss curves of training runs into one PNG")
    p.add_argument("runs", type=Path, nargs="+", help="run directories (holding log.jsonl)")
    p.add_argument("--out", type=Path, required=True, help="output .png")
    p.add_argument("--label", action="append", help="legend label per run (repeat, in order)")
    p.add_argument("--smooth", type=int, default=8, help="moving-average window in log records")
    p.add_argument("--mark", action="append", metavar="STEP=LABEL",
                   help="a dashed line at STEP, e.g. where the training settings changed (repeatable)")
    p.set_defaults(func=_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        return args.func(args, rest)
    except KeyboardInterrupt:
        print("vin: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FloatingPointError, OSError, DistributedError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"vin: error: {message}", file=sys.stderr)
        return 2
