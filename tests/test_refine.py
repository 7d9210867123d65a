"""Tests for the pixel refiner (`vin.models.refine`, `model.dit.refine_width`): an exact no-op when
fresh, so a trained checkpoint grows one by `train.init_from`; per-frame and local; float32 under
CPU autocast; counted FLOPs equal the formula; and the warning for bf16 on CPUs without bf16 units."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vin.checkpoint import CheckpointError, export_weights, load_checkpoint
from vin.config import ConfigError, load_config
from vin.eval.flops import count, frozen
from vin.models.refine import PixelRefiner
from vin.training import trainer
from vin.training.trainer import build_model, checkpoints, train

from test_models import make_model

H = W = 16
CAPTIONS = ["a red ball bouncing", "two blue squares"]
XS_YAML = Path(__file__).resolve().parents[1] / "configs" / "vin-xs.yaml"
TINY = ["data.height=16", "data.width=16", "model.chunk_frames=4", "train.context_frames=2", "train.chunks=[2]",
        "train.batch_size=2", "train.log_every=1", "train.warmup_steps=1", "train.lr=0.001"]


def _velocity(model, chunks, t):
    """Velocity of chunks (B, n, C, F, H, W), the global tokens read from the chunks laid end to end."""
    text = model.encode_text(CAPTIONS)
    with torch.no_grad():
        return model.denoise_chunks(chunks, t, text, model.read(torch.cat(chunks.unbind(1), dim=2), t, text))


def test_fresh_refiner_is_the_plain_dit():
    """A model with a new (zero-initialised) refiner, loaded from a model without one, predicts
    exactly what that model predicts; once its output convolution is non-zero, it does not."""
    plain = make_model()
    grown = make_model("model.dit.refine_width=8", trained=False)
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("dit.refine") for k in missing)
    x, t = torch.randn(2, 3, 3, 8, H, W), torch.tensor([0.3, 0.9])
    assert torch.equal(_velocity(plain, x, t), _velocity(grown, x, t))
    with torch.no_grad():
        grown.dit.refine.conv_out.weight.normal_(std=0.1)
    assert (_velocity(plain, x, t) - _velocity(grown, x, t)).abs().max() > 1e-3


def _refiner(seed: int = 0) -> PixelRefiner:
    torch.manual_seed(seed)
    r = PixelRefiner(3, 8, 4, 16, patch_values=32)
    with torch.no_grad():
        for p in r.parameters():
            if not p.any():
                p.normal_(std=0.3)
    return r.eval()


def test_refiner_is_per_frame():
    """Frames are refined independently: a window refined at once equals its frames refined one by one."""
    r = _refiner()
    y, x, f, c = torch.randn(2, 3, 5, H, W), torch.randn(2, 3, 5, H, W), torch.randn(2, 4, 5, H, W), torch.randn(2, 16)
    with torch.no_grad():
        whole = r(y, x, f, c)
        frames = torch.cat([r(y[:, :, i:i + 1], x[:, :, i:i + 1], f[:, :, i:i + 1], c) for i in range(5)], dim=2)
    torch.testing.assert_close(whole, frames, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source", ["y", "x", "features"])
def test_refiner_receptive_field_is_three_pixels(source):
    """Three 3x3 convolutions: changing one input pixel changes the output only within 3 pixels of
    it, in the same frame (the DiT output y also passes through unchanged at that pixel)."""
    r = _refiner(1)
    inputs = {"y": torch.randn(1, 3, 2, H, W), "x": torch.randn(1, 3, 2, H, W), "features": torch.randn(1, 4, 2, H, W)}
    c = torch.randn(1, 16)
    with torch.no_grad():
        before = r(inputs["y"], inputs["x"], inputs["features"], c)
        inputs[source][0, 0, 1, 8, 5] += 1.0
        after = r(inputs["y"], inputs["x"], inputs["features"], c)
    changed = (after - before).abs().amax(dim=(0, 1)) > 0  # (F, H, W)
    assert not changed[0].any()
    rows, cols = torch.nonzero(changed[1], as_tuple=True)
    assert rows.min() == 5 and rows.max() == 11 and cols.min() == 2 and cols.max() == 8


def test_refiner_runs_in_float32_under_cpu_autocast():
    r = _refiner(2)
    y, x, f, c = torch.randn(1, 3, 2, H, W), torch.randn(1, 3, 2, H, W), torch.randn(1, 4, 2, H, W), torch.randn(1, 16)
    yb = y.to(torch.bfloat16)
    with torch.no_grad():
        expected = r(yb.float(), x, f, c).to(torch.bfloat16)  # autocast off: float32 convolutions
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = r(yb, x, f, c)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


def test_refiner_config_is_checked():
    with pytest.raises(ConfigError, match="refine_width"):
        load_config(None, ["model.dit.refine_width=-1"], preset="VIN-XS/4")


def test_refiner_flops_known_answer():
    """One DiT call on a chunk of 8 frames of 16x16 with refine_width 8 and 4 feature channels costs
    its convolutions and two linears more than without: 2 x pixels x c_in x c_out x 9 per convolution."""
    text = make_model().encode_text(CAPTIONS[:1])
    x, t, z = torch.randn(1, 3, 8, H, W), torch.rand(1), torch.randn(1, 8, 32)
    counts = []
    for extra in ([], ["model.dit.refine_width=8", "model.dit.refine_features=4"]):
        m = make_model(*extra)
        with frozen(m), torch.no_grad():
            counts.append(count(lambda: m.dit(x, t, text, z)))
    pixels, tokens = 8 * H * W, 4 * 4 * 4
    conv = 2 * pixels * 9 * ((2 * 3 + 4) * 8 + 8 * 8 + 8 * 3)
    linear = 2 * (tokens * 32 * 4 * 2 * 4 * 4 + 32 * 2 * 8)
    assert counts[1]["dit_linear"] - counts[0]["dit_linear"] == conv + linear
    assert counts[1]["dit_attention"] == counts[0]["dit_attention"] and counts[1]["other"] == 0


def test_init_from_grows_a_refiner(tmp_path):
    """A warm start may add a refiner to a checkpoint trained without one: the grown model starts as
    exactly the old one, and training moves its refiner. Removing a refiner, or any other change
    next to it, is refused."""
    cfg = load_config(XS_YAML, TINY + ["train.steps=2"])
    train(cfg, tmp_path / "a", progress=False)
    exported = export_weights(checkpoints(tmp_path / "a")[-1], tmp_path / "w.safetensors")
    grown_cfg = load_config(XS_YAML, TINY + ["train.steps=3", f"train.init_from={exported}", "model.dit.refine_width=8"])

    old, grown = build_model(cfg).eval(), build_model(grown_cfg).eval()
    load_checkpoint(exported, old, weights="ema")
    load_checkpoint(exported, grown, weights="ema", new_modules=("dit.refine",))
    x, t = torch.randn(2, 2, 3, 4, H, W), torch.tensor([0.4, 0.8])
    assert torch.equal(_velocity(old, x, t), _velocity(grown, x, t))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(exported, build_model(grown_cfg))  # only with new_modules named

    train(grown_cfg, tmp_path / "b", progress=False)
    assert [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()] == [3]
    after = build_model(grown_cfg)
    load_checkpoint(checkpoints(tmp_path / "b")[-1], after)
    assert after.dit.refine.conv_out.weight.abs().sum() > 0

    grown_file = export_weights(checkpoints(tmp_path / "b")[-1], tmp_path / "g.safetensors")
    shrink = replace(cfg, train=replace(cfg.train, steps=4, init_from=str(grown_file)))
    with pytest.raises(CheckpointError, match="refine_width"):
        train(shrink, tmp_path / "c", progress=False)
    other = replace(grown_cfg, model=replace(grown_cfg.model, vin=replace(grown_cfg.model.vin, num_global=4)))
    with pytest.raises(CheckpointError, match="num_global"):
        train(other, tmp_path / "d", progress=False)


@pytest.mark.parametrize("fast", [False, True])
def test_bf16_warning_on_cpus_without_bf16_units(tmp_path, monkeypatch, capsys, fast):
    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: fast)
    train(load_config(XS_YAML, TINY + ["train.steps=1", "train.autocast_bf16=true"]), tmp_path, progress=False)
    warned = "set train.autocast_bf16=false" in capsys.readouterr().err
    assert warned is not fast


@pytest.mark.parametrize("fast", [False, True])
def test_auto_bf16_is_the_explicit_setting_this_cpu_should_use(tmp_path, monkeypatch, capsys, fast):
    """train.autocast_bf16=auto trains exactly as `true` on a CPU with fast bf16 kernels and as
    `false` on one without (same losses, bit for bit), and says which it chose; no slow-bf16 warning."""
    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: fast)

    def losses(setting: str, out: str) -> list[float]:
        train(load_config(XS_YAML, TINY + ["train.steps=2", "train.log_every=1", f"train.autocast_bf16={setting}"]),
              tmp_path / out, progress=False)
        return [json.loads(line)["loss"] for line in (tmp_path / out / "log.jsonl").read_text().splitlines()]

    auto = losses("auto", "auto")
    err = capsys.readouterr().err
    assert ("bf16 autocast on this cpu" if fast else "float32 on this cpu") in err
    assert "set train.autocast_bf16=false" not in err
    assert auto == losses(str(fast).lower(), "explicit")
    assert auto != losses(str(not fast).lower(), "other")  # the two settings do differ on this model


def test_use_bf16_resolves_auto_per_device(monkeypatch):
    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: False)
    assert [trainer.use_bf16(s, "cpu") for s in (True, False, "auto")] == [True, False, False]
    assert trainer.use_bf16("auto", "mps") is False
    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: True)
    assert trainer.use_bf16("auto", "cpu") is True
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))  # V100: bf16 emulated
    assert trainer.use_bf16("auto", "cuda") is False
    assert trainer.use_bf16(True, "cuda") is True
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))  # A100 and later
    assert trainer.use_bf16("auto", "cuda") is True


def test_auto_bf16_is_recorded_as_chosen_and_a_changed_precision_is_noted_on_resume(tmp_path, monkeypatch, capsys):
    """The run's config.json and checkpoints say what "auto" chose, so a resume on a machine that
    chooses otherwise (or with another explicit setting) says that the precision changes."""
    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: True)
    cfg = load_config(XS_YAML, TINY + ["train.steps=1", "train.autocast_bf16=auto"])
    train(cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["autocast_bf16"] is True
    assert trainer.checkpoint_config(checkpoints(tmp_path)[-1]).train.autocast_bf16 is True
    capsys.readouterr()
    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: False)  # "another machine"
    train(replace(cfg, train=replace(cfg.train, steps=2)), tmp_path, resume=True, progress=False)
    err = capsys.readouterr().err
    assert "was trained under bf16 autocast; this run goes on in float32" in err
    train(replace(cfg, train=replace(cfg.train, steps=3, autocast_bf16=False)), tmp_path, resume=True, progress=False)
    assert "this run goes on" not in capsys.readouterr().err  # step 2 was float32 too


def test_refiner_trains_under_cpu_bf16_autocast(tmp_path):
    """Two steps with a refiner under CPU bf16 autocast: finite losses, the refiner's output layer moves."""
    cfg = load_config(XS_YAML, TINY + ["train.steps=2", "train.autocast_bf16=true", "model.dit.refine_width=8"])
    train(cfg, tmp_path, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    model = build_model(cfg)
    load_checkpoint(checkpoints(tmp_path)[-1], model)
    assert model.dit.refine.conv_out.weight.abs().sum() > 0


def test_a_new_module_loads_whole_or_not_at_all(tmp_path):
    """`new_modules` lets a file lack a module entirely; a file holding part of it is refused."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cfg = load_config(XS_YAML, TINY + ["train.steps=1", "model.dit.refine_width=8"])
    train(cfg, tmp_path / "a", progress=False)
    full = export_weights(checkpoints(tmp_path / "a")[-1], tmp_path / "w.safetensors")
    tensors = load_file(str(full))
    partial = {k: v for k, v in tensors.items() if not k.startswith("model.dit.refine.conv_out.")}
    with safe_open(str(full), "pt") as f:
        meta = f.metadata()  # format and config, as the full file
    save_file(partial, str(tmp_path / "p.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="conv_out"):
        load_checkpoint(tmp_path / "p.safetensors", build_model(cfg), new_modules=("dit.refine",))
    load_checkpoint(full, build_model(cfg), new_modules=("dit.refine",))  # complete: loads


def test_refine_features_without_a_refiner_change_nothing():
    a = load_config(None, ["model.dit.refine_features=3"], preset="VIN-XS/4")
    assert a.model == load_config(None, [], preset="VIN-XS/4").model
