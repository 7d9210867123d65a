"""Tests for the training objective and loop: overfitting, context weights, the zero-init gate,
exact resume, run-directory safety and checkpoint pruning."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vin.checkpoint import CheckpointError
from vin.config import load_config
from vin.data.synthetic import make_batch
from vin.models.vin import VINModel
from vin.training.objective import StepDraws, context_weights, draw_step, training_loss
from vin.training.trainer import (build_model, checkpoints, clamp_gates, learning_rate, param_groups, step_generator,
                                  train, training_lengths)

REPO = Path(__file__).resolve().parents[1]
XS_YAML = REPO / "configs" / "vin-xs.yaml"
# VIN-XS/4 on 16x16 frames with 4-frame chunks (2 context frames): a step takes milliseconds
TINY = ["data.height=16", "data.width=16", "model.chunk_frames=4", "train.context_frames=2",
        "train.chunks=[2]", "train.batch_size=2", "train.log_every=1", "train.warmup_steps=1",
        "train.lr=0.001"]
CKPT_NAME = re.compile(r"^step-\d{7}\.safetensors$")



def tiny_cfg(*extra: str):
    return load_config(XS_YAML, TINY + list(extra))


def with_train(cfg, **changes):
    return replace(cfg, train=replace(cfg.train, **changes))


def batch(cfg, index=0, num_frames=None):
    n = num_frames or training_lengths(cfg)[0]
    video, captions, _ = make_batch(cfg.train.seed, index, cfg.train.batch_size, n, cfg.data)
    return video, captions


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root -> its sha256 ("dir" for folders)."""
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def read_log(run_dir: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"repeated steps in the log: {steps}"
    return {r["step"]: r for r in records}


# ------------------------------------------------------------------------------------ objective


def test_overfits_one_batch():
    cfg = tiny_cfg("train.caption_dropout=0")
    torch.manual_seed(0)
    model = build_model(cfg)
    video, captions = batch(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(150):
        # the same generator every step: same t, same noise -> a fixed regression problem
        loss, stats = training_loss(model, video, captions, cfg.train, torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert stats["chunks"] == 2.0
    first, last = losses[0], sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_context_weights_known_answer():
    w = context_weights(3, 5, 2, 0.25)
    expected = torch.tensor([[1, 1, 1, 1, 1], [0.25, 0.25, 1, 1, 1], [0.25, 0.25, 1, 1, 1]])
    assert w.shape == (3, 5)
    torch.testing.assert_close(w, expected)
    torch.testing.assert_close(context_weights(1, 4, 2, 0.0), torch.ones(1, 4))  # first chunk has no context
    torch.testing.assert_close(context_weights(2, 4, 0, 0.0), torch.ones(2, 4))  # no context frames
    assert context_weights(2, 4, 3, 0.0).tolist() == [[1, 1, 1, 1], [0, 0, 0, 1]]


class _Offset:
    """A model whose chunk predictions get `offset` (broadcast to (B, n, C, F, H, W)) added."""

    def __init__(self, model: VINModel, offset: torch.Tensor):
        self.model, self.cfg, self.offset = model, model.cfg, offset

    def encode_text(self, captions):
        return self.model.encode_text(captions)

    def read(self, *args):
        return self.model.read(*args)

    def denoise_chunks(self, *args):
        return self.model.denoise_chunks(*args) + self.offset


def _loss(model, cfg, video, captions, seed=3):
    with torch.no_grad():
        return training_loss(model, video, captions, cfg.train, torch.Generator().manual_seed(seed))[0]


def _offset(n, F, chunk, frames, value=5.0):
    off = torch.zeros(1, n, 1, F, 1, 1)
    off[:, chunk, :, frames] = value
    return off


def _is_gate(name: str) -> bool:
    """The (nearly) shut parameters through which the global tokens enter the DiT."""
    return name == "dit.gate_logits" or (name.startswith("dit.cross.") and ".attn.proj." in name)


def _perturb(model: VINModel) -> VINModel:
    """Random weights everywhere except the gates: an untrained DiT predicts exactly 0
    (adaLN-zero), which would make any comparison of losses vacuous."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if _is_gate(name):
                continue
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def test_context_loss_weight_is_applied():
    # chunk_frames=4, context=2, 3 chunks -> 8 frames; chunk 1 and 2 take frames 0..1 as context
    cfg = tiny_cfg("train.chunks=[3]", "train.context_loss_weight=0")
    model = build_model(cfg).eval()
    video, captions = batch(cfg)
    base = _loss(model, cfg, video, captions)
    assert torch.equal(base, _loss(model, cfg, video, captions))  # deterministic given the generator
    # weight 0: errors on the context frames of later chunks do not count ...
    for chunk in (1, 2):
        assert torch.equal(_loss(_Offset(model, _offset(3, 4, chunk, slice(0, 2))), cfg, video, captions), base)
    # ... but errors on their own frames do, and the first chunk has no context frames
    assert _loss(_Offset(model, _offset(3, 4, 1, slice(2, 4))), cfg, video, captions) > base
    assert _loss(_Offset(model, _offset(3, 4, 0, slice(0, 2))), cfg, video, captions) > base
    # weight 1: context frames count like any other
    cfg1 = with_train(cfg, context_loss_weight=1.0)
    base1 = _loss(model, cfg1, video, captions)
    assert _loss(_Offset(model, _offset(3, 4, 1, slice(0, 2))), cfg1, video, captions) > base1


def test_chunks_weigh_equally():
    # The loss is the mean over chunks of each chunk's weighted mean over its frames. An offset of
    # +-5 on every weighted frame of one chunk adds 25 to that chunk's loss on average over the two
    # signs (the cross term cancels), so 25 / n to the loss, whether the chunk has 4 weighted frames
    # (chunk 0) or 2 (chunks 1, 2, whose context frames have weight 0).
    cfg = tiny_cfg("train.chunks=[3]", "train.context_loss_weight=0")
    model = _perturb(build_model(cfg)).eval()
    video, captions = batch(cfg)
    base = _loss(model, cfg, video, captions)
    for c in range(3):
        frames = slice(0 if c == 0 else 2, 4)
        plus = _loss(_Offset(model, _offset(3, 4, c, frames, 5.0)), cfg, video, captions)
        minus = _loss(_Offset(model, _offset(3, 4, c, frames, -5.0)), cfg, video, captions)
        assert ((plus + minus) / 2 - base).item() == pytest.approx(25.0 / 3, rel=1e-4), c


@pytest.mark.parametrize("num_frames", [7, 9, 5, 3])
def test_training_loss_rejects_bad_lengths(num_frames):
    cfg = tiny_cfg()  # F=4, K=2: valid lengths are 4, 6, 8, 10, ...
    model = build_model(cfg)
    video, captions = batch(cfg, num_frames=num_frames)
    with pytest.raises(ValueError) as err:
        training_loss(model, video, captions, cfg.train, torch.Generator().manual_seed(0))
    assert str(num_frames) in str(err.value)


@pytest.mark.parametrize("num_frames", [4, 6, 10])
def test_training_loss_accepts_valid_lengths(num_frames):
    cfg = tiny_cfg()
    model = build_model(cfg)
    video, captions = batch(cfg, num_frames=num_frames)
    loss, stats = training_loss(model, video, captions, cfg.train, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert stats["chunks"] == (num_frames - 2) // 2


def test_training_lengths():
    cfg = tiny_cfg("train.chunks=[1, 2, 5]")
    assert training_lengths(cfg) == (4, 6, 12)
    assert training_lengths(load_config(XS_YAML)) == (14, 20)  # F=8, K=2, chunks 2 and 3


@pytest.mark.parametrize("inject", ["concat", "cross"])
def test_interface_is_a_no_op_at_init(inject):
    """Shut gates: the untrained VIN model equals the plain chunk DiT with the same weights."""
    cfg = tiny_cfg(f"model.vin.inject={inject}", "train.caption_dropout=0.5")
    plain_cfg = tiny_cfg(f"model.vin.inject={inject}", "model.vin.enabled=false", "train.caption_dropout=0.5")
    model = build_model(cfg)
    plain = VINModel(plain_cfg.model)
    gates = [n for n, _ in model.named_parameters() if _is_gate(n)]
    shut = {"concat": cfg.model.vin.gate_init, "cross": 0.0}[inject]
    assert gates and all(torch.all(model.get_parameter(n) == shut) for n in gates)
    _perturb(model)
    shared = model.state_dict()
    assert set(plain.state_dict()) < set(shared)
    plain.load_state_dict({k: shared[k] for k in plain.state_dict()})
    assert model.interface is not None and plain.interface is None

    video, captions = batch(cfg)
    with_vin = _loss(model, cfg, video, captions, seed=11)
    without = _loss(plain, plain_cfg, video, captions, seed=11)
    torch.testing.assert_close(with_vin, without, rtol=1e-5, atol=1e-6)
    # the same batch with another generator gives another loss (so agreement above is not vacuous)
    assert not torch.allclose(_loss(plain, plain_cfg, video, captions, seed=12), without, rtol=1e-3)

    # opening the gate changes the loss: the global tokens do reach the chunks
    with torch.no_grad():
        if inject == "concat":
            model.dit.gate_logits.fill_(0.0)
        else:
            for cross in model.dit.cross:
                torch.nn.init.normal_(cross.attn.proj.weight, std=0.5)
    assert not torch.allclose(_loss(model, cfg, video, captions, seed=11), without, rtol=1e-3)


# --------------------------------------------------------------------------------- train loop


def test_gates_get_their_own_learning_rate(tmp_path):
    """The gate log-weights train at lr * gate_lr_mult with no weight decay; the ablation (no
    gates) has one group. Checked on the optimizer state a real run writes."""
    cfg = tiny_cfg("train.steps=2", "train.gate_lr_mult=7", "train.weight_decay=0.01")
    train(cfg, tmp_path / "a", progress=False)
    meta = json.loads(load_file_meta(checkpoints(tmp_path / "a")[-1])["optim_groups"])
    assert [(g["lr"], g["lr_mult"], g["weight_decay"]) for g in meta] == [(0.001, 1.0, 0.01), (0.007, 7.0, 0.0)]
    assert len(meta[1]["params"]) == 1
    train(tiny_cfg("train.steps=1", "model.vin.enabled=false"), tmp_path / "b", progress=False)
    assert len(json.loads(load_file_meta(checkpoints(tmp_path / "b")[-1])["optim_groups"])) == 1


def test_a_shut_gate_moves_at_the_gate_learning_rate():
    """Adam's first step is lr * sign(grad) when eps is negligible: every shut gate (s = -16,
    gradient ~1e-10) moves by lr * gate_lr_mult. With Adam's default eps 1e-8 it would not move."""
    cfg = tiny_cfg("train.gate_lr_mult=7")
    model = _perturb(build_model(cfg))  # a trained-like DiT: an adaLN-zero one sends no gradient to the gates
    groups = param_groups(model, cfg.train)
    for g in groups:
        g["lr"] = cfg.train.lr * g["lr_mult"]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.99))
    video, captions = batch(cfg)
    training_loss(model, video, captions, cfg.train, torch.Generator().manual_seed(0))[0].backward()
    grad = model.dit.gate_logits.grad.abs()
    assert (grad > 0).all() and grad.max() < 1e-6  # tiny, but there
    opt.step()
    moved = (model.dit.gate_logits.detach() - cfg.model.vin.gate_init).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, 0.007), rtol=1e-3, atol=0)


def test_resume_takes_this_runs_optimizer_settings(tmp_path):
    """Resume restores the optimizer state but the groups keep the resumed config's settings."""
    train(tiny_cfg("train.steps=1"), tmp_path / "a", progress=False)
    train(tiny_cfg("train.steps=2", "train.gate_lr_mult=5", "train.weight_decay=0.5"), tmp_path / "a",
          resume=True, progress=False)
    meta = json.loads(load_file_meta(checkpoints(tmp_path / "a")[-1])["optim_groups"])
    assert [(g["lr_mult"], g["weight_decay"]) for g in meta] == [(1.0, 0.5), (5.0, 0.0)]


def test_resume_of_a_one_group_optimizer_state_says_what_to_do(tmp_path):
    """Runs saved before the gates had their own group cannot resume; the error names init_from."""
    cfg = tiny_cfg("train.steps=1")
    train(cfg, tmp_path / "a", progress=False)
    path = checkpoints(tmp_path / "a")[-1]
    tensors, meta = load_file(str(path)), load_file_meta(path)
    groups = json.loads(meta["optim_groups"])
    merged = {**groups[0], "params": groups[0]["params"] + groups[1]["params"]}
    meta["optim_groups"] = json.dumps([merged])
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="init_from"):
        train(with_train(cfg, steps=2), tmp_path / "a", resume=True, progress=False)


def test_gate_logits_are_clamped_after_each_step():
    model = build_model(tiny_cfg())
    with torch.no_grad():
        model.dit.gate_logits.copy_(torch.tensor([[-1e6, 50.0], [-3.0, 0.0]]))  # VIN-XS: 2 blocks, 2 heads
    clamp_gates(model)
    assert model.dit.gate_logits.tolist() == [[-30.0, 10.0], [-3.0, 0.0]]


def load_file_meta(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return f.metadata()



def test_resume_continues_exactly(tmp_path):
    cfg = tiny_cfg("train.steps=6", "train.ckpt_every=3")
    a, b = tmp_path / "a", tmp_path / "b"
    stats_a = train(cfg, a, progress=False)
    train(with_train(cfg, steps=3), b, progress=False)
    assert [p.name for p in checkpoints(b)] == ["step-0000003.safetensors"]
    stats_b = train(cfg, b, resume=True, progress=False)

    log_a, log_b = read_log(a), read_log(b)
    assert sorted(log_a) == sorted(log_b) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        for key in ("loss", "lr", "grad_norm"):
            assert log_a[step][key] == log_b[step][key], (step, key)
    assert stats_a["loss"] == stats_b["loss"] and stats_a["step"] == stats_b["step"] == 6
    losses = [log_a[s]["loss"] for s in range(1, 7)]
    assert len(set(losses)) == 6  # the steps did see different batches / noise

    final_a, final_b = load_file(str(checkpoints(a)[-1])), load_file(str(checkpoints(b)[-1]))
    assert checkpoints(a)[-1].name == checkpoints(b)[-1].name == "step-0000006.safetensors"
    assert final_a.keys() == final_b.keys()
    assert any(k.startswith("ema.") for k in final_a) and any(k.startswith("optim.") for k in final_a)
    for k in final_a:
        assert torch.equal(final_a[k], final_b[k]), k
    # the EMA moved away from the weights it started from
    init = build_model(cfg).state_dict()
    assert not torch.equal(final_a["ema.dit.x_embed.weight"], init["dit.x_embed.weight"])
    assert json.loads((b / "config.json").read_text())["train"]["steps"] == 6


def test_resume_from_forks_a_run_as_it_would_have_gone_on(tmp_path):
    """--resume-from a middle checkpoint of run a into a new directory: the same log (the records up
    to the fork copied, the rest trained) and bit-identical final weights, EMA and optimizer state
    as a itself; run a is left untouched."""
    cfg = tiny_cfg("train.steps=6", "train.ckpt_every=3", "train.keep_checkpoints=10", "train.warmup_steps=2")
    a, b = tmp_path / "a", tmp_path / "b"
    train(cfg, a, progress=False)
    before = snapshot(a)
    stats = train(cfg, b, resume_from=a / "checkpoints/step-0000003.safetensors", progress=False)
    assert snapshot(a) == before
    assert stats["step"] == 6
    assert [p.name for p in checkpoints(b)] == ["step-0000006.safetensors"]
    source = (a / "checkpoints/step-0000003.safetensors").resolve()
    assert json.loads((b / "forked_from.json").read_text()) == {"checkpoint": str(source), "step": 3}
    assert not (a / "forked_from.json").exists()
    log_a, log_b = read_log(a), read_log(b)
    assert sorted(log_b) == sorted(log_a) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        for key in ("loss", "lr", "grad_norm"):
            assert log_a[step][key] == log_b[step][key], (step, key)
    final_a, final_b = load_file(str(checkpoints(a)[-1])), load_file(str(checkpoints(b)[-1]))
    assert final_a.keys() == final_b.keys() and any(k.startswith("optim.") for k in final_b)
    for k in final_a:
        assert torch.equal(final_a[k], final_b[k]), k


def test_resume_from_branches_a_cool_down_off_a_constant_rate_run(tmp_path):
    """A cool-down forked off a constant-rate run keeps the rate where it was and decays over the
    new run's last decay_steps (warmup-stable-decay); starting from the same weights with
    train.init_from instead warms up again (the cost RESULTS measured)."""
    trunk = tiny_cfg("train.steps=2", "train.warmup_steps=1", "train.lr_decay=constant", "train.lr=0.001")
    train(trunk, tmp_path / "trunk", progress=False)
    source = tmp_path / "trunk/checkpoints/step-0000002.safetensors"
    cool = tiny_cfg("train.steps=6", "train.keep_checkpoints=10", "train.warmup_steps=3", "train.lr_decay=linear",
                    "train.decay_steps=2", "train.lr=0.001", "train.lr_min_ratio=0")
    train(cool, tmp_path / "cool", resume_from=source, progress=False)
    lrs = {s: r["lr"] for s, r in read_log(tmp_path / "cool").items() if s > 2}
    # the full rate from the first step: the trunk began at step 0, so the 3-step warm-up is over;
    # the linear decay over the last 2 steps (indices 4-5) reaches 0 at step 6
    assert [lrs[s] for s in (3, 4, 5, 6)] == pytest.approx([0.001, 0.001, 0.001, 0.0005])
    assert [lrs[s] for s in (3, 4, 5, 6)] == pytest.approx([learning_rate(cool.train, s - 1, start=0) for s in (3, 4, 5, 6)])
    from vin.checkpoint import export_weights
    weights = export_weights(source, tmp_path / "w.safetensors")
    train(with_train(cool, init_from=str(weights)), tmp_path / "init", progress=False)
    rewarm = {s: r["lr"] for s, r in read_log(tmp_path / "init").items()}
    assert [rewarm[s] for s in (3, 4, 5)] == pytest.approx([0.001 / 3, 0.002 / 3, 0.001])


def test_resume_from_copies_the_log_from_a_relative_path_and_notes_what_differs(tmp_path, monkeypatch, capsys):
    """A relative checkpoint path still finds its run's log (records past the step and a half-written
    last line left out); train.init_from is ignored as under --resume; a changed data setting and a
    decay that begins before the checkpoint's step are each named in a note."""
    cfg = tiny_cfg("train.steps=4", "train.ckpt_every=2", "train.keep_checkpoints=10", "train.lr_decay=constant")
    train(cfg, tmp_path / "a", progress=False)
    with open(tmp_path / "a/log.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # a source run still writing
    monkeypatch.chdir(tmp_path / "a/checkpoints")
    fork = with_train(cfg, steps=6, lr_decay="linear", decay_steps=5, init_from="no/such/file.safetensors")
    fork = replace(fork, data=replace(fork.data, max_sprites=1))
    capsys.readouterr()
    train(fork, tmp_path / "b", resume_from="step-0000002.safetensors", progress=False)
    err = capsys.readouterr().err
    assert sorted(read_log(tmp_path / "b")) == [1, 2, 3, 4, 5, 6]
    source = (tmp_path / "a/checkpoints/step-0000002.safetensors").resolve()
    assert json.loads((tmp_path / "b/forked_from.json").read_text()) == {"checkpoint": str(source), "step": 2}
    assert "data.max_sprites" in err and "train.steps" not in err and "train.decay_steps" not in err.split("decay begins")[0]
    assert "the decay begins at step 1, before step-0000002.safetensors's step 2" in err


def test_resume_from_refuses_what_it_cannot_continue(tmp_path):
    """One-line errors, nothing written: an exported file (no optimizer state), a missing file, a
    folder, another model config, a --out that holds checkpoints or a log, a checkpoint at or past
    train.steps, together with --resume."""
    from vin.checkpoint import export_weights
    cfg = tiny_cfg("train.steps=2", "train.ckpt_every=1", "train.keep_checkpoints=10")
    train(cfg, tmp_path / "a", progress=False)
    source = tmp_path / "a/checkpoints/step-0000001.safetensors"
    weights = export_weights(source, tmp_path / "w.safetensors")
    cases = [
        (cfg, tmp_path / "b", False, weights, "holds no optimizer state.*train.init_from"),
        (cfg, tmp_path / "b", False, tmp_path / "nope.safetensors", "no checkpoint at"),
        (tiny_cfg("train.steps=2", "model.dit.depth=1"), tmp_path / "b", False, source, "different model config.*model.dit.depth"),
        (cfg, tmp_path / "a", False, source, "already holds checkpoints.*nothing is deleted"),
        (cfg, tmp_path / "a", True, source, "pass one of them"),
        (cfg, tmp_path / "b", False, tmp_path / "a/checkpoints", "not the folder.*step-0000002"),
        (cfg, tmp_path / "b", False, tmp_path / "a/checkpoints/step-0000002.safetensors", "at step 2; set --train.steps"),
        (cfg, tmp_path / "logged", False, source, "log.jsonl exists"),
    ]
    (tmp_path / "logged").mkdir()
    (tmp_path / "logged/log.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    before = snapshot(tmp_path)
    for c, out, resume, src, message in cases:
        with pytest.raises(CheckpointError, match=message) as err:
            train(c, out, resume=resume, resume_from=src, progress=False)
        assert "\n" not in str(err.value)
        assert snapshot(tmp_path) == before, message


def test_a_fork_that_failed_before_its_first_checkpoint_starts_again(tmp_path):
    """A fork that stopped before writing a checkpoint (here a diverged loss) left its config, the
    copied log and forked_from.json: --resume says what to do, the same fork again is accepted and
    logs every step once, and --resume-from on the fork once it has checkpoints says to --resume."""
    cfg = tiny_cfg("train.steps=4", "train.ckpt_every=2", "train.keep_checkpoints=10", "train.lr_decay=constant")
    train(cfg, tmp_path / "a", progress=False)
    source = tmp_path / "a/checkpoints/step-0000002.safetensors"
    with pytest.raises(FloatingPointError):
        train(with_train(cfg, steps=6, lr=1e30), tmp_path / "b", resume_from=source, progress=False)
    assert (tmp_path / "b/forked_from.json").is_file() and not checkpoints(tmp_path / "b")
    with pytest.raises(CheckpointError, match="nothing to resume.*start it again with --resume-from"):
        train(with_train(cfg, steps=6), tmp_path / "b", resume=True, progress=False)
    train(with_train(cfg, steps=6), tmp_path / "b", resume_from=source, progress=False)
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")  # read_log refuses repeated steps
    assert sorted(log_b) == [1, 2, 3, 4, 5, 6]
    assert [log_b[s]["loss"] for s in (1, 2, 3, 4)] == [log_a[s]["loss"] for s in (1, 2, 3, 4)]
    with pytest.raises(CheckpointError, match="already a fork of.*--resume in place of --resume-from"):
        train(with_train(cfg, steps=8), tmp_path / "b", resume_from=source, progress=False)


def test_a_fresh_run_drops_the_log_of_a_start_that_wrote_no_checkpoint(tmp_path, capsys):
    """A run that diverged before its first checkpoint, started again in the same directory, logs
    each step once (with a note), and its log equals a clean run's."""
    cfg = tiny_cfg("train.steps=3", "train.ckpt_every=3")
    with pytest.raises(FloatingPointError):
        train(with_train(cfg, lr=1e30), tmp_path / "run", progress=False)
    assert read_log(tmp_path / "run") and not checkpoints(tmp_path / "run")
    capsys.readouterr()
    train(cfg, tmp_path / "run", progress=False)
    assert "record(s) of a run that wrote no checkpoint" in capsys.readouterr().err
    train(cfg, tmp_path / "clean", progress=False)
    again, clean = read_log(tmp_path / "run"), read_log(tmp_path / "clean")
    assert sorted(again) == sorted(clean) == [1, 2, 3]
    assert [again[s]["loss"] for s in again] == [clean[s]["loss"] for s in clean]


def test_resume_from_a_checkpoint_linked_into_a_store_finds_its_log(tmp_path):
    """A checkpoint that is a link into a content store (DVC, git-annex) names its run by the link's
    path: the fork still gets the run's log."""
    cfg = tiny_cfg("train.steps=3", "train.ckpt_every=2", "train.keep_checkpoints=10", "train.lr_decay=constant")
    train(cfg, tmp_path / "a", progress=False)
    link = tmp_path / "a/checkpoints/step-0000002.safetensors"
    (tmp_path / "store").mkdir()
    link.rename(tmp_path / "store/0f3a")
    link.symlink_to(tmp_path / "store/0f3a")
    train(with_train(cfg, steps=4), tmp_path / "b", resume_from=link, progress=False)
    assert sorted(read_log(tmp_path / "b")) == [1, 2, 3, 4]


def test_truncate_log_mends_half_written_lines(tmp_path):
    """A log cut mid-line (a process killed while writing) or without its last newline: truncate_log
    keeps the whole records up to the step, each on its own line, and says how many it dropped."""
    from vin.training.rundir import truncate_log
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n[3]\n{"step": 3, "lo')
    assert truncate_log(log, 5) == 0
    assert log.read_text() == '{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n'
    log.write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n{"step": 3, "loss": 3}')
    assert truncate_log(log, 2) == 1
    assert log.read_text() == '{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n'
    log.write_text('{"step": 1, "loss": 1}')
    assert truncate_log(log, 1) == 0 and log.read_text() == '{"step": 1, "loss": 1}\n'
    assert truncate_log(tmp_path / "none.jsonl", 1) == 0 and not (tmp_path / "none.jsonl").exists()


def test_compiled_training_follows_the_eager_run(tmp_path, monkeypatch):
    """train.compile compiles the repeated blocks in place: the same losses and weights as the eager
    run (to float rounding of fused kernels), the same checkpoint keys, and a compiled run resumes an
    eager one (and the reverse)."""
    cfg = tiny_cfg("train.steps=3", "train.ckpt_every=2")
    import vin.training.trainer as trainer

    compiled_blocks = []
    real = trainer.compile_blocks
    monkeypatch.setattr(trainer, "compile_blocks", lambda *a, **k: compiled_blocks.append(real(*a, **k)))
    eager, compiled, mixed = tmp_path / "eager", tmp_path / "compiled", tmp_path / "mixed"
    train(cfg, eager, progress=False)
    assert compiled_blocks == []
    train(with_train(cfg, compile=True), compiled, progress=False)
    train(with_train(cfg, steps=2), mixed, progress=False)
    train(with_train(cfg, compile=True), mixed, resume=True, progress=False)
    assert len(compiled_blocks) == 2 and compiled_blocks[0] > 0
    log_e, log_c, log_m = read_log(eager), read_log(compiled), read_log(mixed)
    assert sorted(log_e) == sorted(log_c) == sorted(log_m) == [1, 2, 3]
    for step in (1, 2, 3):
        assert log_c[step]["loss"] == pytest.approx(log_e[step]["loss"], rel=1e-4), step
        assert log_m[step]["loss"] == pytest.approx(log_e[step]["loss"], rel=1e-4), step
    a, b, m = (load_file(str(checkpoints(d)[-1])) for d in (eager, compiled, mixed))
    assert a.keys() == b.keys() == m.keys()  # no "_orig_mod." names
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)
            torch.testing.assert_close(m[k], a[k], rtol=1e-3, atol=1e-5, msg=k)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_data_workers_do_not_change_the_run(tmp_path):
    """Batches rendered ahead in worker processes are the loop's own batches: the same losses and
    weights, bit for bit; and a run resumed with another number of workers continues exactly."""
    cfg = tiny_cfg("train.steps=4", "train.ckpt_every=2", "train.chunks=[1, 2]")
    plain, workers, mixed = tmp_path / "plain", tmp_path / "workers", tmp_path / "mixed"
    train(cfg, plain, progress=False)
    train(with_train(cfg, data_workers=2), workers, progress=False)
    train(with_train(cfg, steps=2, data_workers=3), mixed, progress=False)
    train(cfg, mixed, resume=True, progress=False)
    logs = [read_log(d) for d in (plain, workers, mixed)]
    assert sorted(logs[0]) == sorted(logs[1]) == sorted(logs[2]) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        assert logs[0][step]["loss"] == logs[1][step]["loss"] == logs[2][step]["loss"], step
    a, b, m = (load_file(str(checkpoints(d)[-1])) for d in (plain, workers, mixed))
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], m[k]), k


def test_randomness_drawn_ahead_gives_the_loss_of_the_generator():
    """The trainer draws a step's caption dropout, t and noise in its data workers (`draw_step`);
    the loss from those draws is the loss drawn from the generator itself, bit for bit, also for a
    data-parallel process's rows (drawn for the whole batch, then sliced)."""
    cfg = tiny_cfg("train.caption_dropout=0.5")
    model = _perturb(build_model(cfg))
    video, captions, _ = make_batch(0, 0, 6, 6, cfg.data)
    with torch.no_grad():
        for rows in [(0, 6, 6), (2, 5, 6)]:
            lo, hi, _ = rows
            own, _ = training_loss(model, video[lo:hi], captions[lo:hi], cfg.train, step_generator(0, 7), rows)
            draws = draw_step(step_generator(0, 7), cfg.train, tuple(video.shape[1:]), rows)
            ahead, _ = training_loss(model, video[lo:hi], captions[lo:hi], cfg.train, draws, rows)
            assert torch.equal(own, ahead), rows
        whole = draw_step(step_generator(0, 7), cfg.train, tuple(video.shape[1:]), (0, 6, 6))
        part = draw_step(step_generator(0, 7), cfg.train, tuple(video.shape[1:]), (2, 5, 6))
        assert torch.equal(whole.noise[2:5], part.noise) and torch.equal(whole.t[2:5], part.t)
        assert whole.drop[2:5] == part.drop and any(whole.drop) and not all(whole.drop)  # dropout 0.5: both occur
        assert part.noise.untyped_storage().nbytes() == part.noise.nbytes  # not a view of the whole batch's noise
        wrong = StepDraws(whole.drop, whole.t, whole.noise[:, :, :4])
        with pytest.raises(ValueError, match="does not match the videos"):
            training_loss(model, video, captions, cfg.train, wrong)


def test_the_first_logged_loss_is_the_objective_at_the_step_seed(tmp_path):
    """Known answer for the trainer's data path (batches and noise drawn off the loop): the loss it
    logs for step 1 is `training_loss` of the initial model on batch 0 with `step_generator(seed, 0)`."""
    cfg = tiny_cfg("train.steps=1", "train.log_every=1", "train.chunks=[2]", "train.seed=5")
    model = build_model(cfg)
    F, K = cfg.model.chunk_frames, cfg.train.context_frames
    video, captions, _ = make_batch(5, 0, cfg.train.batch_size, 2 * (F - K) + K, cfg.data)
    expected, _ = training_loss(model, video, captions, cfg.train, step_generator(5, 0))
    train(cfg, tmp_path, progress=False)
    assert read_log(tmp_path)[1]["loss"] == expected.item()


def test_compile_blocks_compiles_every_repeated_block():
    from vin.training.trainer import compile_blocks

    cfg = tiny_cfg()
    model = build_model(cfg)
    keys = list(model.state_dict())
    n = compile_blocks(model)
    d, v, t = cfg.model.dit.depth, cfg.model.vin.processor_depth, cfg.model.text.depth
    assert n == d + v + t + (d if cfg.model.vin.inject == "cross" else 0)
    assert list(model.state_dict()) == keys
    assert all(b._compiled_call_impl is not None for b in model.dit.blocks)


def test_compile_on_the_cpu_without_a_compiler_says_so(monkeypatch):
    import vin.training.trainer as trainer

    monkeypatch.setattr(trainer.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C[+][+] compiler"):
        trainer.compile_blocks(build_model(tiny_cfg()), "cpu")


def test_resume_may_change_training_settings(tmp_path):
    cfg = tiny_cfg("train.steps=2")
    train(cfg, tmp_path, progress=False)
    stats = train(with_train(cfg, steps=3, lr=5e-4), tmp_path, resume=True, progress=False)
    assert stats["step"] == 3 and stats["lr"] == 5e-4
    assert sorted(read_log(tmp_path)) == [1, 2, 3]


@pytest.mark.parametrize("decay, decay_steps, min_ratio, expected", [
    # steps=100, warmup=10, lr=1: step index -> learning rate
    ("constant", 0, 0.0, {0: 0.1, 4: 0.5, 9: 1.0, 50: 1.0, 99: 1.0}),
    ("linear", 20, 0.0, {0: 0.1, 9: 1.0, 79: 1.0, 80: 1.0, 90: 0.5, 95: 0.25, 99: 0.05}),
    ("linear", 20, 0.1, {79: 1.0, 90: 0.55, 99: 0.1 + 0.9 * 0.05}),
    ("cosine", 0, 0.0, {9: 1.0, 10: 1.0, 55: 0.5, 99: 0.5 * (1 + math.cos(math.pi * 89 / 90))}),
    ("cosine", 40, 0.0, {59: 1.0, 60: 1.0, 80: 0.5}),
    ("linear", 1000, 0.0, {9: 1.0, 10: 1.0, 55: 0.5}),  # longer than the run: starts after the warm-up
])
def test_learning_rate_schedule_known_answers(decay, decay_steps, min_ratio, expected):
    tc = replace(load_config(XS_YAML).train, lr=1.0, steps=100, warmup_steps=10, lr_decay=decay,
                 decay_steps=decay_steps, lr_min_ratio=min_ratio)
    for step, lr in expected.items():
        assert learning_rate(tc, step) == pytest.approx(lr), (step, learning_rate(tc, step), lr)


def test_learning_rate_schedule_counts_from_a_warm_start():
    tc = replace(load_config(XS_YAML).train, lr=1.0, steps=1100, warmup_steps=10, lr_decay="cosine")
    assert learning_rate(tc, 1000, start=1000) == pytest.approx(0.1)  # a new warm-up
    assert learning_rate(tc, 1055, start=1000) == pytest.approx(0.5)  # cosine over 1010..1100


@pytest.mark.parametrize("bad", ["train.lr_decay=step", "train.decay_steps=-1", "train.lr_min_ratio=1.5",
                                 "train.decay_steps=500", "train.lr_min_ratio=0.1"])
def test_learning_rate_schedule_rejects_bad_settings(bad):
    """Includes decay settings that a constant schedule (the default) would silently ignore."""
    with pytest.raises(ValueError, match=bad.split("=")[0]):
        load_config(XS_YAML, ["train.lr_decay=constant", bad])


def test_saved_configs_with_unused_decay_settings_still_load():
    """Configs saved before the check (decay settings next to a constant schedule, where they had no
    effect) load, with the settings read as 0; the same config given by a user is an error."""
    from vin.config import config_from_json

    cfg = load_config(XS_YAML, ["train.lr_decay=linear", "train.decay_steps=500", "train.lr_min_ratio=0.1"])
    old = json.loads(cfg.to_json())
    old["train"]["lr_decay"] = "constant"
    loaded = config_from_json(json.dumps(old))
    assert (loaded.train.lr_decay, loaded.train.decay_steps, loaded.train.lr_min_ratio) == ("constant", 0, 0.0)
    assert config_from_json(cfg.to_json()) == cfg  # a used decay is kept
    with pytest.raises(ValueError, match="train.decay_steps=500 and train.lr_min_ratio=0.1 have no effect.*"
                                         "or train.decay_steps=0 and train.lr_min_ratio=0$"):
        load_config(XS_YAML, ["train.decay_steps=500", "train.lr_min_ratio=0.1"])


def test_resume_of_a_warm_started_run_keeps_its_schedule(tmp_path):
    """A warm-started run with a cosine decay, cut at step 4 and resumed with the same config, logs
    the same learning rates and losses as uninterrupted (the warm-start step is in the checkpoint)."""
    import shutil

    from vin.checkpoint import export_weights

    base = tiny_cfg("train.steps=2")
    train(base, tmp_path / "w", progress=False)
    weights = export_weights(checkpoints(tmp_path / "w")[-1], tmp_path / "w.safetensors")
    cfg = tiny_cfg("train.steps=8", "train.ckpt_every=2", "train.keep_checkpoints=10", "train.warmup_steps=2",
                   "train.lr_decay=cosine", f"train.init_from={weights}")
    train(cfg, tmp_path / "a", progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for ckpt in checkpoints(tmp_path / "b"):
        if ckpt.name > "step-0000004.safetensors":
            ckpt.unlink()
    train(with_train(cfg, init_from=""), tmp_path / "b", resume=True, progress=False)
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert sorted(log_a) == sorted(log_b) == list(range(3, 9))
    expected = [learning_rate(cfg.train, s - 1, start=2) for s in range(3, 9)]
    assert [log_a[s]["lr"] for s in range(3, 9)] == pytest.approx(expected)
    # warm-up over step indices 2-3, then cosine over 4..8
    assert expected[:3] == pytest.approx([0.0005, 0.001, 0.001])
    assert expected[-1] == pytest.approx(0.001 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    for s in range(3, 9):
        assert log_a[s]["lr"] == log_b[s]["lr"] and log_a[s]["loss"] == log_b[s]["loss"], s


def test_extending_a_decayed_run_warms_up_again(tmp_path, capsys):
    """Resumed past the end of its decay, a run does not jump from the decayed rate to the peak."""
    cfg = tiny_cfg("train.steps=6", "train.warmup_steps=2", "train.lr_decay=linear", "train.decay_steps=4")
    train(cfg, tmp_path, progress=False)
    assert read_log(tmp_path)[6]["lr"] == pytest.approx(0.001 * 0.25)  # index 5: 3/4 of the way down
    capsys.readouterr()
    train(with_train(cfg, steps=10), tmp_path, resume=True, progress=False)
    assert "warming up again" in capsys.readouterr().err
    log = read_log(tmp_path)
    # restarted at index 6: warm-up 1/2, 2/2, then the decay over what is left after it (indices 8, 9)
    assert [log[s]["lr"] for s in range(7, 11)] == pytest.approx([0.0005, 0.001, 0.001, 0.0005])
    # a resume inside the schedule (no jump up) keeps it
    train(with_train(cfg, steps=12), tmp_path, resume=True, progress=False)
    assert "warming up again" not in capsys.readouterr().err


def test_extending_a_decayed_run_without_lr_metadata_warms_up_again(tmp_path, capsys):
    """Checkpoints written before the `lr` metadata existed still hold the rate in their saved
    optimizer groups: extending such a decayed run warms up again too."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = tiny_cfg("train.steps=6", "train.warmup_steps=2", "train.lr_decay=linear", "train.decay_steps=4")
    train(cfg, tmp_path, progress=False)
    last = checkpoints(tmp_path)[-1]
    with safe_open(str(last), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    del meta["lr"]
    save_file(tensors, str(last), metadata=meta)
    capsys.readouterr()
    train(with_train(cfg, steps=10), tmp_path, resume=True, progress=False)
    assert "warming up again" in capsys.readouterr().err
    assert [read_log(tmp_path)[s]["lr"] for s in range(7, 11)] == pytest.approx([0.0005, 0.001, 0.001, 0.0005])


def test_saved_lr_known_answers():
    from vin.training.trainer import _saved_lr

    assert _saved_lr({"lr": "0.001"}, [{"lr": 5.0, "lr_mult": 1.0}]) == 0.001  # the metadata wins
    assert _saved_lr({}, [{"lr": 0.05, "lr_mult": 100.0}]) == pytest.approx(5e-4)  # the gate group's multiplier
    assert _saved_lr({}, [{"lr": 5e-4}]) == 5e-4  # before lr_mult existed
    assert _saved_lr({}, [{"lr": 5e-4, "lr_mult": 0}]) == 5e-4
    assert _saved_lr({}, []) is None and _saved_lr({}, [{}]) is None and _saved_lr({}, ["junk"]) is None
    assert _saved_lr({"lr": "nan?"}, []) is None


def test_refuses_existing_checkpoints_without_resume(tmp_path):
    cfg = tiny_cfg("train.steps=2")
    train(cfg, tmp_path, progress=False)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="already holds checkpoints") as err:
        train(with_train(cfg, steps=4), tmp_path, progress=False)
    assert "\n" not in str(err.value)
    assert snapshot(tmp_path) == before


def test_refuses_resume_without_checkpoints(tmp_path):
    cfg = tiny_cfg("train.steps=2")
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg, run, resume=True, progress=False)
    assert not run.exists()  # nothing created
    # a directory with files but no checkpoints is not resumable either
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg, run, resume=True, progress=False)
    assert snapshot(tmp_path) == before


def test_refuses_a_file_as_run_dir(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(NotADirectoryError, match="notes.txt"):
        train(tiny_cfg("train.steps=1"), path, progress=False)
    assert path.read_text() == "mine"


@pytest.mark.parametrize(
    "override, field",
    [("model.dit.depth=1", "model.dit.depth"), ("model.vin.enabled=false", "model.vin.enabled"),
     ("model.chunk_frames=6", "model.chunk_frames"), ("model.text.vocab_size=300", "model.text.vocab_size")],
)
def test_refuses_resume_with_other_model_config(tmp_path, override, field):
    cfg = tiny_cfg("train.steps=1")
    train(cfg, tmp_path, progress=False)
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match="different model config") as err:
        train(tiny_cfg("train.steps=2", override), tmp_path, resume=True, progress=False)
    assert field in str(err.value) and "\n" not in str(err.value)
    assert snapshot(tmp_path) == before


def test_keeps_newest_checkpoints(tmp_path):
    cfg = tiny_cfg("train.steps=5", "train.ckpt_every=1", "train.keep_checkpoints=2")
    train(cfg, tmp_path, progress=False)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-0000004.safetensors", "step-0000005.safetensors"]
    # nothing else in the run: no temporary files from the atomic writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "config.json", "log.jsonl"]
    assert all(CKPT_NAME.match(p.name) for p in (tmp_path / "checkpoints").iterdir())
    # the last step is always saved, even off the ckpt_every grid
    other = tmp_path / "other"
    train(tiny_cfg("train.steps=5", "train.ckpt_every=3"), other, progress=False)
    assert [p.name for p in checkpoints(other)] == ["step-0000003.safetensors", "step-0000005.safetensors"]


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    import vin.checkpoint as ck

    cfg = tiny_cfg("train.steps=2")
    train(cfg, tmp_path, progress=False)
    before = snapshot(tmp_path / "checkpoints")

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(ck, "save_file", broken_save)
    with pytest.raises(OSError, match="No space"):
        train(with_train(cfg, steps=4, ckpt_every=1), tmp_path, resume=True, progress=False)
    assert snapshot(tmp_path / "checkpoints") == before  # no temp file, no partial step-3
    monkeypatch.undo()
    stats = train(with_train(cfg, steps=4), tmp_path, resume=True, progress=False)  # still resumable
    assert stats["step"] == 4


def test_log_records(tmp_path):
    cfg = tiny_cfg("train.steps=5", "train.log_every=2")
    stats = train(cfg, tmp_path, progress=False)
    log = read_log(tmp_path)
    assert sorted(log) == [2, 4, 5]  # every log_every steps, and the last
    for record in log.values():
        assert {"step", "loss", "lr", "grad_norm", "samples_per_s", "wall_s"} <= set(record)
        assert record["loss"] > 0 and record["samples_per_s"] > 0
    assert stats == log[5]
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(cfg.to_json())


def test_nonfinite_loss_raises(tmp_path):
    cfg = tiny_cfg("train.steps=3", "train.lr=1.0e+30", "train.grad_clip=0", "train.ckpt_every=100")
    with pytest.raises(FloatingPointError, match="loss became"):
        train(cfg, tmp_path, progress=False)


def test_nonfinite_loss_raises_before_a_checkpoint_between_records(tmp_path):
    """The loss is read only when a record or checkpoint is due: a blow-up between records raises
    at the next checkpoint, naming the first bad step, and nothing non-finite is written."""
    cfg = tiny_cfg("train.steps=6", "train.lr=1.0e+30", "train.grad_clip=0", "train.log_every=100",
                   "train.ckpt_every=3", "train.warmup_steps=1")
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf|-inf) at step [12];"):
        train(cfg, tmp_path, progress=False)
    assert checkpoints(tmp_path) == [] and not (tmp_path / "log.jsonl").exists()


HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")


def test_training_loss_never_reads_a_tensor(monkeypatch):
    """With its draws made beforehand, the objective reads no tensor's value on the host (on a GPU
    each read waits for the device), not even for its statistics."""
    cfg = tiny_cfg()
    model = build_model(cfg)
    video, captions = batch(cfg)
    draws = draw_step(torch.Generator().manual_seed(0), cfg.train, tuple(video.shape[1:]), (0, 2, 2))
    reads = []

    def reader(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            reads.append(name)
            return original(self, *args, **kwargs)
        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, reader(name))
    loss, stats = training_loss(model, video, captions, cfg.train, draws)
    loss.backward()
    monkeypatch.undo()
    assert reads == []
    assert stats["loss"].item() == loss.item() and not stats["loss"].requires_grad
    assert stats["t_mean"].item() == draws.t.mean().item() and stats["chunks"] == 2.0


def test_training_reads_the_loss_only_when_it_logs(tmp_path, monkeypatch):
    """No step's loss is read on its own in the training loop (a host sync on a GPU every step):
    the records still hold the exact mean of the per-step losses."""
    import vin.training.trainer as trainer

    held = []  # every step's loss, kept alive so that no other tensor can take its memory
    real = trainer.training_loss

    def tagged(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        held.append(loss.detach())
        return loss, stats

    reads = []

    def reader(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if any(self.untyped_storage().data_ptr() == h.untyped_storage().data_ptr() for h in held):
                reads.append((name, len(held)))
            return original(self, *args, **kwargs)
        return read

    batches = []  # (step, how many losses) of each read of the losses on the device
    read_finite = trainer._read_finite

    def read_batch(losses, step):
        batches.append((step, len(losses)))
        return read_finite(losses, step)

    monkeypatch.setattr(trainer, "training_loss", tagged)
    monkeypatch.setattr(trainer, "_read_finite", read_batch)
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, reader(name))
    train(tiny_cfg("train.steps=6", "train.log_every=3", "train.ckpt_every=100"), tmp_path, progress=False)
    monkeypatch.undo()
    assert reads == [] and len(held) == 6 and batches == [(3, 3), (6, 3)]
    losses = [h.item() for h in held]
    log = read_log(tmp_path)
    assert sorted(log) == [3, 6]
    assert log[3]["loss"] == float(np.mean(losses[:3])) and log[6]["loss"] == float(np.mean(losses[3:]))


def test_long_log_intervals_read_the_losses_in_batches(tmp_path, monkeypatch):
    """Between records at most MAX_UNREAD losses wait on the device, each read once; the record
    still holds the mean of all of them."""
    import vin.training.trainer as trainer

    batches, read_finite = [], trainer._read_finite

    def read_batch(losses, step):
        batches.append((step, len(losses)))
        return read_finite(losses, step)

    monkeypatch.setattr(trainer, "MAX_UNREAD", 2)
    monkeypatch.setattr(trainer, "_read_finite", read_batch)
    train(tiny_cfg("train.steps=5", "train.log_every=100", "train.ckpt_every=100"), tmp_path / "a", progress=False)
    monkeypatch.undo()
    assert batches == [(2, 2), (4, 2), (5, 1)]
    train(tiny_cfg("train.steps=5", "train.log_every=5", "train.ckpt_every=100"), tmp_path / "b", progress=False)
    assert read_log(tmp_path / "a")[5]["loss"] == read_log(tmp_path / "b")[5]["loss"]


def test_update_ema_is_the_per_parameter_lerp():
    from vin.training.trainer import update_ema

    cfg = tiny_cfg()
    torch.manual_seed(0)
    model, ema = build_model(cfg), build_model(cfg)
    want = [e.detach() * 0.9 + p.detach() * 0.1 for e, p in zip(ema.parameters(), model.parameters())]
    looped = [e.detach().clone().lerp_(p.detach(), 0.1) for e, p in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, 0.9)
    for got, loop, ref in zip(ema.parameters(), looped, want):
        assert torch.equal(got, loop)
        torch.testing.assert_close(got, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("bf16", [False, True])
def test_training_steps_do_not_wait_for_the_gpu(tmp_path, monkeypatch, bf16):
    """Steps 2-4 of a run (after the first, which sets up the optimizer state and the kernels) under
    torch.cuda.set_sync_debug_mode("error"): a blocking copy or an explicit wait in the forward,
    backward, optimizer, EMA or the copies of the batch raises. That mode does not see a
    non-blocking copy from pageable memory (which may still wait), so the batches are checked to be
    pinned. The losses are read at step 4 (a record)."""
    import vin.training.trainer as trainer

    clamp, read_finite, batches, calls = trainer.clamp_gates, trainer._read_finite, trainer.training_batches, []
    pinned = []

    def checked_batches(*args, **kwargs):
        for index, video, captions, draws in batches(*args, **kwargs):
            pinned.append(video.is_pinned() and draws.t.is_pinned() and draws.noise.is_pinned())
            yield index, video, captions, draws

    def clamp_then_watch(model):
        clamp(model)
        calls.append(1)
        if len(calls) == 1:
            torch.cuda.set_sync_debug_mode("error")

    def read_unwatched(losses, step):
        torch.cuda.set_sync_debug_mode("default")
        return read_finite(losses, step)

    monkeypatch.setattr(trainer, "clamp_gates", clamp_then_watch)
    monkeypatch.setattr(trainer, "_read_finite", read_unwatched)
    monkeypatch.setattr(trainer, "training_batches", checked_batches)
    try:
        train(tiny_cfg("train.steps=4", "train.log_every=4", "train.ckpt_every=4", "train.chunks=[2, 3]",
                       f"train.autocast_bf16={str(bf16).lower()}"), tmp_path, device="cuda", progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(calls) == 4 and sorted(read_log(tmp_path)) == [4] and len(pinned) >= 4 and all(pinned)


def test_init_from_exported_weights_continues_from_its_step(tmp_path):
    """A warm start from exported (EMA-only) weights: the new run starts at the file's step with
    exactly those weights, trains on, and refuses a file of another model config."""
    from vin.checkpoint import export_weights, load_checkpoint
    from vin.training.trainer import build_model, checkpoints, train

    cfg = load_config(XS_YAML, ["train.steps=2", "train.batch_size=2", "train.chunks=[2]", "train.log_every=1"])
    train(cfg, tmp_path / "a", progress=False)
    exported = export_weights(checkpoints(tmp_path / "a")[-1], tmp_path / "w.safetensors")
    warm = replace(cfg, train=replace(cfg.train, steps=3, init_from=str(exported)))
    train(warm, tmp_path / "b", progress=False)
    logged = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert logged == [3]
    start = build_model(cfg)
    load_checkpoint(exported, start, weights="ema")
    after = build_model(cfg)
    load_checkpoint(checkpoints(tmp_path / "b")[-1], after, weights="model")
    moved = [not torch.equal(p, q) for p, q in zip(start.parameters(), after.parameters())]
    assert any(moved)  # one step of training from the warm start
    other = replace(warm, model=replace(warm.model, vin=replace(warm.model.vin, num_global=4)))
    with pytest.raises(CheckpointError, match="num_global"):
        train(other, tmp_path / "c", progress=False)


def test_mark_labels_take_the_first_free_line():
    """label_rows: a label goes on the first line whose last label ends (with the gap) before it
    starts; a long label keeps its line busy past later, shorter ones."""
    from vin.training.logplot import label_rows

    assert label_rows([]) == []
    assert label_rows([(0, 10), (20, 30), (40, 50)]) == [0, 0, 0]  # apart: all on the first line
    assert label_rows([(0, 100), (20, 30), (40, 50), (60, 70)]) == [0, 1, 1, 1]
    assert label_rows([(0, 100), (20, 60), (40, 50), (61, 70), (102, 110)]) == [0, 1, 2, 2, 0]
    assert label_rows([(0, 100), (20, 60), (40, 50), (61, 70), (101, 110)]) == [0, 1, 2, 2, 1]  # line 0 not yet free
    assert label_rows([(0, 10), (11, 20)]) == [0, 1]  # closer than the 2-unit gap
    assert label_rows([(0, 10), (12, 20)]) == [0, 0]


def test_loss_plot_with_marks(tmp_path):
    """plot_losses: one PNG for several runs; marks are drawn; labels must match the runs."""
    from PIL import Image

    from vin.training.logplot import plot_losses

    for name, scale in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": scale / s}) + "\n" for s in range(1, 40)))
    out = plot_losses([tmp_path / "a", tmp_path / "b"], tmp_path / "p" / "loss.png", labels=["A", "B"],
                      marks={20: "settings change"})
    assert out == tmp_path / "p" / "loss.png"
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
        marked = np.asarray(im.convert("RGB"))
    plain = plot_losses([tmp_path / "a", tmp_path / "b"], tmp_path / "p" / "plain.png", labels=["A", "B"])
    with Image.open(plain) as im:
        assert np.asarray(im.convert("RGB")).shape == marked.shape
        assert (np.asarray(im.convert("RGB")) != marked).any()  # the mark changed the picture
    with pytest.raises(ValueError, match="labels"):
        plot_losses([tmp_path / "a"], tmp_path / "q.png", labels=["A", "B"])
    assert not (tmp_path / "q.png").exists()


def _signal_at(monkeypatch, call: int, signum):
    """Make the trainer's `call`-th EMA update (the end of step `call`) send this process `signum`."""
    import os

    import vin.training.trainer as trainer

    calls, real_update = [], trainer.update_ema

    def update_and_signal(*args, **kwargs):
        calls.append(1)
        out = real_update(*args, **kwargs)
        if len(calls) == call:
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(trainer, "update_ema", update_and_signal)


def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_continues_exactly(tmp_path, monkeypatch):
    """SIGTERM at the end of step 2 (sent from inside the loop): the run ends after step 2 with a
    checkpoint (none is due there) and a log record marked stopped (none is due either: it holds
    the mean of steps 1-2); resumed to step 6 it ends bit-equal to a run that never stopped, with the
    same per-step losses. The previous handler is back afterwards."""
    import signal

    cfg = tiny_cfg("train.steps=6", "train.ckpt_every=100")
    a, b = tmp_path / "a", tmp_path / "b"
    train(cfg, a, progress=False)

    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        _signal_at(m, 2, signal.SIGTERM)
        stats = train(with_train(cfg, log_every=4), b, progress=False)
    assert signal.getsignal(signal.SIGTERM) is before
    assert stats["stopped_by"] == "SIGTERM" and stats["step"] == 2
    assert [p.name for p in checkpoints(b)] == ["step-0000002.safetensors"]
    log_a, log_b = read_log(a), read_log(b)
    assert sorted(log_b) == [2] and log_b[2]["stopped"] is True
    assert log_b[2]["loss"] == float(np.mean([log_a[1]["loss"], log_a[2]["loss"]]))

    stats_b = train(cfg, b, resume=True, progress=False)
    assert "stopped_by" not in stats_b and stats_b["step"] == 6
    log_b = read_log(b)
    assert sorted(log_b) == [2, 3, 4, 5, 6] and not any("stopped" in log_b[s] for s in (3, 4, 5, 6))
    assert all(log_a[s]["loss"] == log_b[s]["loss"] for s in (3, 4, 5, 6))
    final_a, final_b = load_file(str(checkpoints(a)[-1])), load_file(str(checkpoints(b)[-1]))
    assert final_a.keys() == final_b.keys()
    for k in final_a:
        assert torch.equal(final_a[k], final_b[k]), k


def test_a_signal_in_the_last_step_is_a_finished_run(tmp_path, monkeypatch):
    import signal

    with monkeypatch.context() as m:
        _signal_at(m, 2, signal.SIGTERM)
        stats = train(tiny_cfg("train.steps=2"), tmp_path, progress=False)
    assert "stopped_by" not in stats and stats["step"] == 2
    assert not any("stopped" in r for r in read_log(tmp_path).values())


def test_stop_request_takes_the_first_signal_and_a_second_ctrl_c_aborts():
    import os
    import signal

    from vin.training.stopping import StopRequest

    # Python's own Ctrl-C handler, also where the tests themselves run as a background job (`make
    # test &`), whose SIGINT the shell ignores
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with StopRequest() as stop:
                assert stop.signum == 0 and stop.name == ""
                os.kill(os.getpid(), signal.SIGTERM)
                assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM"
                os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
                assert stop.name == "SIGTERM"
                os.kill(os.getpid(), signal.SIGINT)  # a second signal that is Ctrl-C: abort now
                pytest.fail("the second SIGINT did not abort")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        # a signal the process ignores (SIGINT of a job started with `&`) stays ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# ------------------------------------------------------------------------------ vin bench --train

def _cli(argv, capsys):
    from vin.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


TINY_OVERRIDES = [f"--{o}" for o in TINY if not o.startswith("train.log")]


def test_bench_train_compares_eager_and_compiled_steps(tmp_path, capsys):
    out = tmp_path / "train-bench.json"
    rc, stdout, err = _cli(["bench", "--train", str(XS_YAML), "--steps", "2", "--threads", "1", "--quiet",
                            "--out", str(out), *TINY_OVERRIDES], capsys)
    assert rc == 0, err
    record = json.loads(out.read_text())["train"]
    eager, compiled = record["rows"]
    assert (eager["mode"], compiled["mode"]) == ("eager", "compile")
    assert record["steps"] == 2 and record["batch_size"] == 2 and record["chunks"] == [2]
    for row in (eager, compiled):
        assert len(row["step_s"]) == len(row["losses"]) == 2 and row["s_per_step"] > 0 and row["warmup_s"] > 0
        assert row["s_per_step"] == pytest.approx(sum(row["step_s"]) / 2)
        assert row["videos_per_s"] == pytest.approx(2 / row["s_per_step"])
    assert eager["speedup"] == 1.0 and eager["max_loss_rel_diff"] == 0.0
    assert compiled["speedup"] == pytest.approx(eager["s_per_step"] / compiled["s_per_step"])
    # the same model, batches and noise: the compiled steps compute the same losses
    assert compiled["max_loss_rel_diff"] < 1e-4
    assert eager["losses"][0] != eager["losses"][1]
    assert "| eager |" in stdout and "| compile |" in stdout and "1.00x" in stdout


@pytest.mark.parametrize("argv, words", [
    (["--train-modes", "eager"], ["--train-modes", "--train"]),
    (["--train", str(XS_YAML), "--strategies", "vin"], ["--train", "--strategies"]),
    (["--train", "nope.yaml"], ["nope.yaml"]),
    (["--train", str(XS_YAML), "--steps", "0"], ["--steps"]),
    (["--train", str(XS_YAML), "--train.bogus=1"], ["train.bogus"]),
    (["--train", str(XS_YAML), "--train-modes", "fast"], ["--train-modes", "fast"]),
])
def test_bench_train_bad_input(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = _cli(["bench", *argv, "--out", "x.json"], capsys)
    assert rc == 2 and stdout == ""
    (line,) = err.splitlines()
    assert line.startswith("vin: error: ") and all(w in line for w in words), line
    assert list(tmp_path.iterdir()) == []
