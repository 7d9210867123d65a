"""Tests for `vin.checkpoint`: safetensors round trips, EMA vs model weights, optimizer state,
errors on missing / corrupt / foreign files, and exported weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vin.checkpoint import (
    FORMAT,
    CheckpointError,
    checkpoint_config,
    export_weights,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from vin.config import SampleConfig, load_config
from vin.data.synthetic import make_batch
from vin.data.video_io import read_video
from vin.generate import generate, load_model
from vin.training.objective import training_loss
from vin.training.trainer import build_model, training_lengths

REPO = Path(__file__).resolve().parents[1]
XS_YAML = REPO / "configs" / "vin-xs.yaml"
# VIN-XS/4 on 16x16 frames with 4-frame chunks: a step takes milliseconds
TINY = ["data.height=16", "data.width=16", "model.chunk_frames=4", "train.context_frames=2",
        "train.chunks=[2]", "train.batch_size=2", "train.caption_dropout=0"]



def tiny_cfg(*extra: str):
    return load_config(XS_YAML, TINY + list(extra))


def _batch(cfg, index=0):
    video, captions, _ = make_batch(cfg.train.seed, index, cfg.train.batch_size, training_lengths(cfg)[0], cfg.data)
    return video, captions


def _step(model, opt, cfg, index, seed):
    video, captions = _batch(cfg, index)
    loss, _ = training_loss(model, video, captions, cfg.train, torch.Generator().manual_seed(seed))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _trained(cfg, steps=2):
    """A model after a few AdamW steps, an EMA copy that differs from it, and the optimizer."""
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    for i in range(steps):
        _step(model, opt, cfg, i, seed=i)
    ema = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.5)
    return model, ema, opt


def _assert_state_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _assert_one_line(err: pytest.ExceptionInfo):
    msg = str(err.value)
    assert msg and "\n" not in msg


# ----------------------------------------------------------------------------------- round trip


def test_round_trip_model_ema_optimizer(tmp_path):
    cfg = tiny_cfg()
    model, ema, opt = _trained(cfg)
    path = save_checkpoint(tmp_path / "ck.safetensors", cfg, model, ema, opt, step=7)
    assert path.is_file()

    other = tiny_cfg("train.seed=123")  # same model config, different initialisation
    model2 = build_model(other)
    ema2 = copy.deepcopy(model2).requires_grad_(False)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0, betas=(0.5, 0.5), weight_decay=0.0)
    assert not torch.equal(next(model2.parameters()), next(model.parameters()))
    assert load_checkpoint(path, model2, ema2, opt2) == 7

    _assert_state_equal(model.state_dict(), model2.state_dict())
    _assert_state_equal(ema.state_dict(), ema2.state_dict())
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["state"].keys() == s2["state"].keys() and len(s1["state"]) == len(list(model.parameters()))
    for idx in s1["state"]:
        _assert_state_equal(s1["state"][idx], s2["state"][idx])
    for g1, g2 in zip(s1["param_groups"], s2["param_groups"]):
        for key in ("lr", "betas", "weight_decay", "eps", "params"):
            assert tuple(g1[key]) == tuple(g2[key]) if key in ("betas", "params") else g1[key] == g2[key]

    # the next optimizer step is identical
    l1 = _step(model, opt, cfg, 5, seed=5)
    l2 = _step(model2, opt2, cfg, 5, seed=5)
    assert torch.equal(l1, l2)
    _assert_state_equal(model.state_dict(), model2.state_dict())


def test_saved_config_and_metadata(tmp_path):
    cfg = tiny_cfg("name=meta-test")
    model = build_model(cfg)
    path = save_checkpoint(tmp_path / "sub" / "ck.safetensors", cfg, model, step=3)
    meta = read_metadata(path)
    assert meta["format"] == FORMAT and meta["step"] == "3"
    assert checkpoint_config(path) == cfg
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.safetensors"]  # no temp file left


def test_overwrite_is_atomic_on_failure(tmp_path, monkeypatch):
    import vin.checkpoint as ck

    cfg = tiny_cfg()
    model = build_model(cfg)
    path = save_checkpoint(tmp_path / "ck.safetensors", cfg, model, step=1)
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, cfg, model, step=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]


@pytest.mark.parametrize("weights", ["model", "ema"])
def test_load_ema_or_model(tmp_path, weights):
    cfg = tiny_cfg()
    model, ema, opt = _trained(cfg, steps=1)
    path = save_checkpoint(tmp_path / "ck.safetensors", cfg, model, ema, opt, step=1)
    target = build_model(tiny_cfg("train.seed=5"))
    load_checkpoint(path, target, weights=weights)
    expected = (ema if weights == "ema" else model).state_dict()
    _assert_state_equal(expected, target.state_dict())
    unexpected = (model if weights == "ema" else ema).state_dict()
    assert not all(torch.equal(unexpected[k], v) for k, v in target.state_dict().items())


def test_ema_falls_back_to_model_without_ema(tmp_path):
    cfg = tiny_cfg()
    model = build_model(cfg)
    path = save_checkpoint(tmp_path / "ck.safetensors", cfg, model, step=0)
    target = build_model(tiny_cfg("train.seed=9"))
    ema_target = build_model(tiny_cfg("train.seed=10"))
    load_checkpoint(path, target, ema_target, weights="ema")
    _assert_state_equal(model.state_dict(), target.state_dict())
    _assert_state_equal(model.state_dict(), ema_target.state_dict())


def test_load_optimizer_from_file_without_one_raises(tmp_path):
    cfg = tiny_cfg()
    model = build_model(cfg)
    path = save_checkpoint(tmp_path / "ck.safetensors", cfg, model, step=0)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match="optimizer") as err:
        load_checkpoint(path, build_model(cfg), optimizer=opt)
    _assert_one_line(err)


# -------------------------------------------------------------------------------- bad files


@pytest.fixture
def saved(tmp_path):
    cfg = tiny_cfg()
    model, ema, opt = _trained(cfg, steps=1)
    return cfg, save_checkpoint(tmp_path / "good.safetensors", cfg, model, ema, opt, step=1)


def _all_readers(path, cfg):
    """Every public way to open a checkpoint; each must raise CheckpointError."""
    model = build_model(cfg)
    return [
        lambda: read_metadata(path),
        lambda: checkpoint_config(path),
        lambda: load_checkpoint(path, model),
        lambda: load_model(path),
        lambda: export_weights(path, path.with_name("exported.safetensors")),
    ]


def test_missing_file(tmp_path, saved):
    cfg, _ = saved
    missing = tmp_path / "nope.safetensors"
    for read in _all_readers(missing, cfg):
        with pytest.raises(CheckpointError, match="not found") as err:
            read()
        _assert_one_line(err)
        assert "nope.safetensors" in str(err.value)
    with pytest.raises(CheckpointError):
        read_metadata(tmp_path)  # a directory is not a checkpoint
    assert not (tmp_path / "exported.safetensors").exists()


@pytest.mark.parametrize("kind", ["random", "empty", "truncated_half", "truncated_header", "json_junk"])
def test_corrupt_file(tmp_path, saved, kind):
    cfg, good = saved
    data = good.read_bytes()
    gen = torch.Generator().manual_seed(0)
    content = {
        "random": bytes(torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).tolist()),
        "empty": b"",
        "truncated_half": data[: len(data) // 2],
        "truncated_header": data[:40],
        "json_junk": (16).to_bytes(8, "little") + b'{"a": "b"}      ',
    }[kind]
    bad = tmp_path / f"{kind}.safetensors"
    bad.write_bytes(content)
    for read in _all_readers(bad, cfg):
        with pytest.raises(CheckpointError) as err:
            read()
        _assert_one_line(err)
        assert str(bad) in str(err.value)
    assert bad.read_bytes() == content  # reading never repairs or rewrites
    assert not (tmp_path / "exported.safetensors").exists()


def test_wrong_format_metadata(tmp_path, saved):
    cfg, good = saved
    tensors = load_file(str(good))
    cases = {
        "other.safetensors": {"format": "someone-elses-v3", "config": cfg.to_json()},
        "nometa.safetensors": None,
    }
    for name, meta in cases.items():
        path = tmp_path / name
        save_file(tensors, str(path), metadata=meta)
        for read in _all_readers(path, cfg):
            with pytest.raises(CheckpointError, match="not a vin checkpoint") as err:
                read()
            _assert_one_line(err)


@pytest.mark.parametrize("config_text", ["{not json", '{"model": {"dit": {"width": "wide"}}}', '{"bogus": 1}'])
def test_unusable_config_in_metadata(tmp_path, saved, config_text):
    cfg, good = saved
    path = tmp_path / "badcfg.safetensors"
    save_file(load_file(str(good)), str(path), metadata={"format": FORMAT, "config": config_text, "step": "1"})
    with pytest.raises(CheckpointError, match="unusable config") as err:
        checkpoint_config(path)
    _assert_one_line(err)
    with pytest.raises(CheckpointError):
        load_model(path)


def test_missing_config_in_metadata(tmp_path, saved):
    _, good = saved
    path = tmp_path / "nocfg.safetensors"
    save_file(load_file(str(good)), str(path), metadata={"format": FORMAT})
    with pytest.raises(CheckpointError, match="config"):
        checkpoint_config(path)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.dit.width=48"], ["shape", "model expects"]),
        (["model.dit.depth=3"], ["missing", "blocks.2"]),
        (["model.dit.depth=1"], ["unexpected", "blocks.1"]),
        (["model.vin.enabled=false"], ["unexpected", "dit.gate_logits"]),
        (["model.text.vocab_size=300"], ["shape", "text"]),
    ],
)
def test_load_into_other_model_config(saved, overrides, words):
    cfg, good = saved
    other = build_model(tiny_cfg(*overrides))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(good, other)
    _assert_one_line(err)
    msg = str(err.value)
    assert "does not match the model" in msg
    for w in words:
        assert w in msg
    _assert_state_equal(before, other.state_dict())  # a failed load changes nothing


def test_load_into_other_model_config_with_ema(saved):
    cfg, good = saved
    model = build_model(cfg)
    other_ema = build_model(tiny_cfg("model.dit.width=48"))
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(good, model, other_ema)


# ------------------------------------------------------------------------------------- export


def test_export_weights(tmp_path, saved):
    cfg, good = saved
    out = export_weights(good, tmp_path / "w" / "exported.safetensors")
    assert out.is_file()
    assert out.stat().st_size < good.stat().st_size / 2  # no model copy, no optimizer moments
    tensors = load_file(str(out))
    assert all(k.startswith("model.") for k in tensors)
    full = load_file(str(good))
    for k, v in tensors.items():
        assert torch.equal(v, full["ema." + k[len("model."):]])  # the EMA weights are what is shipped
    meta = read_metadata(out)
    assert meta["format"] == FORMAT and meta["step"] == "1" and "optim_groups" not in meta
    assert checkpoint_config(out) == cfg

    # loading the export gives the EMA weights whichever copy is asked for
    ema_target, model_target = build_model(cfg), build_model(cfg)
    load_checkpoint(good, ema_target, weights="ema")
    load_checkpoint(out, model_target, weights="model")
    _assert_state_equal(ema_target.state_dict(), model_target.state_dict())
    model, _ = load_model(out)
    _assert_state_equal(ema_target.state_dict(), model.state_dict())
    assert not model.training

    # an export cannot be resumed
    with pytest.raises(CheckpointError, match="optimizer"):
        load_checkpoint(out, build_model(cfg), build_model(cfg), torch.optim.AdamW(build_model(cfg).parameters()))
    assert sorted(p.name for p in out.parent.iterdir()) == ["exported.safetensors"]


def test_generate_from_exported_weights(tmp_path, saved):
    cfg, good = saved
    exported = export_weights(good, tmp_path / "exported.safetensors")
    sample = SampleConfig(frames=10, overlap=2, steps=2, seed=1)
    kwargs = dict(scale=1, progress=False)
    written_full = generate(["a red circle"], sample, tmp_path / "full.gif", checkpoint=good, **kwargs)
    written_export = generate(["a red circle"], sample, tmp_path / "exp.gif", checkpoint=exported, **kwargs)
    assert [p.name for p in written_export] == ["exp.gif", "exp.png", "exp.json"]
    assert all(p.is_file() for p in written_export + written_full)
    frames = read_video(tmp_path / "exp.gif")
    assert frames.shape == (10, 16, 16, 3)
    # both files hold the same EMA weights, so the samples agree exactly
    assert (frames == read_video(tmp_path / "full.gif")).all()
    record = json.loads((tmp_path / "exp.json").read_text())
    assert record["checkpoint"] == str(exported)
    assert record["model_config"] == json.loads(cfg.to_json())
