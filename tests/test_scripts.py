"""The figure script of docs/RESULTS.md's phase-7 section, scripts/denoise_grid.py, on a tiny trained model."""

from __future__ import annotations

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


def _load_script():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import denoise_grid
    finally:
        sys.path.pop(0)
    return denoise_grid


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
