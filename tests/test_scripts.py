"""The scripts of docs/RESULTS.md (denoise_grid, the GPU scripts, overfit_probe, average_weights) on a tiny trained model."""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vin.checkpoint import export_weights
from vin.config import load_config
from vin.data.synthetic import make_batch
from vin.training.trainer import checkpoints, train

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "denoise_grid.py"
TINY = ["data.height=16", "data.width=16", "model.chunk_frames=4", "train.context_frames=2", "train.chunks=[2]",
        "train.batch_size=2", "train.log_every=1", "train.steps=1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("denoise")
    train(load_config(REPO / "configs" / "vin-xs.yaml", TINY), root / "run", progress=False)
    return export_weights(checkpoints(root / "run")[-1], root / "w.safetensors")


def _import_script(name: str):
    """A module of scripts/ (not a package), imported by path."""
    import importlib

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _load_script():
    return _import_script("denoise_grid")


def test_estimate_and_sample_from_almost_no_noise_give_the_data(weights):
    """At t = 1e-4 the noised video is the data, the x0 estimate x_t - t v moves it by at most
    t / 0.05 of the model's correction, and sampling from there takes two tiny steps."""
    from vin.checkpoint import checkpoint_config

    cfg = checkpoint_config(weights)
    video, captions, _ = make_batch(999, 0, 2, cfg.model.chunk_frames, cfg.data)
    noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
    estimates, samples = _load_script().model_row(str(weights), video, captions, noise, [1e-4], steps=25)
    assert len(estimates) == 1 and len(samples) == 2  # from t = 1e-4, and from t = 1
    assert (estimates[0] - video).abs().max() < 0.02
    assert (samples[0] - video).abs().max() < 0.02
    assert (samples[1] - video).abs().max() > 0.1  # generated from noise: not the data
    estimates, samples = _load_script().model_row(str(weights), video, captions, noise, [0.5, 1.0], steps=4)
    assert len(estimates) == 2 and len(samples) == 2  # t = 1 given: generation from noise is not drawn twice


def test_cli_writes_the_figure_and_rejects_a_missing_checkpoint(weights, tmp_path):
    out = tmp_path / "grid.png"
    ok = subprocess.run([sys.executable, str(SCRIPT), f"a={weights}", f"b={weights}", "--videos", "2", "--t", "0.5",
                         "--steps", "2", "--threads", "1", "--out", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    from PIL import Image
    assert Image.open(out).size[0] > 300
    bad = subprocess.run([sys.executable, str(SCRIPT), f"a={tmp_path / 'none.safetensors'}", "--out", str(tmp_path / "x.png")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "denoise_grid: error" in bad.stderr
    assert not (tmp_path / "x.png").exists()


GPU_SCRIPT = REPO / "scripts" / "gpu_train.sh"


@pytest.fixture(scope="module")
def ablation_weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ablation")
    train(load_config(REPO / "configs" / "vin-xs.yaml", TINY + ["model.vin.enabled=false"]), root / "run", progress=False)
    return export_weights(checkpoints(root / "run")[-1], root / "w.safetensors")


def _gpu_env(tmp_path: Path, vin: Path, ablation: Path, **extra: str) -> dict[str, str]:
    import os

    tiny = " ".join(f"--{o}" for o in TINY if not o.startswith(("train.steps", "train.log_every", "train.batch_size")))
    return dict(os.environ, OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"), DEVICE="cpu", BATCH="2",
                WORKERS="1", CKPT_EVERY="2", BF16="false", PYTHON=sys.executable, LIMIT_S="30",
                VIN_CONFIG=str(REPO / "configs" / "vin-xs.yaml"), ABL_CONFIG=str(REPO / "configs" / "vin-xs.yaml"),
                VIN_INIT=str(vin), ABL_INIT=str(ablation), EXTRA_ARGS=tiny + " --train.threads=1",
                ABL_ARGS="--model.vin.enabled=false", OMP_NUM_THREADS="1") | extra


def test_gpu_script_trains_both_models_and_exports_them_at_one_step(weights, ablation_weights, tmp_path):
    """scripts/gpu_train.sh, run on the CPU with VIN-XS: the device check passes, both runs train
    (here to a step cap, MAX_STEPS), and both are exported at the same step, one they both saved."""
    from vin.checkpoint import checkpoint_config, load_checkpoint
    from vin.training.trainer import build_model

    # a step cap ends both runs long before the time limit, however loaded the machine is
    start_step = load_checkpoint(weights, build_model(checkpoint_config(weights)), weights="ema")
    assert start_step == load_checkpoint(ablation_weights, build_model(checkpoint_config(ablation_weights)), weights="ema")
    env = _gpu_env(tmp_path, weights, ablation_weights, LIMIT_S="240", MAX_STEPS=str(start_step + 4))
    r = subprocess.run(["bash", str(GPU_SCRIPT)], env=env, capture_output=True, text=True, timeout=420)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["noglobal.jsonl", "noglobal.safetensors", "report.txt",
                                                     "vin.jsonl", "vin.safetensors"]
    report = (out / "report.txt").read_text()
    assert "prediction, max |cpu - cpu| = 0.00e+00" in report and "data workers (1, pinned memory False): the same" in report
    exported = int(report.strip().splitlines()[-1].split()[-1])
    assert exported == start_step + 4
    saved = []
    for name, has_interface, init in (("vin", True, weights), ("noglobal", False, ablation_weights)):
        cfg = checkpoint_config(out / f"{name}.safetensors")
        assert cfg.model.vin.enabled is has_interface and cfg.train.batch_size == 2 and cfg.train.lr == 1e-3
        model, start = build_model(cfg), build_model(cfg)
        assert load_checkpoint(out / f"{name}.safetensors", model, weights="ema") == exported
        load_checkpoint(init, start, weights="ema")
        assert not torch.equal(model.dit.x_embed.weight, start.dit.x_embed.weight)  # it trained
        saved.append({int(p.stem.split("-")[1]) for p in checkpoints(tmp_path / "runs" / name)})
    assert exported == max(saved[0] & saved[1])


def test_gpu_script_stops_when_the_device_disagrees_and_refuses_a_used_runs_folder(weights, ablation_weights, tmp_path):
    env = _gpu_env(tmp_path, weights, ablation_weights, DEVICE="meta")  # a "device" with no values
    r = subprocess.run(["bash", str(GPU_SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3 and "device check failed" in r.stderr
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "out").glob("*.safetensors"))
    (tmp_path / "runs").mkdir()
    r = subprocess.run(["bash", str(GPU_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "exists" in r.stderr


def _device_check():
    return _import_script("device_check")


def test_device_check_agree_known_answers():
    agree = _device_check().agree
    a = torch.tensor([[0.5, -4.0], [2.0, 0.0]])
    assert agree(a, a + 0.03, 0.01) == pytest.approx((0.03, 4.0, True))  # 0.03 <= 0.01 * 4
    assert agree(a, a + 0.05, 0.01)[2] is False
    assert agree(a / 10, a / 10 + 0.009, 0.01) == pytest.approx((0.009, 1.0, True))  # the scale is at least 1


def test_device_check_passes_on_the_cpu_and_names_what_differs(weights, ablation_weights, monkeypatch, capsys):
    dc = _device_check()
    assert dc.check([str(weights), str(ablation_weights)], "cpu", bf16=True, workers=2, tol=1e-2) == []
    out = capsys.readouterr().out
    assert sum(line.endswith(" ok") for line in out.splitlines()) == 6  # 2 x (prediction, float32 step, bf16 step)
    assert "the same batches" in out
    real = dc.predict
    monkeypatch.setattr(dc, "predict", lambda path, device: real(path, "cpu") + (0.5 if device == "other" else 0.0))
    monkeypatch.setattr(dc, "train_step", lambda path, device, bf16: (1.0, device != "other" or not bf16))
    failures = dc.check([str(weights)], "other", bf16=True, workers=0, tol=1e-2)
    assert len(failures) == 2 and "prediction differs" in failures[0] and "bf16" in failures[1]


def test_device_check_refuses_start_files_at_different_steps(weights, tmp_path):
    later = tmp_path / "later"
    cfg = load_config(REPO / "configs" / "vin-xs.yaml", TINY + ["train.steps=2", "train.init_from=" + str(weights)])
    train(cfg, later, progress=False)
    failures = _device_check().check([str(weights), str(checkpoints(later)[-1])], "cpu", bf16=False, workers=0, tol=1e-2)
    assert len(failures) == 1 and "different steps" in failures[0]


def test_overfit_probe_fits_its_fixed_videos_and_rejects_a_missing_checkpoint(weights, tmp_path, capsys):
    """Fine-tuning on the probe's fixed videos lowers the x0 error of exactly those videos at every t;
    the figure is written; a missing checkpoint is one line, exit 2, nothing written."""
    probe = _import_script("overfit_probe")
    out = tmp_path / "of.png"
    assert probe.main([str(weights), "--steps", "6", "--every", "6", "--videos", "2", "--lr", "1e-3",
                       "--t", "0.5", "0.85", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    after = [float(c.split(": ")[1]) for c in lines[0].split("videos ")[1].split(";")[0].split(", ")]
    before = [float(c.split(": ")[1]) for c in lines[1].split("before: ")[1].split(", ")]
    assert len(after) == len(before) == 2 and all(a < b for a, b in zip(after, before)), (before, after)
    from PIL import Image
    assert Image.open(out).size[0] > 300
    assert probe.main([str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "overfit_probe: error" in err and not (tmp_path / "x.png").exists()


def test_the_gpu_scripts_need_no_video_io(weights, tmp_path):
    """The device's Python has no PyAV (nor OpenCV, PySceneDetect): the device check, `vin train` and
    `vin export` must run without them."""
    import os

    blocked = "import sys\nfor m in ('av', 'scenedetect', 'cv2'):\n    sys.modules[m] = None\n"
    (tmp_path / "sitecustomize.py").write_text(blocked)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO / "src"), str(REPO / "scripts")]))
    code = "import device_check, vin.training.trainer\nfrom vin.cli import main\nsys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", "import sys\n" + code, "export", str(weights), "--out", str(tmp_path / "e.safetensors")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", "import av"], env=env, capture_output=True, text=True)
    assert r.returncode != 0  # the block works


def test_average_weights_is_the_mean_and_refuses_another_model(weights, tmp_path, capsys, monkeypatch):
    """scripts/average_weights.py: two files whose weights differ by a known offset average to the
    midpoint, parameter by parameter; a file of another model is refused in one line, nothing written."""
    from vin.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
    from vin.training.trainer import build_model

    cfg = checkpoint_config(weights)
    a = build_model(cfg)
    load_checkpoint(weights, a, weights="ema")
    b = build_model(cfg)
    b.load_state_dict({k: v + 0.5 + 0.01 * torch.arange(v.numel()).reshape(v.shape) for k, v in a.state_dict().items()})
    other = save_checkpoint(tmp_path / "b.safetensors", cfg, b, step=7)
    script = _import_script("average_weights")
    out = tmp_path / "avg.safetensors"
    monkeypatch.setattr(sys, "argv", ["average_weights.py", str(weights), str(other), "--out", str(out)])
    assert script.main() == 0
    got = build_model(cfg)
    assert load_checkpoint(out, got, weights="ema") == 7  # the last input's step
    for k, v in got.state_dict().items():
        torch.testing.assert_close(v, (a.state_dict()[k] + b.state_dict()[k]) / 2, rtol=0, atol=1e-6)

    # training checkpoints hold both copies: --weights picks which one is averaged
    first = save_checkpoint(tmp_path / "t1.safetensors", cfg, a, ema=b, step=1)
    second = save_checkpoint(tmp_path / "t2.safetensors", cfg, a, ema=copy.deepcopy(a), step=2)
    for which, want in (("ema", lambda k: (a.state_dict()[k] + b.state_dict()[k]) / 2), ("model", lambda k: a.state_dict()[k])):
        monkeypatch.setattr(sys, "argv", ["average_weights.py", str(first), str(second), "--out", str(out), "--weights", which])
        assert script.main() == 0
        assert load_checkpoint(out, got, weights="ema") == 2
        for k, v in got.state_dict().items():
            torch.testing.assert_close(v, want(k), rtol=0, atol=1e-6)

    shallower = load_config(REPO / "configs" / "vin-xs.yaml", TINY + ["model.dit.depth=1"])
    foreign = save_checkpoint(tmp_path / "shallower.safetensors", shallower, build_model(shallower))
    bad = tmp_path / "bad.safetensors"
    monkeypatch.setattr(sys, "argv", ["average_weights.py", str(weights), str(foreign), "--out", str(bad)])
    capsys.readouterr()
    assert script.main() == 2
    err = capsys.readouterr().err.strip()
    assert "another model" in err and len(err.splitlines()) == 1 and not bad.exists()


def test_loss_by_noise_sprite_mask_covers_exactly_where_the_sprites_change_the_frame(weights):
    """The mask is the pixels that differ from the background rendered alone: off it the background
    yardstick is exact, so its whole-frame error times all pixels equals its sprite error times the
    sprite pixels; a mask of ones is the whole-frame error."""
    from vin.checkpoint import checkpoint_config, load_checkpoint
    from vin.training.trainer import build_model

    lbn = _import_script("loss_by_noise")
    cfg = checkpoint_config(weights)
    video, captions, specs = make_batch(999, 0, 4, 10, cfg.data)
    mask = lbn.sprite_mask(video, specs, cfg.data)
    assert mask.shape == video.shape and 0 < mask.float().mean() < 0.5
    bg = lbn.backgrounds(specs, cfg.data, video.shape[2])
    assert torch.equal(video[~mask], bg[~mask]) and (video[mask] != bg[mask]).any()
    whole, sprites = (dict(lbn.reference_errors(cfg, 10, 1, 999, sprites=s)) for s in (False, True))
    key = "the video's background, no sprites (any t)"
    video8, _, specs8 = make_batch(999, 0, 8, 10, cfg.data)  # the batch reference_errors reads
    m8 = lbn.sprite_mask(video8, specs8, cfg.data)
    assert whole[key] * m8.numel() == pytest.approx(sprites[key] * m8.sum().item(), rel=1e-4)
    assert sprites[key] > whole[key] > 0

    model = build_model(cfg)
    load_checkpoint(weights, model, weights="ema")
    model.eval()
    noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = lbn.x0_error(model, video, captions, 0.6, noise, cfg.train.context_frames, True)
        ones = lbn.x0_error(model, video, captions, 0.6, noise, cfg.train.context_frames, True, torch.ones_like(video, dtype=torch.bool))
        on_sprites = lbn.x0_error(model, video, captions, 0.6, noise, cfg.train.context_frames, True, mask)
    assert ones == pytest.approx(plain, rel=1e-5)
    assert on_sprites != pytest.approx(plain, rel=1e-3)


def test_learning_curve_measures_each_checkpoint_once_and_agrees_with_loss_by_noise(tmp_path):
    """The run's checkpoints at multiples of --every and its last one get a row (step, wall time of
    the log, sprite error); a second call reads them all from the cache; the error of a checkpoint is
    the one `loss_by_noise.py --sprites --chunks 1` prints for its exported EMA weights; bad input is
    a one-line error, exit 2, and leaves the cache and the figure as they were."""
    from vin.training.logplot import read_log

    run = tmp_path / "run"
    train(load_config(REPO / "configs" / "vin-xs.yaml", TINY[:-1] + ["train.steps=3", "train.ckpt_every=1"]), run, progress=False)
    cache, png = tmp_path / "c.json", tmp_path / "curve.png"
    args = [f"xs={run}", "--every", "2", "--t", "0.5", "0.7", "--batches", "1", "--cache", str(cache), "--out", str(png)]
    cmd = [sys.executable, str(REPO / "scripts" / "learning_curve.py")]
    first = subprocess.run(cmd + args, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    rows = [line.split("|") for line in first.stdout.splitlines() if line.startswith("| xs |")]
    assert [int(r[2]) for r in rows] == [2, 3]  # step 1 is not a multiple of 2; step 3 is the last
    assert png.stat().st_size > 10_000 and len(first.stderr.splitlines()) == 2  # one line per measured checkpoint
    again = subprocess.run(cmd + args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stderr == "" and again.stdout == first.stdout  # from the cache

    lc = _import_script("learning_curve")
    curves, _ = lc.run(argparse.Namespace(runs=[f"xs={run}"], point=[], t=[0.5, 0.7], every=2, batches=1, chunks=1,
                                          threads=1, cache=cache, out=png))
    walls = {int(r["step"]): r["wall_s"] for r in read_log(run)}
    assert [(step, wall) for step, wall, _ in curves["xs"]] == [(2, walls[2]), (3, walls[3])]
    from PIL import Image

    one = lc.plot(curves, {}, [0.5, 0.7], tmp_path / "step.png", panels=("step",))
    assert Image.open(one).size[0] < Image.open(png).size[0]  # --panels step: the step axis alone

    exported = export_weights(checkpoints(run)[1], tmp_path / "w2.safetensors")
    lbn = subprocess.run([sys.executable, str(REPO / "scripts" / "loss_by_noise.py"), f"w={exported}", "--sprites",
                          "--chunks", "1", "--batches", "1", "--t", "0.5", "0.7"], capture_output=True, text=True, timeout=300)
    assert lbn.returncode == 0, lbn.stderr
    expected = next(line for line in lbn.stdout.splitlines() if line.startswith("| w: caption |")).split("|")[2:4]
    assert [c.strip() for c in rows[0][4:6]] == [c.strip() for c in expected]

    before = (cache.read_bytes(), png.read_bytes())
    for bad in ([f"xs={tmp_path / 'none'}"], [f"xs={run}", "--every", "0"], [f"xs={run}", "--point", f"p={run}"]):
        r = subprocess.run(cmd + bad + ["--cache", str(cache), "--out", str(png)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "learning_curve: error" in r.stderr, r.stderr
    cache.write_text("{not json")
    r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a learning-curve cache" in r.stderr and r.stderr.strip().count("\n") == 0
    assert cache.read_text() == "{not json" and png.read_bytes() == before[1]
