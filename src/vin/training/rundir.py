"""A training run's directory: its checkpoints, the checks before a run starts or resumes there,
its log on a resume, and a fork (`resume_from`): a new directory that goes on where another run's
checkpoint left off, with that run's log up to the checkpoint and `forked_from.json` naming it."""

from __future__ import annotations

import json
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
            raise CheckpointError(f"{run_dir} already holds checkpoints; --resume-from starts a new run: "
                                  "choose another --out (nothing is deleted)")
        if (run_dir / "log.jsonl").exists():
            raise CheckpointError(f"{run_dir / 'log.jsonl'} exists (a run that wrote no checkpoint?); --resume-from "
                                  "writes the source run's log there: move it away or choose another --out")
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
        raise CheckpointError(f"nothing to resume: no checkpoints in {run_dir / 'checkpoints'}")
    elif not resume and existing:
        raise CheckpointError(f"{run_dir} already holds checkpoints; pass --resume or choose another --out")
    if resume or resume_from is not None:
        old = checkpoint_config(existing[-1])
        if old.model != cfg.model:
            raise CheckpointError(f"{existing[-1]} was trained with a different model config: {first_diff(old.model, cfg.model)}")
    return existing


def truncate_log(path: Path, step: int) -> None:
    """Drop the log records of steps after `step` (trained after the checkpoint a run resumes from,
    e.g. before a crash), so the resumed run does not log those steps twice."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [line for line in lines if not line.strip() or json.loads(line).get("step", 0) <= step]
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(keep))


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
    step, tc = int(read_metadata(source).get("step", 0)), cfg.train
    if tc.lr_decay != "constant" and (tc.decay_steps == 0 or tc.steps - tc.decay_steps < step):
        begin = tc.steps - tc.decay_steps if tc.decay_steps else "the run's start"
        print(f"vin: note: the decay begins at step {begin}, before {source.name}'s step {step}: the rate drops "
              "at once (set train.decay_steps to the steps after it for a cool-down from the full rate)", file=sys.stderr)


def _copy_log(checkpoint: Path, dest: Path, step: int) -> None:
    """Write `dest` with the log records up to `step` of the run `checkpoint` belongs to
    (`<run>/checkpoints/step-N.safetensors` -> `<run>/log.jsonl`), when there is one; records past
    `step` are left out unread (the source run may be writing one)."""
    checkpoint = checkpoint.resolve()
    source = checkpoint.parent.parent / "log.jsonl"
    if checkpoint.parent.name != "checkpoints" or not source.is_file():
        print(f"vin: note: {checkpoint} is not in a run directory with a log.jsonl; this run's log starts at "
              f"step {step + 1}", file=sys.stderr)
        return
    keep = []
    for line in source.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a half-written last line
        if record.get("step", 0) <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(dest, "".join(keep))


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
