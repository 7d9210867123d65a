"""Tests for the `vin` command line: train -> generate -> files, help texts, and bad input that
must end in one `vin: error: ...` line with nothing on disk changed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vin.cli import main
from vin.data.video_io import read_video
from vin.sampling.chunking import chunk_layout

REPO = Path(__file__).resolve().parents[1]
XS_YAML = REPO / "configs" / "vin-xs.yaml"
# Velocity prediction: a 2-step model then predicts v ~ 0 and its "video" is the initial noise, so
# seeds and prompts visibly matter. (With prediction=data it would output the mean: a grey video.)
TRAIN_ARGS = ["--config", str(XS_YAML), "--train.steps=2", "--train.batch_size=2", "--train.chunks=[2]",
              "--model.prediction=velocity", "--quiet"]
GEN_ARGS = ["--steps", "2", "--frames", "20", "--scale", "2", "--quiet"]
CKPT = "run/checkpoints/step-0000002.safetensors"


def vin_env() -> dict[str, str]:
    # this checkout's code first, whatever is installed (a relative PYTHONPATH=src breaks in cwd)
    path = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=path)


def vin(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m vin ARGS` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "vin", *args], cwd=cwd, env=vin_env(), capture_output=True,
                          text=True, timeout=300)


def vin_inprocess(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: --help, usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root -> its sha256 ("dir" for folders)."""
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder holding `run/`: the XS model trained for 2 steps through `vin train` (in-process)."""
    root = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", *TRAIN_ARGS, "--out", "run"]) == 0
    finally:
        os.chdir(cwd)
    assert (root / CKPT).is_file()
    return root


@pytest.fixture
def ws(tmp_path, trained, monkeypatch) -> Path:
    """A working folder (also the cwd) with a trained run, corrupt checkpoints, a bad YAML and
    outputs that already exist."""
    shutil.copytree(trained / "run", tmp_path / "run")
    good = (tmp_path / CKPT).read_bytes()
    (tmp_path / "random.safetensors").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "bad.yaml").write_text("preset: VIN-XS/4\nmodel:\n  dit:\n    widht: 64\n")
    for name in ("existing.mp4", "existing.png", "existing.json", "existing.gif"):
        (tmp_path / name).write_bytes(f"an older {name}".encode())
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------- smoke


def test_smoke_train_then_generate(tmp_path):
    r = vin("train", *TRAIN_ARGS, "--out", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "trained to step 2" in r.stdout
    ckpt = tmp_path / CKPT
    assert ckpt.is_file()
    run_cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run_cfg["train"]["steps"] == 2 and run_cfg["name"] == "vin-xs"

    r = vin("generate", "--checkpoint", str(ckpt), *GEN_ARGS, "--overlap", "3", "--seed", "5",
            "--prompt", "a small red circle", "--out", "out/video.mp4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["video.json", "video.mp4", "video.png"]
    assert r.stdout.split() == [str(Path("out") / n) for n in ("video.mp4", "video.png", "video.json")]

    frames = read_video(out / "video.mp4")
    h, w = run_cfg["data"]["height"], run_cfg["data"]["width"]
    assert frames.shape == (20, 2 * h, 2 * w, 3)
    assert frames.std() > 0  # not a blank video
    with Image.open(out / "video.png") as im:
        assert im.format == "PNG" and im.width > 2 * w

    record = json.loads((out / "video.json").read_text())
    assert record["sample"]["frames"] == 20
    assert record["sample"]["overlap"] == 3
    assert record["sample"]["steps"] == 2
    assert record["sample"]["seed"] == 5
    assert record["sample"]["chunk_frames"] == run_cfg["model"]["chunk_frames"]  # resolved from the model
    assert record["prompts"] == ["a small red circle"]
    assert record["model_config"]["model"] == run_cfg["model"]
    assert record["layout"] == [list(w) for w in chunk_layout(20, run_cfg["model"]["chunk_frames"], 3)]
    assert Path(record["checkpoint"]) == ckpt


def test_gif_and_several_prompts(ws, capsys):
    prompts = ["a red circle", "a large blue square on a green background", "a diamond"]
    argv = ["generate", "--checkpoint", CKPT, *GEN_ARGS, "--out", "many/clip.gif"]
    for p in prompts:
        argv += ["--prompt", p]
    rc, out, err = vin_inprocess(argv, capsys)
    assert rc == 0, err
    names = sorted(p.name for p in (ws / "many").iterdir())
    assert names == sorted([f"clip-{i}.{ext}" for i in range(3) for ext in ("gif", "png")] + ["clip.json"])
    videos = [read_video(ws / "many" / f"clip-{i}.gif") for i in range(3)]
    for v in videos:
        assert v.shape == (20, 64, 64, 3)
    assert not np.array_equal(videos[0], videos[1])
    record = json.loads((ws / "many" / "clip.json").read_text())
    assert record["prompts"] == prompts


def test_no_strip(ws, capsys):
    rc, _, err = vin_inprocess(["generate", "--checkpoint", CKPT, *GEN_ARGS, "--no-strip", "--out", "o/v.gif"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (ws / "o").iterdir()) == ["v.gif", "v.json"]


def test_same_seed_same_video(ws, capsys):
    def run(seed, out):
        rc, _, err = vin_inprocess(["generate", "--checkpoint", CKPT, *GEN_ARGS, "--seed", str(seed),
                                    "--out", out], capsys)
        assert rc == 0, err
        return read_video(ws / out)

    a, b, c = run(7, "a.mp4"), run(7, "b.mp4"), run(8, "c.mp4")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (ws / "a.mp4").read_bytes() == (ws / "b.mp4").read_bytes()


def test_words_outside_the_training_captions_are_named(ws, capsys):
    rc, _, err = vin_inprocess(["generate", "--checkpoint", CKPT, *GEN_ARGS, "--prompt", "a red Cross on black",
                                "--out", "w.gif"], capsys)
    assert rc == 0, err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "'black', 'cross'" in warning[0] and "checkered" in warning[0]
    rc, _, err = vin_inprocess(["generate", "--checkpoint", CKPT, *GEN_ARGS, "--prompt", "a red circle on a blue "
                                "checkered background", "--out", "k.gif"], capsys)
    assert rc == 0 and "warning" not in err


def test_plot_with_marks(ws, capsys):
    rc, out, err = vin_inprocess(["plot", "run", "--out", "plots/loss.png", "--label", "xs", "--mark", "1=change"], capsys)
    assert rc == 0, err
    assert out.strip() == str(Path("plots/loss.png")) and (ws / "plots" / "loss.png").stat().st_size > 1000
    rc, _, err = vin_inprocess(["plot", "run", "--out", "bad.png", "--mark", "change"], capsys)
    assert rc == 2 and err.strip().startswith("vin: error:") and "STEP=LABEL" in err and len(err.strip().splitlines()) == 1
    assert not (ws / "bad.png").exists()


def test_export_then_generate(ws, capsys):
    rc, out, err = vin_inprocess(["export", CKPT, "--out", "w/exported.safetensors"], capsys)
    assert rc == 0, err
    exported = ws / "w" / "exported.safetensors"
    assert out.strip() == str(Path("w/exported.safetensors"))
    assert 0 < exported.stat().st_size < (ws / CKPT).stat().st_size
    rc, _, err = vin_inprocess(["generate", "--checkpoint", str(exported), *GEN_ARGS, "--out", "e.gif"], capsys)
    assert rc == 0, err
    rc, _, err = vin_inprocess(["generate", "--checkpoint", CKPT, *GEN_ARGS, "--out", "f.gif"], capsys)
    assert rc == 0, err
    assert np.array_equal(read_video(ws / "e.gif"), read_video(ws / "f.gif"))  # the EMA weights both times


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_stops_training_with_a_checkpoint_to_resume_from(tmp_path, workers):
    """`vin train` sent SIGTERM (a scheduler's time limit) exits 143 after the current step with a
    checkpoint of that step and says how to continue; `--resume` then continues from it. With
    data workers the signal goes to the whole process group, as a scheduler or Ctrl-C sends it:
    the workers must outlive the step in progress."""
    import signal
    import time

    args = [*TRAIN_ARGS, "--train.steps=100000", "--train.log_every=1", "--train.ckpt_every=100000", "--out", "run",
            f"--train.data_workers={workers}"]
    proc = subprocess.Popen([sys.executable, "-m", "vin", "train", *args], cwd=tmp_path, env=vin_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = tmp_path / "run" / "log.jsonl"
    try:
        deadline = time.monotonic() + 240
        while not (log.is_file() and log.read_text().strip()) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "trained to step" not in out
    saved = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert len(saved) == 1, saved
    step = int(saved[0].split("-")[1].split(".")[0])
    assert f"stopped by SIGTERM at step {step}" in err and "--resume" in err
    assert json.loads(log.read_text().splitlines()[-1])["step"] == step

    r = vin("train", *TRAIN_ARGS, f"--train.steps={step + 1}", "--out", "run", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"trained to step {step + 1}" in r.stdout


def test_resume_through_cli(ws, capsys):
    rc, out, err = vin_inprocess(["train", *TRAIN_ARGS, "--train.steps=3", "--out", "run", "--resume"], capsys)
    assert rc == 0, err
    assert "trained to step 3" in out
    assert (ws / "run/checkpoints/step-0000003.safetensors").is_file()


def test_resume_from_through_cli(ws, capsys):
    rc, out, err = vin_inprocess(["train", *TRAIN_ARGS, "--train.steps=3", "--out", "fork", "--resume-from", CKPT], capsys)
    assert rc == 0, err
    assert "trained to step 3" in out
    assert [p.name for p in (ws / "fork/checkpoints").iterdir()] == ["step-0000003.safetensors"]
    steps = [json.loads(line)["step"] for line in (ws / "fork/log.jsonl").read_text().splitlines()]
    assert steps == [2, 3]  # the source run's record of step 2, then the fork's


def test_resume_from_without_config_takes_the_checkpoints(ws, capsys):
    """No --config or --preset: the fork's config is the source run's (here VIN-XS with velocity
    prediction, not the defaults, which the checkpoint would refuse), changed by the overrides."""
    rc, out, err = vin_inprocess(["train", "--train.steps=3", "--train.lr=0.0007", "--quiet", "--out", "fork2",
                                  "--resume-from", CKPT], capsys)
    assert rc == 0, err
    got, src = (json.loads((ws / d / "config.json").read_text()) for d in ("fork2", "run"))
    assert got["model"] == src["model"] and got["model"]["prediction"] == "velocity"
    assert got["data"] == src["data"]
    assert {k: v for k, v in got["train"].items() if k not in ("steps", "lr")} == \
        {k: v for k, v in src["train"].items() if k not in ("steps", "lr")}
    assert (got["train"]["steps"], got["train"]["lr"]) == (3, 0.0007)
    assert "train.lr" in err  # the note that the fork differs from its source


def test_a_fork_goes_on_with_resume_and_its_own_config(ws, capsys, monkeypatch):
    """A fork continued with --resume and no --config takes its own config (its newest checkpoint's:
    VIN-XS with velocity prediction and the fork's lr, not the defaults, which the checkpoint would
    refuse), changed by the overrides; --resume-from again on it says to use --resume, and a
    stopped fork says so too."""
    rc, out, err = vin_inprocess(["train", "--train.steps=3", "--train.lr=0.0007", "--quiet", "--out", "fork",
                                  "--resume-from", CKPT], capsys)
    assert rc == 0, err
    rc, out, err = vin_inprocess(["train", "--train.steps=4", "--quiet", "--out", "fork", "--resume-from", CKPT], capsys)
    assert rc == 2 and "already a fork of" in err and "--resume in place of --resume-from" in err
    rc, out, err = vin_inprocess(["train", "--train.steps=4", "--quiet", "--out", "fork", "--resume"], capsys)
    assert rc == 0, err
    assert "trained to step 4" in out
    cfg = json.loads((ws / "fork/config.json").read_text())
    assert (cfg["model"]["prediction"], cfg["train"]["lr"], cfg["train"]["steps"]) == ("velocity", 0.0007, 4)
    assert [json.loads(line)["step"] for line in (ws / "fork/log.jsonl").read_text().splitlines()] == [2, 3, 4]

    import vin.training.trainer as trainer
    monkeypatch.setattr(trainer, "train", lambda *a, **k: {"stopped_by": "SIGTERM", "step": 3})
    rc, out, err = vin_inprocess(["train", "--train.steps=5", "--quiet", "--out", "fork3", "--resume-from", CKPT], capsys)
    assert rc == 128 + 15 and "continue with the same command and --resume in place of --resume-from" in err


# ----------------------------------------------------------------------------------------- help


def test_console_script_help():
    exe = Path(sys.executable).with_name("vin")
    if not exe.is_file():
        pytest.skip("the vin console script is not installed next to this Python")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for word in ("train", "generate", "export"):
        assert word in r.stdout


def test_python_m_vin_help(tmp_path):
    r = vin("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: vin" in r.stdout
    for word in ("train", "generate", "export"):
        assert word in r.stdout


@pytest.mark.parametrize(
    "command, options",
    [
        ("train", ["--config", "--preset", "--out", "--resume", "--device", "--section.key=value"]),
        ("generate", ["--checkpoint", "--prompt", "--frames", "--overlap", "--steps", "--seed", "--out",
                      "--fusion", "--cfg", "--no-global", "--chunk-frames"]),
        ("export", ["checkpoint", "--out"]),
    ],
)
def test_subcommand_help(command, options, capsys):
    rc, out, err = vin_inprocess([command, "--help"], capsys)
    assert rc == 0
    assert out.startswith(f"usage: vin {command}")
    for option in options:
        assert option in out, option


# ------------------------------------------------------------------------------------ bad input

GEN = ["generate", "--checkpoint", CKPT, *GEN_ARGS, "--out", "existing.mp4"]
TRAIN = ["train", *TRAIN_ARGS]

# (id, argv, words the one-line message must contain)
BAD_INPUT = [
    ("overlap_ge_chunk", GEN + ["--overlap", "8"], ["overlap (8)"]),
    ("overlap_gt_chunk", GEN + ["--overlap", "9"], ["overlap (9)"]),
    ("too_few_frames", GEN + ["--frames", "5"], ["5 frames"]),
    ("bad_layout_new_folder", GEN + ["--frames", "5", "--out", "fresh/video.mp4"], ["5 frames"]),
    ("bad_checkpoint_new_folder", ["generate", "--checkpoint", "random.safetensors", *GEN_ARGS, "--out", "fresh/v.gif"],
     ["random.safetensors"]),
    ("chunk_not_patch_multiple", GEN + ["--chunk-frames", "7", "--overlap", "2"], ["chunk_frames (7)"]),
    ("zero_steps", GEN + ["--steps", "0"], ["sample.steps"]),
    ("gif_into_existing", GEN + ["--overlap", "8", "--out", "existing.gif"], ["overlap"]),
    ("bad_suffix", GEN + ["--out", "video.avi"], ["video.avi"]),
    ("zero_scale", GEN + ["--scale", "0"], ["scale"]),
    ("missing_checkpoint", ["generate", "--checkpoint", "nope.safetensors", *GEN_ARGS, "--out", "existing.mp4"],
     ["nope.safetensors", "not found"]),
    ("random_checkpoint", ["generate", "--checkpoint", "random.safetensors", *GEN_ARGS, "--out", "existing.mp4"],
     ["random.safetensors"]),
    ("truncated_checkpoint", ["generate", "--checkpoint", "truncated.safetensors", *GEN_ARGS, "--out", "existing.mp4"],
     ["truncated.safetensors"]),
    ("config_as_checkpoint", ["generate", "--checkpoint", "run/config.json", *GEN_ARGS, "--out", "existing.mp4"],
     ["config.json"]),
    ("unknown_generate_option", GEN + ["--bogus"], ["--bogus"]),
    ("not_an_int", GEN + ["--frames", "abc"], ["--frames", "abc"]),
    ("bad_choice", GEN + ["--solver", "rk45"], ["--solver", "rk45"]),
    ("eta_without_ddim", GEN + ["--eta", "1"], ["eta", "ddim", "euler"]),
    ("eta_out_of_range", GEN + ["--solver", "ddim", "--eta", "-0.5"], ["eta", "-0.5"]),
    ("bad_device", GEN + ["--device", "nodevice"], ["nodevice"]),
    ("unknown_override", TRAIN + ["--train.foo=1", "--out", "new"], ["train.foo"]),
    ("unknown_nested_override", TRAIN + ["--model.dit.widht=3", "--out", "new"], ["model.dit.widht"]),
    ("wrong_type_override", TRAIN + ["--train.steps=many", "--out", "new"], ["train.steps"]),
    ("malformed_override", TRAIN + ["--train.steps", "3", "--out", "new"], ["section.key=value"]),
    ("invalid_value", TRAIN + ["--train.context_frames=8", "--out", "new"], ["context_frames"]),
    ("unknown_yaml_key", ["train", "--config", "bad.yaml", "--quiet", "--out", "new"], ["model.dit.widht"]),
    ("missing_config", ["train", "--config", "nope.yaml", "--quiet", "--out", "new"], ["nope.yaml"]),
    ("unknown_preset", ["train", "--preset", "VIN-XXL/4", "--quiet", "--out", "new"], ["VIN-XXL/4"]),
    ("existing_run_without_resume", TRAIN + ["--out", "run"], ["already holds checkpoints", "--resume"]),
    ("existing_run_without_resume_verbose", ["train", "--config", str(XS_YAML), "--out", "run"], ["--resume"]),
    ("resume_other_model", TRAIN + ["--train.steps=4", "--model.dit.depth=1", "--out", "run", "--resume"],
     ["model.dit.depth"]),
    ("resume_nothing", TRAIN + ["--out", "new", "--resume"], ["nothing to resume"]),
    ("resume_from_not_a_checkpoint", TRAIN + ["--out", "new", "--resume-from", "existing.json"], ["existing.json"]),
    ("resume_from_missing", TRAIN + ["--out", "new", "--resume-from", "nope.safetensors"], ["nope.safetensors"]),
    ("resume_from_into_a_run", TRAIN + ["--out", "run", "--resume-from", CKPT], ["already holds checkpoints"]),
    ("resume_from_and_resume", TRAIN + ["--out", "run", "--resume", "--resume-from", CKPT], ["--resume-from"]),
    ("run_dir_is_a_file", TRAIN + ["--out", "existing.json"], ["existing.json", "not a run directory"]),
    ("train_bad_device", TRAIN + ["--device", "cuda:99", "--out", "new"], ["cuda:99"]),
    ("export_missing", ["export", "nope.safetensors", "--out", "existing.json"], ["nope.safetensors"]),
    ("export_corrupt", ["export", "random.safetensors", "--out", "existing.json"], ["random.safetensors"]),
    ("export_no_out", ["export", CKPT], ["--out"]),
    ("no_command", [], ["COMMAND"]),
    ("unknown_command", ["fly"], ["fly"]),
]
SUBPROCESS_CASES = {"overlap_ge_chunk", "truncated_checkpoint", "not_an_int", "unknown_yaml_key",
                    "existing_run_without_resume_verbose", "bad_device"}


def _check_error(rc: int, out: str, err: str, words: list[str]):
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vin: error: ")
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert out == ""


@pytest.mark.parametrize("argv, words", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_in_process(ws, capsys, argv, words):
    before = snapshot(ws)
    rc, out, err = vin_inprocess(argv, capsys)
    _check_error(rc, out, err, words)
    assert snapshot(ws) == before  # nothing written, nothing overwritten, no folder created


@pytest.mark.parametrize("argv, words", [c[1:] for c in BAD_INPUT if c[0] in SUBPROCESS_CASES],
                         ids=[c[0] for c in BAD_INPUT if c[0] in SUBPROCESS_CASES])
def test_bad_input_subprocess(ws, argv, words):
    before = snapshot(ws)
    r = vin(*argv, cwd=ws)
    _check_error(r.returncode, r.stdout, r.stderr, words)
    assert snapshot(ws) == before


def test_failed_generate_keeps_existing_outputs(ws, capsys):
    # an output that exists is replaced only by a successful run
    before = {n: (ws / n).read_bytes() for n in ("existing.mp4", "existing.png", "existing.json")}
    rc, _, err = vin_inprocess(GEN + ["--frames", "3"], capsys)
    assert rc == 2 and err.startswith("vin: error:")
    assert {n: (ws / n).read_bytes() for n in before} == before
    rc, _, err = vin_inprocess(GEN, capsys)
    assert rc == 0, err
    assert all((ws / n).read_bytes() != data for n, data in before.items())
    assert read_video(ws / "existing.mp4").shape[0] == 20
