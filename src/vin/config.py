"""Typed, frozen configuration: named presets, YAML files and `--section.key=value` overrides.

Every run (training or generation) resolves to one `Config`, saved as JSON next to its checkpoints
and outputs so any result can be reproduced. Unknown keys raise, and so do values of the wrong type.
The open questions of the paper (PAPER.md) are answered by fields documented here; where an
ablation would want the other answer, the field is a switch.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the value."""


@dataclass(frozen=True)
class DataConfig:
    """The procedural sprite world (see `vin.data.synthetic`)."""

    height: int = 32
    width: int = 32
    fps: int = 8
    min_sprites: int = 1
    max_sprites: int = 2
    min_speed: float = 0.4  # pixels per frame, at 32x32 (scaled with the frame size)
    max_speed: float = 1.2
    caption_keep_prob: float = 0.5  # chance that each optional attribute is named in the caption

    def __post_init__(self) -> None:
        _check(self.height > 0 and self.width > 0, f"data frame size must be positive, got {self.height}x{self.width}")
        _check(1 <= self.min_sprites <= self.max_sprites, f"need 1 <= data.min_sprites <= data.max_sprites, got {self.min_sprites}, {self.max_sprites}")


@dataclass(frozen=True)
class DiTConfig:
    """The chunk DiT: a video DiT that only ever sees `ModelConfig.chunk_frames` frames at a time."""

    width: int = 192
    depth: int = 6
    heads: int = 6
    mlp_ratio: float = 4.0
    patch_t: int = 2  # temporal patch (frames per token)
    patch_s: int = 4  # spatial patch (pixels per token side)
    qk_norm: bool = True
    # Pixel refiner (`vin.models.refine`): 3x3 convolutions of this many channels at full resolution
    # after the patch decoder, reading `refine_features` channels per pixel decoded from the DiT's
    # last hidden state; 0 = none. Zero-initialised, so it can be added to a trained checkpoint.
    refine_width: int = 0
    refine_features: int = 8

    def __post_init__(self) -> None:
        _check(self.width % self.heads == 0, f"dit.width ({self.width}) must be divisible by dit.heads ({self.heads})")
        _check(self.patch_t >= 1 and self.patch_s >= 1, "dit patch sizes must be >= 1")
        _check(self.refine_width >= 0 and self.refine_features >= 0,
               f"dit.refine_width and dit.refine_features must be >= 0, got {self.refine_width}, {self.refine_features}")
        if not self.refine_width:  # no refiner: its feature count builds nothing, so it never tells configs apart
            object.__setattr__(self, "refine_features", DiTConfig.refine_features)


@dataclass(frozen=True)
class VINConfig:
    """The Video Interface Network: global tokens that read the whole noisy video every step.

    - `enabled=False` is the paper's "without global tokens" ablation: the same DiT, no interface.
    - `inject` (open question 1): "concat" appends the projected global tokens to every chunk's
      self-attention sequence, the paper's eps([X_t^i, Z_t], t); the chunk tokens see them through
      a per-block, per-head log-weight on the global keys that starts at `gate_init` (-16: nearly
      shut, so the untrained model is the plain chunk DiT to float rounding; 0 is plain joint
      attention).
      "cross" instead adds a zero-initialised cross-attention from chunk tokens to global tokens.
    - `keyframe_stride`: the read's keys/values are the noisy frames 0, s, 2s, ... of the whole video
      (the paper reads one latent keyframe per second, about every 5th latent frame).
    - `time_pos` (open question 2): keyframes carry their absolute frame index ("absolute") or
      their position as a fraction of the video ("relative").
    """

    enabled: bool = True
    num_global: int = 32
    width: int = 128
    heads: int = 4
    processor_depth: int = 2
    keyframe_stride: int = 4
    patch_s: int = 8
    inject: str = "concat"
    gate_init: float = -16.0
    time_pos: str = "absolute"

    def __post_init__(self) -> None:
        _check(self.inject in ("concat", "cross"), f"vin.inject must be 'concat' or 'cross', got {self.inject!r}")
        _check(self.time_pos in ("absolute", "relative"), f"vin.time_pos must be 'absolute' or 'relative', got {self.time_pos!r}")
        _check(-30.0 <= self.gate_init <= 10.0, f"vin.gate_init must be a log-weight in [-30, 10], got {self.gate_init}")
        _check(self.width % self.heads == 0, f"vin.width ({self.width}) must be divisible by vin.heads ({self.heads})")
        _check(self.num_global >= 1 and self.keyframe_stride >= 1, "vin.num_global and vin.keyframe_stride must be >= 1")


@dataclass(frozen=True)
class TextConfig:
    """A small caption encoder trained end to end (no downloaded text model).

    Words are hashed into `vocab_size` buckets, so any caption is accepted.
    """

    vocab_size: int = 1024
    max_tokens: int = 24
    width: int = 128
    depth: int = 1
    heads: int = 4


@dataclass(frozen=True)
class ModelConfig:
    """The whole model. `prediction` is what the DiT's output means:

    - "data" (default): the DiT predicts the clean chunk x0 and `VINModel.denoise_chunks` returns the
      velocity (x_t - x0_hat) / max(t, prediction_t_min). In pixel space the patch (3*2*4*4 = 96
      values) is nearly as wide as the DiT (128 at VIN-S): predicting velocity means carrying the
      full-dimensional noise through the network, which a small DiT cannot do, and samples come
      out as patch-sized blocks of noise colours (measured: docs/RESULTS.md). Clean data lies on a
      low-dimensional manifold and is easy to output (Li & He 2025, "Back to Basics: Let Denoising
      Generative Models Denoise", JiT). The loss stays on velocity.
    - "velocity": the DiT's output is the velocity itself (SD3 / flux style, for latent spaces).
    """

    channels: int = 3
    chunk_frames: int = 8  # the DiT's native window; positions are chunk-local
    dit: DiTConfig = field(default_factory=DiTConfig)
    vin: VINConfig = field(default_factory=VINConfig)
    text: TextConfig = field(default_factory=TextConfig)
    prediction: str = "data"
    prediction_t_min: float = 0.05

    def __post_init__(self) -> None:
        _check(self.prediction in ("data", "velocity"), f"model.prediction must be data or velocity, got {self.prediction!r}")
        _check(0.0 < self.prediction_t_min <= 1.0, f"model.prediction_t_min must be in (0, 1], got {self.prediction_t_min}")
        _check(self.chunk_frames % self.dit.patch_t == 0,
               f"model.chunk_frames ({self.chunk_frames}) must be divisible by dit.patch_t ({self.dit.patch_t})")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 200
    # Learning-rate decay after the warm-up: constant | linear | cosine, down to lr * lr_min_ratio at
    # train.steps, over the last `decay_steps` steps (0: all steps after the warm-up); both must stay 0
    # with constant. A short linear decay at the end is the warmup-stable-decay (WSD) schedule. Resuming
    # with a larger train.steps moves the decay to the new end; a run resumed from a checkpoint
    # already in its decay warms up again (train.warmup_steps) instead of jumping back to lr.
    lr_decay: str = "constant"
    decay_steps: int = 0
    lr_min_ratio: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    chunks: tuple[int, ...] = (2, 3, 4)  # videos of these many chunks (mixed lengths, as the paper), one drawn
    # uniformly per batch: repeat a count to weight it, e.g. (1, 1, 1, 2, 3, 4) for half one-chunk batches
    context_frames: int = 2  # frames each chunk shares with the previous one (the paper: 8 latent)
    # Loss weight on a chunk's context frames. The paper keeps the context under stop-gradient; we
    # still supervise the later chunk's prediction of them (weight 1) because sampling cross-fades
    # both chunks' predictions there. 0 is the literal reading.
    context_loss_weight: float = 1.0
    caption_dropout: float = 0.1
    timesteps: str = "logit_normal"  # logit_normal | uniform
    logit_mean: float = 0.0
    logit_std: float = 1.0
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    # bf16 autocast: true | false | "auto" (on where it is fast: a GPU with native bf16, Ampere and
    # later, or a CPU with oneDNN bf16 kernels, i.e. AVX-512 and up; off elsewhere, e.g. on AVX2-only
    # CPUs, where it is ~56x slower than float32 — docs/RESULTS.md). `vin train` says at the start
    # what "auto" chose, and the run's config.json and checkpoints record it as true or false.
    autocast_bf16: bool | str = False
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    # Processes that render the training batches, and draw each step's noise, ahead of the loop
    # (vin.data.prefetch): the same batches and noise in the same order, so the run does not depend
    # on it. Use 4-8 on a GPU, where doing it in the loop would starve it; 0 (in the loop) on a small CPU.
    data_workers: int = 0
    # torch.compile every transformer block (regional compilation: one compiled block serves all,
    # parameter names and checkpoints unchanged). Costs about a minute and a half of compiling
    # at the start (a C++ compiler on CPU), then 1.05x faster float32 steps on one thread of an AVX2 CPU (docs/RESULTS.md, "Compute").
    compile: bool = False
    # Warm start (a new run, not --resume): model and EMA from this checkpoint or exported weights
    # file (its EMA copy), fresh optimizer with a new warm-up, the step count and the data stream
    # continuing from the file's step. How the shipped checkpoint is trained further in a fresh clone.
    init_from: str = ""
    # Learning rate of the global-token gates (log-weights, `dit.gate_logits`) as a multiple of lr:
    # at lr alone Adam moves them <= lr per step and they stay shut for thousands of steps.
    gate_lr_mult: float = 100.0

    def __post_init__(self) -> None:
        _check(self.timesteps in ("logit_normal", "uniform"), f"train.timesteps must be logit_normal or uniform, got {self.timesteps!r}")
        _check(len(self.chunks) > 0 and min(self.chunks) >= 1, f"train.chunks must be positive counts, got {self.chunks}")
        _check(self.batch_size >= 1 and self.steps >= 0, "train.batch_size must be >= 1 and train.steps >= 0")
        _check(self.threads >= 0, f"train.threads must be >= 0 (0: torch's default), got {self.threads}")
        _check(self.data_workers >= 0, f"train.data_workers must be >= 0 (0: render in the training loop), got {self.data_workers}")
        _check(self.lr_decay in ("constant", "linear", "cosine"), f"train.lr_decay must be constant, linear or cosine, got {self.lr_decay!r}")
        _check(self.decay_steps >= 0 and 0.0 <= self.lr_min_ratio <= 1.0, "train.decay_steps must be >= 0 and train.lr_min_ratio in [0, 1]")
        _check(isinstance(self.autocast_bf16, bool) or self.autocast_bf16 == "auto",
               f"train.autocast_bf16 must be true, false or auto, got {self.autocast_bf16!r}")
        _check(self.gate_lr_mult > 0, f"train.gate_lr_mult must be > 0, got {self.gate_lr_mult}")


FUSION_MODES = ("early", "mid", "late", "always", "none")
SOLVERS = ("euler", "heun", "ddim")  # vin.diffusion.flow.sample_ode
# Long-video strategies (`vin.sampling.strategies.STRATEGIES` maps each name to its sampler).
STRATEGIES = ("vin", "full", "independent", "autoregressive", "freenoise", "spectral")


@dataclass(frozen=True)
class SampleConfig:
    frames: int = 64
    chunk_frames: int = 0  # 0: the model's native chunk_frames
    overlap: int = 4  # frames shared by neighbouring chunks at inference (may exceed training context)
    steps: int = 25
    solver: str = "euler"  # euler | heun | ddim
    # ddim only: 0 is deterministic (= euler), 1 samples the DDPM posterior at every step (ancestral,
    # a stochastic sampler); fresh noise per frame and step, so still layout- and process-independent.
    eta: float = 0.0
    shift: float = 1.0  # timestep shift (SD3): >1 spends more steps at high noise
    cfg: float = 1.0  # classifier-free guidance scale; 1 = off
    # Open question 5: "recompute" reads the global tokens again with the empty caption for the
    # unconditional pass (what training with caption dropout saw); "shared" reuses the conditional ones.
    cfg_global: str = "recompute"
    # Overlap fusion (open question 4): cross-fade both chunks' predictions while t lies in the
    # window; outside it, each overlap frame is taken from the earlier chunk (the later one uses it
    # as context). early = the first `fusion_span` of the trajectory (the paper: t > t_a = 20/50).
    fusion: str = "early"
    fusion_span: float = 0.6
    seed: int = 0
    # Which long-video strategy samples (README, "Long-video strategies"); all run the same weights.
    strategy: str = "vin"
    # Global tokens handed to the DiT by every strategy but `independent`: "read" (the interface
    # reads what the strategy's DiT call sees), "none" (the DiT gets none: the paper's "without
    # global tokens" at inference, and the training-free baselines on the bare chunk DiT), "zeros"
    # (all-zero interface output: the token slots are kept, their content removed).
    global_tokens: str = "read"
    keyframe_stride: int = 0  # the read's keyframe stride; 0: the model's (model.vin.keyframe_stride)
    # full / spectral run the DiT over more latent frames than a chunk: "interpolate" squeezes the
    # positions of the whole video into the trained range [0, F/patch_t - 1]; "extrapolate" keeps
    # integer positions 0..N/patch_t - 1 (beyond what the DiT saw).
    positions: str = "interpolate"
    attention_limit_gb: float = 8.0  # full / spectral: refuse when one attention map would exceed this
    freenoise_weights: str = "pyramid"  # FreeNoise overlap averaging: flat | pyramid
    # spectral: temporal frequencies up to this fraction of Nyquist come from the global attention
    # stream, the rest from the windowed one (1.0: all global, i.e. `full`; 0.0: all local).
    spectral_cutoff: float = 0.25

    def __post_init__(self) -> None:
        _check(self.solver in SOLVERS, f"sample.solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        _check(0.0 <= self.eta <= 1.0, f"sample.eta must be in [0, 1], got {self.eta}")
        _check(self.eta == 0.0 or self.solver == "ddim", f"sample.eta={self.eta} needs sample.solver=ddim, not {self.solver}")
        _check(self.fusion in FUSION_MODES, f"sample.fusion must be one of {', '.join(FUSION_MODES)}, got {self.fusion!r}")
        _check(self.cfg_global in ("recompute", "shared"), f"sample.cfg_global must be recompute or shared, got {self.cfg_global!r}")
        _check(self.steps >= 1, f"sample.steps must be >= 1, got {self.steps}")
        _check(0 <= self.seed < 2**32, f"sample.seed must be in [0, 2**32), got {self.seed}")
        _check(0.0 <= self.fusion_span <= 1.0, f"sample.fusion_span must be in [0, 1], got {self.fusion_span}")
        _check(self.shift > 0, f"sample.shift must be > 0, got {self.shift}")
        _check(self.strategy in STRATEGIES, f"sample.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        _check(self.global_tokens in ("read", "none", "zeros"), f"sample.global_tokens must be read, none or zeros, got {self.global_tokens!r}")
        _check(self.keyframe_stride >= 0, f"sample.keyframe_stride must be >= 0 (0: the model's), got {self.keyframe_stride}")
        _check(self.positions in ("interpolate", "extrapolate"), f"sample.positions must be interpolate or extrapolate, got {self.positions!r}")
        _check(self.attention_limit_gb > 0, f"sample.attention_limit_gb must be > 0, got {self.attention_limit_gb}")
        _check(self.freenoise_weights in ("flat", "pyramid"), f"sample.freenoise_weights must be flat or pyramid, got {self.freenoise_weights!r}")
        _check(0.0 <= self.spectral_cutoff <= 1.0, f"sample.spectral_cutoff must be in [0, 1], got {self.spectral_cutoff}")


@dataclass(frozen=True)
class Config:
    name: str = "vin"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        m, d = self.model, self.data
        for side, size in (("height", d.height), ("width", d.width)):
            _check(size % m.dit.patch_s == 0 and size % m.vin.patch_s == 0,
                   f"data.{side} ({size}) must be divisible by dit.patch_s ({m.dit.patch_s}) and vin.patch_s ({m.vin.patch_s})")
        _check(0 <= self.train.context_frames < m.chunk_frames,
               f"train.context_frames ({self.train.context_frames}) must be in [0, model.chunk_frames={m.chunk_frames})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# ---------------------------------------------------------------------------------------------
# Named sizes (DiT's S/B idea). "/4" is the spatial patch of the DiT. XS is for tests and smoke
# runs; S is the CPU-trainable size of the shipped checkpoint; M and B are for a GPU.
PRESETS: dict[str, dict[str, Any]] = {
    "VIN-XS/4": {"model": {"dit": {"width": 32, "depth": 2, "heads": 2},
                           "vin": {"num_global": 8, "width": 32, "heads": 2, "processor_depth": 1},
                           "text": {"width": 32, "heads": 2, "vocab_size": 256}}},
    "VIN-S/4": {"model": {"dit": {"width": 128, "depth": 6, "heads": 4},
                          "vin": {"num_global": 32, "width": 96, "heads": 4, "processor_depth": 2},
                          "text": {"width": 96, "heads": 4}}},
    "VIN-M/4": {"model": {"dit": {"width": 192, "depth": 6, "heads": 6},
                          "vin": {"num_global": 32, "width": 128, "heads": 4, "processor_depth": 2}}},
    "VIN-B/4": {"model": {"dit": {"width": 384, "depth": 12, "heads": 6},
                          "vin": {"num_global": 64, "width": 256, "heads": 4, "processor_depth": 4},
                          "text": {"width": 256}}},
}


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key {where + '.' if where else ''}{unknown[0]} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if is_dataclass(tp):
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        (elem, _) = typing.get_args(tp)
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(elem, v, where) for v in items)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {tp.__name__}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["train.steps=100", "model.vin.enabled=false"]` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.lstrip("-").partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw) if raw != "" else ""
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                preset: str | None = None, base: Config | None = None) -> Config:
    """Resolve a config: preset (named, or the YAML's `preset:` key) <- YAML file <- overrides.
    `base` (e.g. the config a checkpoint was trained with) takes the preset's place when neither
    the file nor `preset` names one."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
    preset = tree.pop("preset", None) or preset
    start: dict[str, Any] = base.to_dict() if base is not None and preset is None else {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        start = PRESETS[preset]
    cfg = from_dict(Config, _merge(_merge(start, tree), parse_overrides(overrides or [])))
    t = cfg.train
    unused = [f"train.{k}={getattr(t, k)}" for k in ("decay_steps", "lr_min_ratio") if getattr(t, k)]
    _check(t.lr_decay != "constant" or not unused,
           f"{' and '.join(unused)} {'has' if len(unused) == 1 else 'have'} no effect with train.lr_decay=constant: set "
           f"train.lr_decay=linear or cosine, or {' and '.join(u.split('=')[0] + '=0' for u in unused)}")
    return cfg


def config_from_json(text: str) -> Config:
    """A config saved by vin (checkpoint metadata, a run's config.json). Versions before the check in
    `load_config` could save decay settings with a constant schedule, where they had no effect:
    they are read as 0."""
    tree = json.loads(text)
    train = tree.get("train") if isinstance(tree, dict) else None
    if isinstance(train, dict) and train.get("lr_decay", "constant") == "constant":
        train.update(decay_steps=0, lr_min_ratio=0.0)
    return from_dict(Config, tree)


def with_sample(cfg: Config, **changes: Any) -> Config:
    return replace(cfg, sample=replace(cfg.sample, **changes))
