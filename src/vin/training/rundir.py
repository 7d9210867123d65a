"""A training run's directory: its checkpoints, the checks before a run starts or resumes there,
its log on a resume, and a fork (`resume_from`): a new directory that goes on where another run's
checkpoint left off, with that run's log up to the checkpoint and `forked_from.json` naming it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from vin.checkpoint import CheckpointError, checkpoint_config, read_metadata
from vin.config import Config
from vin.fileio import atomic_write_text


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step-*.safetensors"))


def check_run_dir(cfg: Config, run_dir: str | Path, resume: bool, resume_from: str | Path | None = None) -> list[Path]:
    """The checkpoints `train` resumes from (the run directory's; `[resume_from]` for a fork),
    after checking that it may start there: no checkpoints in `run_dir` unless resuming, and when
    resuming, a checkpoint of the same model config. `resume_from` (a training checkpoint with its
    optimizer state) starts a new run directory where the run that wrote it would have gone on."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir} is a file, not a run directory")
    existing = checkpoints(run_dir)
    if resume_from is not None:
        source = Path(resume_from)
        if resume:
            raise CheckpointError("--resume continues --out's newest checkpoint, --resume-from another one: pass one of them")
        if existing:
            if fork_source(run_dir) == source.resolve():
                raise CheckpointError(f"{run_dir} is already a fork of {source}: continue it with --resume in place "
                                      "of --resume-from")
            raise CheckpointError(f"{run_dir} already holds checkpoints; --resume-from starts a new run: "
                                  "choose another --out (nothing is deleted)")
        if (run_dir / "log.jsonl").exists() and not (run_dir / "forked_from.json").is_file():
            raise CheckpointError(f"{run_dir / 'log.jsonl'} exists (a run that wrote no checkpoint?); --resume-from "
                                  "writes the source run's log there: move it away or choose another --out")
        # a fork that stopped before its first checkpoint (forked_from.json, no checkpoint) is started again
        if source.is_dir():
            newest = checkpoints(source) or checkpoints(source.parent)
            hint = f" (its newest checkpoint: {newest[-1]})" if newest else ""
            raise CheckpointError(f"--resume-from takes a checkpoint file, not the folder {source}{hint}")
        if not source.is_file():
            raise CheckpointError(f"--resume-from: no checkpoint at {source}")
        meta = read_metadata(source)
        if "optim_groups" not in meta:
            raise CheckpointError(f"--resume-from: {source} holds no optimizer state (an exported checkpoint); "
                                  "start from its weights with --train.init_from instead")
        if int(meta.get("step", 0)) >= cfg.train.steps:
            raise CheckpointError(f"--resume-from: {source} is at step {meta.get('step')}; set --train.steps past it "
                                  f"(now {cfg.train.steps})")
        existing = [source]
    elif resume and not existing:
        hint = (" (a fork that stopped before its first checkpoint: start it again with --resume-from)"
                if (run_dir / "forked_from.json").is_file() else "")
        raise CheckpointError(f"nothing to resume: no checkpoints in {run_dir / 'checkpoints'}{hint}")
    elif not resume and existing:
        raise CheckpointError(f"{run_dir} already holds checkpoints; pass --resume or choose another --out")
    if resume or resume_from is not None:
        old = checkpoint_config(existing[-1])
        if old.model != cfg.model:
            raise CheckpointError(f"{existing[-1]} was trained with a different model config: {first_diff(old.model, cfg.model)}")
    return existing


def log_lines(path: Path) -> list[tuple[str, dict]]:
    """The records of a log.jsonl with their lines (each ending in a newline); a half-written line
    (a process killed while writing, a full disk) or anything but a JSON object is left out."""
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append((line + "\n", record))
    return out


def truncate_log(path: Path, step: int) -> int:
    """Drop the log records of steps after `step` (trained after the checkpoint a run resumes from,
    e.g. before a crash, or by a run that stopped before its first checkpoint and starts again), so
    those steps are not logged twice; half-written lines go too. Returns how many records were dropped."""
    if not path.is_file():
        return 0
    text = path.read_text()
    lines = log_lines(path)
    keep = "".join(line for line, record in lines if record.get("step", 0) <= step)
    if keep != text:
        atomic_write_text(path, keep)
    return sum(1 for _, record in lines if record.get("step", 0) > step)


# train settings a fork is expected to change (the cool-down's, and how the run is looked after);
# any other difference from the source run is named, since the run no longer goes on as it would have
FORK_MAY_CHANGE = {"steps", "decay_steps", "lr_decay", "lr_min_ratio", "ckpt_every", "log_every",
                    "keep_checkpoints", "threads", "data_workers", "compile", "init_from",
                    "autocast_bf16"}  # (a changed precision has its own note)


def note_fork(source: Path, cfg: Config) -> None:
    """Say where a --resume-from run differs from the run that wrote `source` beyond its schedule's
    end, and where its decay begins before the checkpoint's step (the rate then drops at once)."""
    old = checkpoint_config(source)
    changed = [f"train.{k}" for k in vars(cfg.train) if k not in FORK_MAY_CHANGE
               and getattr(cfg.train, k) != getattr(old.train, k)]
    changed += [f"data.{k}" for k in vars(cfg.data) if getattr(cfg.data, k) != getattr(old.data, k)]
    if changed:
        print(f"vin: note: {source.name} was trained with other {', '.join(changed)}: from here the run differs "
              "from the one that wrote it", file=sys.stderr)
    meta, tc = read_metadata(source), cfg.train
    step = int(meta.get("step", 0))
    begin = int(meta.get("start_step", 0)) + tc.warmup_steps  # as vin.training.trainer.learning_rate
    if tc.decay_steps:
        begin = max(begin, tc.steps - tc.decay_steps)
    if tc.lr_decay != "constant" and begin < step:
        print(f"vin: note: the decay begins at step {begin}, before {source.name}'s step {step}: the rate drops "
              "at once (set train.decay_steps to the steps after it for a cool-down from the full rate)", file=sys.stderr)


def _copy_log(checkpoint: Path, dest: Path, step: int) -> None:
    """Write `dest` with the log records up to `step` of the run `checkpoint` belongs to
    (`<run>/checkpoints/step-N.safetensors` -> `<run>/log.jsonl`; the path as given, else with its
    links followed), or an empty log when there is none; records past `step` are left out (the
    source run may be writing one)."""
    for path in (Path(os.path.abspath(checkpoint)), checkpoint.resolve()):
        source = path.parent.parent / "log.jsonl"
        if path.parent.name == "checkpoints" and source.is_file():
            atomic_write_text(dest, "".join(line for line, record in log_lines(source) if record.get("step", 0) <= step))
            return
    print(f"vin: note: {checkpoint} is not in a run directory with a log.jsonl; this run's log starts at "
          f"step {step + 1}", file=sys.stderr)
    atomic_write_text(dest, "")


def fork_source(run_dir: Path) -> Path | None:
    """The checkpoint a run directory was forked from (its forked_from.json), links followed; None
    for a run that is not a fork."""
    try:
        return Path(json.loads((run_dir / "forked_from.json").read_text())["checkpoint"]).resolve()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def first_diff(a, b, where: str = "model") -> str:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            if hasattr(x, "__dataclass_fields__"):
                return first_diff(x, y, f"{where}.{name}")
            return f"{where}.{name} {x!r} != {y!r}"
    return "(no difference)"


def start_fork(source: Path, run_dir: Path, step: int) -> None:
    """Give a forked run directory the source run's log up to `step` and `forked_from.json`
    (provenance: the log's first records are the source run's)."""
    _copy_log(source, run_dir / "log.jsonl", step)
    atomic_write_text(run_dir / "forked_from.json",
                      json.dumps({"checkpoint": str(source.resolve()), "step": step}, indent=2) + "\n")
