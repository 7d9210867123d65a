"""Known answers for the offline long-video metrics (`vin.eval`) and `vin evaluate`.

Small frames (32x32 / 64x64, <= 40 frames) so the file runs in seconds on one thread."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest

from vin.cli import main
from vin.config import DataConfig
from vin.data.synthetic import (PALETTE_NAMES, PALETTE_RGB, SpriteSpec, VideoSpec, make_caption, nearest_palette, render,
                                sample_spec)
from vin.data.video_io import read_video, upscale, write_video
from vin.eval import metrics as M
from vin.eval.evaluate import METRIC_NAMES, evaluate_frames
from vin.eval.resolution import detect_upscale, downscale
from vin.eval.features import colour_histogram, get_feature, hist_similarity, ssim
from vin.eval.identity import (caption_adherence, caption_colours, caption_texture, check_texture_palette,
                               identity_consistency)

CFG = DataConfig()  # 32x32, the sprite world's native size
FEATURES = ("pixels", "ssim", "hist")
FLOWS = ("farneback", "dis")


def periodic_texture(n: int, seed: int = 0) -> np.ndarray:
    """(n, n, 3) uint8 smooth random texture that tiles (low-passed in Fourier space), so np.roll
    is an exact translation without a seam."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(n)
    lowpass = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * 0.08**2))
    out = np.stack([np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * lowpass).real for _ in range(3)], -1)
    out = (out - out.min()) / (out.max() - out.min()) * 255
    return np.rint(out).astype(np.uint8)


def shifted(n: int, frames: int, speed: int) -> np.ndarray:
    base = periodic_texture(n)
    return np.stack([np.roll(base, speed * t, axis=1) for t in range(frames)])


def sprite_video(seed: int, frames: int = 40) -> np.ndarray:
    return render(sample_spec(np.random.default_rng(seed), CFG), CFG, 0, frames)


def two_sprites(first_colour: int = 0) -> VideoSpec:
    """Blue striped background, a large square and a small circle that never touch (rows 9 and 23)."""
    return VideoSpec(2, "stripes", (SpriteSpec(first_colour, "square", "large", 9.0, 9.0, 0.3, 0.0),
                                    SpriteSpec(3, "circle", "small", 23.0, 23.0, -0.3, 0.0)))


# ---- identical frames ---------------------------------------------------------------------------

def test_identical_frames_are_perfect():
    frames = np.stack([periodic_texture(32)] * 12)
    assert M.temporal_flickering(frames) == 1.0
    for flow in FLOWS:
        assert M.motion_smoothness(frames, flow) == 1.0
        stats = M.flow_stats(frames, flow)
        assert stats["mean_flow_magnitude"] == 0.0 and stats["dynamic_degree_proxy"] == 0
        assert M.warp_error(frames, flow)["warp_error"] == 0.0
        assert M.mawe(frames, flow)["mawe"] is None  # 0 / 0: no motion to normalise by
    assert M.scene_cuts(frames) == []
    for feature in FEATURES:
        assert M.subject_consistency(frames, feature) == 1.0
        assert M.background_consistency(frames, feature) == 1.0
        d = M.drift(frames, feature)
        assert d["last"] == 1.0 and d["curve"] == [1.0] * 12 and d["slope_per_frame"] == pytest.approx(0, abs=1e-12)
    seam = M.seam_score(frames, [4, 8])
    assert seam["seam_score"] == 1.0 and seam["boundary_diff"] == 0.0 and seam["inside_diff"] == 0.0
    assert M.seam_score(frames, None)["seam_score"] is None
    assert M.temporal_flickering(frames[:1]) is None and M.motion_smoothness(frames[:2]) is None


# ---- a hard cut at a chunk boundary ---------------------------------------------------------------

def test_hard_cut_at_a_chunk_boundary():
    a, b = sprite_video(3), sprite_video(5)
    cut = np.concatenate([a[:24], b[24:]])
    bounds = [8, 16, 24, 32]
    assert M.scene_cuts(cut) == [24]
    assert M.scene_cuts(a) == []
    seam = M.seam_score(cut, bounds)
    assert seam["seam_score"] > 5
    assert M.seam_score(a, bounds)["seam_score"] == pytest.approx(1.0, abs=0.3)
    for feature in FEATURES:
        assert M.subject_consistency(cut, feature) < M.subject_consistency(a, feature)
        assert M.background_consistency(cut, feature) < M.background_consistency(a, feature) - 0.05
        assert M.drift(cut, feature)["last"] < M.drift(a, feature)["last"]
    assert M.drift(cut, "hist")["slope_per_frame"] < M.drift(a, "hist")["slope_per_frame"]
    with pytest.raises(ValueError, match="outside"):
        M.seam_score(cut, [0, 40])


# ---- a constant shift ---------------------------------------------------------------------------

@pytest.mark.parametrize("flow", FLOWS)
def test_constant_shift_flow_and_warp(flow):
    speed, n = 2, 64
    frames = shifted(n, 10, speed)
    stats = M.flow_stats(frames, flow)
    assert stats["flow_method"] == flow
    assert stats["mean_flow_magnitude"] == pytest.approx(speed, rel=0.05)
    assert stats["mean_flow_magnitude_norm"] == pytest.approx(speed / np.hypot(n, n), rel=0.05)
    # VBench's threshold at 64 px is 6 * 64 / 256 = 1.5 px; every pair moves 2 px
    assert stats["dynamic_threshold"] == 1.5 and stats["dynamic_degree_proxy"] == 1
    assert stats["dynamic_pairs_fraction"] == 1.0
    w = M.warp_error(frames, flow)
    assert w["flow_method"] == flow and w["warp_error"] < 0.05 * w["no_warp_error"]
    m = M.mawe(frames, flow)
    assert m["c"] == 9.5 and m["mawe"] == pytest.approx(m["warp_error"] / (9.5 * m["mean_flow_magnitude"]))
    slow = shifted(n, 10, 1)  # 1 px/frame is under the 1.5 px threshold: static by VBench's rule
    assert M.flow_stats(slow, flow)["dynamic_degree_proxy"] == 0


def test_smooth_motion_beats_shuffled_frames():
    frames = sprite_video(7, 32)
    shuffled = frames[np.random.default_rng(0).permutation(len(frames))]
    for flow in FLOWS:
        assert M.motion_smoothness(frames, flow) > M.motion_smoothness(shuffled, flow) + 0.005
    linear = shifted(32, 9, 2)
    assert M.motion_smoothness(linear) > 0.98  # the interpolator rebuilds a translation


# ---- features -----------------------------------------------------------------------------------

def test_ssim_identity_and_symmetry():
    a, b = periodic_texture(32, 1), periodic_texture(32, 2)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    assert 0.0 <= ssim(a, b) < 0.9
    noisy = np.clip(a.astype(int) + np.random.default_rng(0).integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) < ssim(a, noisy) < 1.0


def test_histogram_intersection_known_value():
    red, blue, green = (PALETTE_RGB[PALETTE_NAMES.index(c)] for c in ("red", "blue", "green"))
    a = np.empty((8, 8, 3), np.uint8)
    a[:, :2], a[:, 2:] = red, blue  # 1/4 red, 3/4 blue
    b = np.empty((8, 8, 3), np.uint8)
    b[:4], b[4:] = red, green  # 1/2 red, 1/2 green
    assert hist_similarity(a, b) == 0.25  # min(1/4, 1/2) red + min(3/4, 0) blue + min(0, 1/2) green
    assert hist_similarity(a, a) == 1.0
    assert colour_histogram(a).sum() == pytest.approx(1.0)
    only_red = np.zeros((8, 8), bool)
    only_red[:, :2] = True  # masks: a's red pixels vs b's red half
    b_red = np.zeros((8, 8), bool)
    b_red[:4] = True
    assert hist_similarity(a, b, only_red, b_red) == 1.0


@pytest.mark.parametrize("kind", ["dino", "clip"])
def test_deep_features_fail_clearly_without_a_path(kind, tmp_path):
    with pytest.raises(ValueError, match=f"feature '{kind}' needs .*{kind}:PATH"):
        get_feature(kind)
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match=f"feature '{kind}' needs .* at {missing}: not found") as e:
        get_feature(f"{kind}:{missing}")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown feature"):
        get_feature("lpips")


def test_clip_without_open_clip_names_the_package(tmp_path, monkeypatch):
    ckpt = tmp_path / "clip.bin"
    ckpt.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import fails whether or not it is installed
    with pytest.raises(ValueError, match="needs the package open_clip_torch"):
        get_feature(f"clip:{ckpt}")


def test_dino_feature_runs_a_local_exported_encoder(tmp_path):
    torch = pytest.importorskip("torch")

    class MeanColour(torch.nn.Module):  # a stand-in "encoder": the mean of each channel
        def forward(self, x):
            return x.mean(dim=(2, 3)) + 3.0  # offset keeps the embedding away from 0

    dim = torch.export.Dim("n", min=1, max=64)
    program = torch.export.export(MeanColour(), (torch.zeros(2, 3, 224, 224),), dynamic_shapes=({0: dim},))
    path = tmp_path / "enc.pt2"
    torch.export.save(program, str(path))
    feat = get_feature(f"dino:{path}")
    frames = np.stack([periodic_texture(32)] * 4)
    assert not feat.uses_masks
    assert M.subject_consistency(frames, feat) == pytest.approx(1.0)
    assert M.background_consistency(frames, feat) == pytest.approx(1.0)


# ---- identity in the sprite world ---------------------------------------------------------------

def test_texture_pixels_map_to_their_palette_colour():
    assert check_texture_palette()


def test_colour_swap_in_one_chunk():
    t, chunk = 32, 8
    frames = render(two_sprites(), CFG, 0, t)
    frames[16:24] = render(two_sprites(first_colour=1), CFG, 16, chunk)  # chunk 2: the red square turns green
    for chunks in ([8, 16, 24], [(0, 8), (8, 16), (16, 24), (24, 32)]):
        r = identity_consistency(frames, chunks)
        assert r["background"] == "blue" and r["sprites"] == ["red", "yellow"]
        assert r["frames_background"] == 1.0
        assert r["frames_sprites"] == r["frames_both"] == (t - chunk) / t
        assert r["chunks_both"] == r["chunks_sprites"] == 3 / 4 and r["chunks_background"] == 1.0
        assert r["chunk_majorities"][2] == {"background": "blue", "sprites": ["green", "yellow"]}
    # upscaled 4x (nearest neighbour, 4-px rims): the upscale is undone first
    big = identity_consistency(upscale(frames, 4), [8, 16, 24])
    assert big["frames_both"] == 0.75 and big["upscale_undone"] == 4
    # rendered natively at 64x64 (1-px rims, sprites 4x the area): min_area scales with the frame
    cfg64 = DataConfig(height=64, width=64)
    spec64 = VideoSpec(2, "checker", tuple(replace(s, x0=2 * s.x0, y0=2 * s.y0) for s in two_sprites().sprites))
    swapped64 = VideoSpec(2, "checker", (replace(spec64.sprites[0], colour=1), spec64.sprites[1]))
    frames64 = render(spec64, cfg64, 0, t)
    frames64[16:24] = render(swapped64, cfg64, 16, chunk)
    native = identity_consistency(frames64, [8, 16, 24])
    assert native["frames_both"] == 0.75 and native["chunks_both"] == 0.75 and native["min_area"] == 12
    # and through evaluate_frames
    metrics = evaluate_frames(frames, [8, 16, 24])["metrics"]
    assert metrics["identity_both"] == 0.75 and metrics["identity_chunks"] == 0.75


@pytest.mark.parametrize("caption, expected", [
    ("a large red circle and a small white square on a blue striped background", ("blue", ("red", "white"))),
    ("a circle and a square on a plain green background", ("green", ())),
    ("a yellow diamond and a magenta circle", (None, ("yellow", "magenta"))),
    ("a red circle on a striped background", (None, ("red",))),
    ("A Red circle ON a Cyan background", ("cyan", ("red",))),
    ("a red circle on blue", (None, ("red",))),
])
def test_caption_colours_known_answers(caption, expected):
    assert caption_colours(caption) == expected


@pytest.mark.parametrize("caption, expected", [
    ("a large red circle and a small white square on a blue striped background", "stripes"),
    ("a circle on a plain green background", "plain"),
    ("a square on an orange checkered background", "checker"),
    ("a circle on a green background", None),
    ("a red circle on a striped background", "stripes"),
    ("a red circle on striped", None),  # no "background": not a background phrase
    ("a yellow diamond and a magenta circle", None),
])
def test_caption_texture_known_answers(caption, expected):
    assert caption_texture(caption) == expected


def test_texture_of_every_rendered_frame():
    """The per-frame texture equals the rendered one for every frame of 150 sampled videos (any
    colour, sprites in front), and a video whose background turns checkered for one chunk keeps
    its texture in 3/4 of its frames."""
    for seed in range(150):
        spec = sample_spec(np.random.default_rng(seed), CFG)
        r = identity_consistency(render(spec, CFG, 0, 8), undo_upscale=False)
        assert r["texture"] == spec.texture and set(r["per_frame_texture"]) == {spec.texture}, seed
    frames = render(two_sprites(), CFG, 0, 32)
    frames[8:16] = render(replace(two_sprites(), texture="checker"), CFG, 8, 8)
    r = evaluate_frames(frames, [8, 16, 24], caption="a red square on a blue striped background")
    assert r["identity"]["per_frame_texture"] == ["stripes"] * 8 + ["checker"] * 8 + ["stripes"] * 16
    assert r["metrics"]["identity_texture"] == r["metrics"]["caption_texture"] == 0.75
    assert r["metrics"]["identity_background"] == 1.0  # the colour never changed


def test_identity_takes_precomputed_indices():
    """Given the frames' palette indices, identity_consistency answers exactly as when it computes
    them (evaluate_frames shares them with the shape metrics); indices of another size, or with an
    upscale still to undo, are refused."""
    frames = render(two_sprites(), CFG, 0, 32)
    frames[16:24] = render(two_sprites(first_colour=1), CFG, 16, 8)
    idx = nearest_palette(frames)
    assert identity_consistency(frames, [8, 16, 24], undo_upscale=False, indices=idx) == \
        identity_consistency(frames, [8, 16, 24], undo_upscale=False)
    other = nearest_palette(render(two_sprites(first_colour=1), CFG, 0, 32))  # the square green throughout
    assert identity_consistency(frames, [8, 16, 24], undo_upscale=False, indices=other)["sprites"] != \
        identity_consistency(frames, [8, 16, 24], undo_upscale=False)["sprites"]  # the given indices are the ones judged
    with pytest.raises(ValueError, match="indices"):
        identity_consistency(frames, [8], undo_upscale=False, indices=idx[:, :16])
    with pytest.raises(ValueError, match="undo_upscale"):
        identity_consistency(frames, [8], indices=idx)


def test_caption_adherence_counts_frames():
    """Red square + yellow circle on blue; chunk 2 turns the square green: the caption's background
    holds in every frame, its sprite colours in 3/4 of them; a wrong caption scores 0."""
    frames = render(two_sprites(), CFG, 0, 32)
    frames[16:24] = render(two_sprites(first_colour=1), CFG, 16, 8)
    ident = identity_consistency(frames, [8, 16, 24])
    assert caption_adherence(ident, "a red square and a yellow circle on a blue striped background") == \
        {"caption_background": 1.0, "caption_sprites": 0.75, "caption_texture": 1.0}
    assert caption_adherence(ident, "a square and a yellow circle on a white checkered background") == \
        {"caption_background": 0.0, "caption_sprites": 1.0, "caption_texture": 0.0}
    assert caption_adherence(ident, "a square and a circle") == \
        {"caption_background": None, "caption_sprites": None, "caption_texture": None}
    assert caption_adherence(ident, "a red square on a blue background; a green square") == \
        {"caption_background": None, "caption_sprites": None, "caption_texture": None}  # schedules are not judged
    m = evaluate_frames(frames, [8, 16, 24], caption="a red square on a blue background")["metrics"]
    assert (m["caption_background"], m["caption_sprites"]) == (1.0, 0.75)
    assert evaluate_frames(frames, [8, 16, 24])["metrics"]["caption_background"] is None


def test_ground_truth_videos_follow_their_captions():
    """Rendered sprite-world videos judged against the captions they were made with: the named
    background holds in every frame; named sprite colours in nearly all (sprites can overlap and
    hide a small one, so the ceiling is below 1)."""
    rng = np.random.default_rng(7)
    bg, sp = [], []
    for seed in range(120):
        spec = sample_spec(np.random.default_rng(seed), CFG)
        ident = identity_consistency(render(spec, CFG, 0, 16), [8], undo_upscale=False)
        m = caption_adherence(ident, make_caption(spec, rng, 1.0))  # every attribute named
        bg.append(m["caption_background"])
        sp.append(m["caption_sprites"])
    assert min(bg) == 1.0
    assert np.mean(sp) > 0.9 and sorted(sp)[len(sp) // 2] == 1.0


@pytest.mark.parametrize("seed", [33, 78])
def test_native_frames_with_block_aligned_textures_keep_their_sprites(seed, monkeypatch):
    """These native 32x32 renders look like a 4x upscale on average (4-px stripes, a small sprite):
    frames given to evaluate_frames are at the size to judge, so no upscale is undone and the sprite
    survives even where a detector would call them upscaled."""
    import vin.eval.identity

    monkeypatch.setattr(vin.eval.identity, "detect_upscale", lambda frames: 4)
    spec = sample_spec(np.random.default_rng(seed), CFG)
    frames = render(spec, CFG, 0, 8)
    r = evaluate_frames(frames, [4], caption=make_caption(spec, np.random.default_rng(0), 1.0))
    assert sorted(r["identity"]["sprites"]) == sorted(PALETTE_NAMES[s.colour] for s in spec.sprites)
    assert r["metrics"]["caption_sprites"] == 1.0 and r["metrics"]["caption_background"] == 1.0


def test_anti_aliased_rims_never_count_as_sprites():
    for seed in range(12):
        spec = sample_spec(np.random.default_rng(seed), CFG)
        r = identity_consistency(render(spec, CFG, 0, 16))
        truth = {PALETTE_NAMES[s.colour] for s in spec.sprites}
        assert r["background"] == PALETTE_NAMES[spec.background]
        assert set(r["sprites"]) == truth
        assert all(set(s) <= truth for s in r["per_frame_sprites"])  # occlusion may hide one, nothing extra


# ---- resolution ---------------------------------------------------------------------------------

# 33, 78, 89, 134, 191: native renders whose 4-px stripes made the mean test call them 4x or 2x
# upscales; 3, 5, 9: written at --scale 4, the H.264 noise hid the 4-blocks from the mean test.
UPSCALE_TRAP_SEEDS = (33, 78, 89, 134, 191, 3, 5, 9)


@pytest.mark.parametrize("seed", UPSCALE_TRAP_SEEDS)
def test_upscale_detection_of_written_videos(tmp_path, seed):
    """The factor of a video written by vin (H.264, nearest-neighbour --scale) is found exactly, and
    a native render is not called upscaled, for renders whose textures align with the blocks."""
    v = render(sample_spec(np.random.default_rng(seed), CFG), CFG, 0, 16)
    assert detect_upscale(v) == 1
    for k in (2, 4, 8):
        write_video(tmp_path / f"{k}.mp4", v, fps=8, scale=k)
        assert detect_upscale(read_video(tmp_path / f"{k}.mp4")) == k, k


def test_upscale_detection_rejects_grid_aligned_edges_of_native_video():
    rng = np.random.default_rng(0)
    # grainy grey video with black letterbox bars: its only sharp edges lie on a 16-px grid
    grain = np.clip(120 + rng.normal(0, 4, (16, 96, 128, 3)), 0, 255).astype(np.uint8)
    grain[:, :16] = grain[:, -16:] = 0
    assert detect_upscale(grain) == 1
    # low-contrast 4-px blocks and one bright 2x2 dot off the grid: the dot's sharp edges are inside blocks
    blocks = upscale(rng.integers(100, 130, (4, 16, 16, 3)).astype(np.uint8), 4)
    blocks[:, 10:12, 21:23] = 255
    assert detect_upscale(blocks) == 1
    blocks[:, 10:12, 21:23] = blocks[:, 8:9, 20:21]  # without the dot it is a 4x upscale
    assert detect_upscale(blocks) == 4


def test_upscale_detection_and_exact_downscale():
    v = sprite_video(1, 6)
    for k in (2, 4, 8):
        assert detect_upscale(upscale(v, k)) == k
        assert np.array_equal(downscale(upscale(v, k), k), v)
    assert detect_upscale(v) == 1
    assert detect_upscale(shifted(64, 4, 1)) == 1  # smooth texture, no blocks
    assert detect_upscale(np.full((3, 32, 32, 3), 77, np.uint8)) == 1  # flat: no evidence


# ---- evaluate / CLI -----------------------------------------------------------------------------

def test_evaluate_frames_json_shape():
    v = sprite_video(2, 24)
    r = evaluate_frames(v, [8, 16], feature="ssim", flow="dis")
    assert json.loads(json.dumps(r)) == r
    assert (r["frames"], r["boundaries"], r["flow_method"], r["feature"]) == (24, [8, 16], "dis", "ssim")
    assert list(r["metrics"]) == list(METRIC_NAMES)
    assert all(len(c) == 24 for c in r["curves"].values())
    assert r["curves"]["sim_to_first"][0] == 1.0 and r["curves"]["frame_diff"][0] == 0.0
    assert r["metrics"]["scene_cuts"] == 0 and r["identity"]["frames_background"] == 1.0
    assert "identity" not in evaluate_frames(v, None, synthetic=False)


def test_cli_evaluate_writes_json(tmp_path, capsys):
    spec = two_sprites()
    frames = render(spec, CFG, 0, 24)
    write_video(tmp_path / "a.mp4", frames, fps=8, scale=8)
    write_video(tmp_path / "b.gif", frames, fps=8, scale=8)
    # a `vin generate` sidecar for a.mp4: its layout wins over --chunk-frames
    (tmp_path / "a.json").write_text(json.dumps({"layout": [[0, 8], [6, 14], [12, 20], [16, 24]],
                                                 "prompts": ["a red square on a white background"],
                                                 "model_config": {"data": {"height": 32, "width": 32, "fps": 8}}}))
    out = tmp_path / "res" / "eval.json"
    assert main(["evaluate", str(tmp_path), "--chunk-frames", "8", "--feature", "hist", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "a.mp4" in printed and "b.gif" in printed and "mean of 2" in printed
    record = json.loads(out.read_text())
    a, b = record["videos"][str(tmp_path / "a.mp4")], record["videos"][str(tmp_path / "b.gif")]
    assert (a["boundaries_from"], a["boundaries"], a["downscale"]) == ("sidecar", [6, 12, 16], 8)
    assert (b["boundaries_from"], b["boundaries"], b["downscale"]) == ("chunk_frames", [8, 16], 8)
    for v in (a, b):
        assert v["frames"] == 24 and v["frame_size"] == [32, 32] and v["stored_size"] == [256, 256]
        assert v["feature"] == "hist" and v["flow_method"] == "farneback"
        assert v["identity"]["background"] == "blue" and v["identity"]["sprites"] == ["red", "yellow"]
        assert v["metrics"]["identity_both"] == 1.0 and v["metrics"]["scene_cuts"] == 0
    # the sidecar's prompt is judged (wrong background, right sprite); b.gif has no prompt
    assert (a["metrics"]["caption_background"], a["metrics"]["caption_sprites"]) == (0.0, 1.0)
    assert b["metrics"]["caption_background"] is None
    assert record["summary"]["videos"] == 2
    assert record["summary"]["metrics"]["identity_both"] == {"mean": 1.0, "std": 0.0, "n": 2}
    assert set(record["summary"]["metrics"]) == set(METRIC_NAMES)
    # one captioned video: no chance level of the caption metrics to print
    assert record["summary"]["mismatched_captions"]["caption_sprites"] == {"mean": None, "videos": 0, "pairs": 0}
    assert "chance" not in printed
    # default output: evaluation.json next to the first input (inside a folder given as input)
    assert main(["evaluate", str(tmp_path / "b.gif"), "--no-synthetic"]) == 0
    assert json.loads((tmp_path / "evaluation.json").read_text())["summary"]["metrics"]["identity_both"]["n"] == 0


@pytest.mark.parametrize("args, message", [
    (["missing.mp4"], "no video file or folder at"),
    (["notes.txt"], "is not a video"),
    (["empty"], "no .mp4 or .gif videos in folder"),
    (["v.gif", "--overlap", "2"], "--overlap needs --chunk-frames"),
    (["v.gif", "--chunk-frames", "50"], "cannot cover 6 frames"),
    (["v.gif", "--feature", "dino"], "feature 'dino' needs"),
    (["v.gif", "--downscale", "0"], "argument --downscale"),
    (["v.gif", "--out", "x.csv"], "must end in .json"),
])
def test_cli_evaluate_bad_input(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "empty").mkdir()
    write_video(tmp_path / "v.gif", sprite_video(0, 6), fps=8)
    try:
        code = main(["evaluate", *args])
    except SystemExit as e:  # argparse's own usage errors exit from inside parse_known_args
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("vin: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "evaluation.json").exists()


def test_cli_evaluate_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: vin evaluate")
    for option in ("VIDEO_OR_FOLDER", "--chunk-frames", "--overlap", "--feature", "--flow", "--no-synthetic",
                   "--downscale", "--out"):
        assert option in out, option


def test_prompt_of_a_video_from_its_sidecar():
    from vin.eval.evaluate import _prompt_of

    two = {"prompts": ["a red circle", "a blue square"]}
    assert _prompt_of(Path("o/out-1.mp4"), two) == "a blue square"
    assert _prompt_of(Path("o/out-0.gif"), two) == "a red circle"
    assert _prompt_of(Path("o/out.mp4"), two) is None and _prompt_of(Path("o/out-7.mp4"), two) is None
    assert _prompt_of(Path("o/v.mp4"), {"prompts": ["a red circle"]}) == "a red circle"
    assert _prompt_of(Path("o/v.mp4"), None) is None and _prompt_of(Path("o/v.mp4"), {"prompts": [3]}) is None


def _scored(spec, caption: str, frames: int = 12) -> dict:
    return {**evaluate_frames(render(spec, CFG, 0, frames), caption=caption, feature="hist"), "caption": caption}


def test_mismatched_captions_scores_each_caption_on_the_other_prompts_videos():
    """A: blue striped, red + yellow sprites; B: white plain, one green sprite; C: A again under A's
    caption. Each video's caption is scored on the videos whose caption names another value: A's and
    C's ("a red circle on a blue striped background") on B: 0, 0, 0; B's ("a yellow square on a plain
    white background") on A and C: background 0, sprites 1 (A has a yellow sprite), texture 0.
    Chance = mean over the three videos: 0, 1/3, 0; C and A name the same values, so never pair."""
    from vin.eval.evaluate import mismatched_captions, summarize

    b_spec = VideoSpec(PALETTE_NAMES.index("white"), "plain",
                       (SpriteSpec(PALETTE_NAMES.index("green"), "triangle", "large", 16.0, 16.0, 0.3, 0.0),))
    cap_a, cap_b = "a red circle on a blue striped background", "a yellow square on a plain white background"
    vids = {"a": _scored(two_sprites(), cap_a), "b": _scored(b_spec, cap_b), "c": _scored(two_sprites(), cap_a)}
    assert vids["a"]["metrics"]["caption_sprites"] == 1.0 and vids["b"]["metrics"]["caption_sprites"] == 0.0
    chance = mismatched_captions(vids)
    assert chance == {"caption_background": {"mean": 0.0, "videos": 3, "pairs": 4},
                      "caption_sprites": {"mean": 1 / 3, "videos": 3, "pairs": 4},
                      "caption_texture": {"mean": 0.0, "videos": 3, "pairs": 4}}
    assert summarize(vids)["mismatched_captions"] == chance
    # one distinct caption, or no caption: no chance level
    same = {k: vids[k] for k in ("a", "c")}
    assert all(v == {"mean": None, "videos": 0, "pairs": 0} for v in mismatched_captions(same).values())
    assert all(v["pairs"] == 0 for v in mismatched_captions({k: {**v, "caption": None} for k, v in vids.items()}).values())


def test_mismatched_captions_equals_the_own_score_of_a_model_that_ignores_the_words():
    """Every video is the same (red + yellow on blue), whatever its prompt, and the prompts repeat
    unequally (3x one naming red, 1x one naming green), plus a prompt naming no colour and a
    schedule (left out): the own-caption mean and the chance level are both 3/4."""
    from vin.eval.evaluate import mismatched_captions, summarize

    red, green = "a red square on a blue background", "a green circle on a white background"
    caps = [red, red, red, green, "a circle", "a red square; a green circle"]
    vids = {str(i): _scored(two_sprites(), c) for i, c in enumerate(caps)}
    summary = summarize(vids)
    own = summary["metrics"]["caption_sprites"]["mean"]
    chance = summary["mismatched_captions"]["caption_sprites"]
    assert own == 0.75 and chance["mean"] == 0.75 and chance["videos"] == 4
    assert chance["pairs"] == 3 * 2 + 4  # each red video: the green and the no-colour video; green: the other four
    # the background words: red's videos say blue (shown), green's says white (not): 3/4 own, 3/4 chance
    assert summary["metrics"]["caption_background"]["mean"] == 0.75
    assert mismatched_captions(vids)["caption_background"]["mean"] == 0.75


def test_cli_evaluate_prints_the_chance_level_of_the_captions(tmp_path, capsys):
    """Two videos of one `vin generate` call with two prompts: each matches its own caption and
    not the other's, so the printed line reads 1 vs 0 for background and sprites."""
    white = VideoSpec(PALETTE_NAMES.index("white"), "plain",
                      (SpriteSpec(PALETTE_NAMES.index("green"), "triangle", "large", 16.0, 16.0, 0.3, 0.0),))
    for i, spec in enumerate((two_sprites(), white)):
        write_video(tmp_path / f"out-{i}.mp4", render(spec, CFG, 0, 12), fps=8, scale=8)
    (tmp_path / "out.json").write_text(json.dumps({
        "layout": [[0, 12]], "model_config": {"data": {"height": 32, "width": 32, "fps": 8}},
        "prompts": ["a red square on a blue background", "a green triangle on a white background"]}))
    assert main(["evaluate", str(tmp_path), "--feature", "hist", "--out", str(tmp_path / "e.json")]) == 0
    assert "own caption / chance (on the videos of other prompts): background 1.000 / 0.000, sprites 1.000 / 0.000" \
        in capsys.readouterr().out
