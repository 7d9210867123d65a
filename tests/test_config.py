"""Tests for `vin.config`: presets, YAML files, dotted overrides, validation and JSON round trips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vin.config import (
    PRESETS,
    Config,
    ConfigError,
    SampleConfig,
    TrainConfig,
    config_from_json,
    load_config,
    parse_overrides,
    with_sample,
)

REPO = Path(__file__).resolve().parents[1]
XS_YAML = REPO / "configs" / "vin-xs.yaml"


def _leaves(tree: dict, prefix: str = ""):
    """(dotted key, value) for every leaf of a nested dict."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_valid_config(name):
    cfg = load_config(preset=name)
    assert isinstance(cfg, Config)
    leaves = list(_leaves(PRESETS[name]))
    assert leaves, "a preset that sets nothing"
    for dotted, value in leaves:
        assert _get(cfg, dotted) == value, dotted
    # fields the preset does not name keep their defaults
    assert cfg.train == TrainConfig()
    assert cfg.sample == SampleConfig()
    # and the result survives a JSON round trip
    assert config_from_json(cfg.to_json()) == cfg


def test_presets_differ_in_size():
    widths = {name: load_config(preset=name).model.dit.width for name in PRESETS}
    assert widths["VIN-XS/4"] < widths["VIN-S/4"] < widths["VIN-B/4"]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_files_load(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_unknown_preset_raises(tmp_path):
    with pytest.raises(ConfigError, match="VIN-XXL"):
        load_config(preset="VIN-XXL")
    with pytest.raises(ConfigError, match="VIN-XXL"):
        load_config(_write(tmp_path / "c.yaml", "preset: VIN-XXL\n"))


# ------------------------------------------------------------------------------ resolution order


def test_preset_then_yaml_then_overrides(tmp_path):
    path = _write(tmp_path / "c.yaml", "preset: VIN-XS/4\nname: mine\nmodel:\n  dit:\n    depth: 3\ntrain:\n  steps: 7\n  lr: 0.01\n")
    cfg = load_config(path, ["--train.steps=9", "model.vin.enabled=false"])
    xs = PRESETS["VIN-XS/4"]["model"]
    assert cfg.name == "mine"
    assert cfg.model.dit.width == xs["dit"]["width"]  # from the preset (deep merge keeps it)
    assert cfg.model.dit.heads == xs["dit"]["heads"]
    assert cfg.model.dit.depth == 3  # YAML beats the preset
    assert cfg.train.steps == 9  # override beats YAML
    assert cfg.train.lr == 0.01  # YAML, not overridden
    assert cfg.model.vin.enabled is False  # override only
    assert cfg.model.vin.width == xs["vin"]["width"]  # sibling of an overridden key keeps the preset
    assert cfg.train.batch_size == TrainConfig().batch_size  # named nowhere: default


def test_override_beats_preset_directly():
    cfg = load_config(None, ["model.dit.width=64"], preset="VIN-XS/4")
    assert cfg.model.dit.width == 64
    assert cfg.model.dit.depth == PRESETS["VIN-XS/4"]["model"]["dit"]["depth"]


def test_yaml_preset_key_names_the_base(tmp_path):
    # the file's `preset:` is the base; the preset argument only applies when the file names none
    path = _write(tmp_path / "c.yaml", "preset: VIN-XS/4\n")
    assert load_config(path, preset="VIN-B/4").model.dit.width == PRESETS["VIN-XS/4"]["model"]["dit"]["width"]
    plain = _write(tmp_path / "plain.yaml", "name: plain\n")
    assert load_config(plain, preset="VIN-B/4").model.dit.width == PRESETS["VIN-B/4"]["model"]["dit"]["width"]
    assert load_config(plain).model.dit.width == Config().model.dit.width


def test_xs_yaml_values():
    cfg = load_config(XS_YAML, ["train.steps=2", "train.batch_size=2", "train.chunks=[2]"])
    assert cfg.name == "vin-xs"
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.chunks) == (2, 2, (2,))
    assert cfg.train.log_every == 10  # from the file
    assert cfg.model.dit.width == PRESETS["VIN-XS/4"]["model"]["dit"]["width"]


def test_empty_yaml_is_defaults(tmp_path):
    assert load_config(_write(tmp_path / "e.yaml", "")) == Config()


# ----------------------------------------------------------------------------- unknown / types


@pytest.mark.parametrize("value, parsed", [("true", True), ("false", False), ("auto", "auto")])
def test_autocast_bf16_takes_true_false_or_auto(value, parsed):
    assert load_config(None, [f"train.autocast_bf16={value}"]).train.autocast_bf16 == parsed


@pytest.mark.parametrize("value", ["1", "0", "yes please", "bf16"])
def test_autocast_bf16_refuses_anything_else(value):
    with pytest.raises(ConfigError, match="train.autocast_bf16 must be true, false or auto"):
        load_config(None, [f"train.autocast_bf16={value}"])


def test_unknown_top_level_key_raises(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key trian\b"):
        load_config(_write(tmp_path / "c.yaml", "trian:\n  steps: 3\n"))
    with pytest.raises(ConfigError, match=r"unknown config key bogus\b"):
        load_config(None, ["bogus=1"])


@pytest.mark.parametrize("dotted", ["train.stpes", "model.dit.widht", "model.vin.num_globals", "sample.seeds"])
def test_unknown_nested_key_raises_naming_it(dotted, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{dotted}=3"])
    assert dotted in str(info.value)
    # the same key from a YAML file
    *parents, leaf = dotted.split(".")
    text, indent = "", ""
    for p in parents:
        text += f"{indent}{p}:\n"
        indent += "  "
    text += f"{indent}{leaf}: 3\n"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path / "c.yaml", text))
    assert dotted in str(info.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.steps=abc", "train.steps"),
        ("train.steps=2.5", "train.steps"),
        ("data.height=true", "data.height"),  # bool is not an int
        ("model.vin.enabled=1", "model.vin.enabled"),  # int is not a bool
        ("train.lr=fast", "train.lr"),
        ("name=3", "name"),
        ("train.chunks=[2, x]", "train.chunks"),
        ("model=3", "model"),  # a section given as a scalar
        ("model.dit=[1, 2]", "model.dit"),
    ],
)
def test_wrong_type_raises(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert key in str(info.value)
    assert "\n" not in str(info.value)


def test_int_is_accepted_for_float_and_scalar_for_tuple():
    cfg = load_config(None, ["train.lr=1", "train.chunks=3"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.chunks == (3,)


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("5E-4", 5e-4), ("-2e1", -20.0), ("1.5e-3", 1.5e-3), ("3e+2", 300.0)])
def test_exponent_floats_without_dot(text, value, tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; a float field still takes it, from the CLI and from files
    assert load_config(None, [f"train.lr={text}"]).train.lr == value
    assert load_config(_write(tmp_path / "c.yaml", f"train:\n  lr: {text}\n")).train.lr == value


@pytest.mark.parametrize("text", ["1e", "e3", "1e-3x", "nan", "inf", "1e-3.5"])
def test_non_numeric_strings_are_not_floats(text):
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, [f"train.lr={text}"])


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    cfg = load_config(None, ["train.chunks=[2, 5]", "model.vin.inject=cross", "sample.fusion=late",
                             "train.context_loss_weight=0.25", "name=rt"], preset=name)
    text = cfg.to_json()
    back = config_from_json(text)
    assert back == cfg
    assert back.train.chunks == (2, 5) and isinstance(back.train.chunks, tuple)
    assert json.loads(text)["train"]["chunks"] == [2, 5]
    assert back.to_json() == text


def test_json_with_unknown_key_raises():
    data = Config().to_dict()
    data["model"]["dit"]["extra"] = 1
    with pytest.raises(ConfigError, match=r"model\.dit\.extra"):
        config_from_json(json.dumps(data))


def test_configs_are_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.dit.width = 8  # type: ignore[misc]
    changed = with_sample(cfg, frames=99)
    assert changed.sample.frames == 99 and cfg.sample.frames == SampleConfig().frames
    assert changed.model == cfg.model


# ----------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["sample.fusion=blend"], ["sample.fusion", "blend"]),
        (["sample.solver=rk4"], ["sample.solver", "rk4"]),
        (["sample.eta=1.5", "sample.solver=ddim"], ["sample.eta", "1.5"]),
        (["sample.eta=0.5"], ["sample.eta", "sample.solver=ddim", "euler"]),
        (["sample.seed=-1"], ["sample.seed", "-1"]),  # numpy's SeedSequence takes [0, 2**32) words
        (["sample.steps=0"], ["sample.steps"]),
        (["sample.fusion_span=1.5"], ["fusion_span"]),
        (["train.context_frames=8"], ["context_frames", "8"]),  # == chunk_frames
        (["train.context_frames=9"], ["context_frames", "9"]),
        (["model.chunk_frames=4", "train.context_frames=4"], ["context_frames", "4"]),
        (["train.context_frames=-1"], ["context_frames"]),
        (["data.height=30"], ["data.height", "30"]),  # not divisible by the patch
        (["data.width=36"], ["data.width", "36"]),  # divisible by dit.patch_s=4, not vin.patch_s=8
        (["model.dit.width=100", "model.dit.heads=3"], ["dit.width", "dit.heads"]),
        (["model.chunk_frames=7"], ["chunk_frames", "7"]),  # not divisible by patch_t=2
        (["model.vin.inject=add"], ["vin.inject", "add"]),
        (["train.timesteps=cosine"], ["train.timesteps", "cosine"]),
        (["train.chunks=[]"], ["train.chunks"]),
        (["train.chunks=[2, 0]"], ["train.chunks"]),
        (["train.batch_size=0"], ["batch_size"]),
        (["train.threads=-1"], ["train.threads"]),
        (["data.min_sprites=3", "data.max_sprites=2"], ["min_sprites"]),
    ],
)
def test_invalid_values_raise(overrides, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_boundary_values_are_valid():
    # the largest valid context, a frame size divisible by both patches, zero context
    assert load_config(None, ["train.context_frames=7"]).train.context_frames == 7
    assert load_config(None, ["data.height=40", "data.width=16"]).data.height == 40
    assert load_config(None, ["train.context_frames=0"]).train.context_frames == 0


# ------------------------------------------------------------------------------------ overrides


def test_parse_overrides_builds_nested_tree():
    tree = parse_overrides(["--train.steps=5", "model.vin.enabled=false", "train.chunks=[2,3]",
                            "name=", "model.dit.width=64", "train.lr=1e-3"])
    assert tree == {
        "train": {"steps": 5, "chunks": [2, 3], "lr": "1e-3"},  # YAML 1.1; the float field converts it
        "model": {"vin": {"enabled": False}, "dit": {"width": 64}},
        "name": "",
    }
    assert parse_overrides([]) == {}


@pytest.mark.parametrize("item", ["train.steps", "--train.steps", "=3", "--=3", "", "steps 3"])
def test_parse_overrides_malformed_raises(item):
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert "section.key=value" in str(info.value)


def test_later_override_wins():
    assert load_config(None, ["train.steps=3", "train.steps=4"]).train.steps == 4


# ------------------------------------------------------------------------------------ files


def test_missing_file_raises(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)  # a directory is not a config file


def test_invalid_yaml_raises_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path / "c.yaml", "train: [unclosed\n  steps: 3\n"))
    assert "not valid YAML" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_base_config_takes_the_presets_place():
    """`base` (a checkpoint's config) round-trips unchanged, overrides change it, and a preset or a
    YAML that names one wins over it."""
    base = load_config(None, ["model.dit.depth=1", "train.lr=0.003"], preset="VIN-XS/4")
    assert load_config(None, [], base=base) == base
    changed = load_config(None, ["train.steps=7"], base=base)
    assert changed.train.steps == 7 and changed.model == base.model and changed.train.lr == 0.003
    assert load_config(None, [], preset="VIN-XS/4", base=base) == load_config(None, [], preset="VIN-XS/4")
