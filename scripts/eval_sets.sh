#!/usr/bin/env bash
# The two 64-frame evaluation sets of docs/RESULTS.md ("Measured: identity and caption adherence"):
# 4 prompts x seeds 0-3 = 16 videos per set, generated with `vin generate` and scored with
# `vin evaluate` (exact palette identity + caption adherence of the sprite world).
#   named:   3 of the 4 prompts name the background
#   unnamed: none does (where only other chunks know the background: the paper's case)
#
# usage: scripts/eval_sets.sh OUT_DIR [extra vin generate args, e.g. --checkpoint F, --no-global, --cfg 3]
# writes OUT_DIR/{named,unnamed}/s<seed>-<i>.mp4 (and s<seed>.json/.png per seed) and
# OUT_DIR/{named,unnamed}/evaluation.json (the videos of this run only), and prints one markdown
# row per set in the columns of the RESULTS table (mean ± std over the videos), then the share of
# frames showing the sprite colours the caption names, against its chance level, and the sprite-shape
# measures (vin.eval.shapes).
# Environment: SEEDS ("0 1 2 3"), FRAMES (64), LABEL (the row's first cell), VIN, PYTHON.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUT_DIR [vin generate args...]" >&2
    exit 2
fi
out=$1
shift
VIN=${VIN:-vin}
PYTHON=${PYTHON:-python3}
SEEDS=${SEEDS:-0 1 2 3}
FRAMES=${FRAMES:-64}
LABEL=${LABEL:-${*:-default}}
for tool in "$VIN" "$PYTHON"; do
    command -v "$tool" >/dev/null || { echo "$0: $tool not found (set VIN / PYTHON)" >&2; exit 2; }
done
named=("a large red circle and a small white square on a blue striped background"
       "a green triangle on a plain white background"
       "a small cyan square on an orange checkered background"
       "a yellow diamond and a magenta circle")
unnamed=("a circle"
         "a large square and a small triangle"
         "a red diamond and a circle"
         "a yellow diamond and a magenta circle")
for group in named unnamed; do
    if [[ $group == named ]]; then prompts=("${named[@]}"); what="3 of 4 name the background"
    else prompts=("${unnamed[@]}"); what="none names it"; fi
    args=()
    for p in "${prompts[@]}"; do args+=(--prompt "$p"); done
    mkdir -p "$out/$group"
    videos=()
    for s in $SEEDS; do
        "$VIN" generate --frames "$FRAMES" --seed "$s" --quiet "${args[@]}" --out "$out/$group/s$s.mp4" "$@" >/dev/null
        for i in "${!prompts[@]}"; do videos+=("$out/$group/s$s-$i.mp4"); done
    done
    "$VIN" evaluate "${videos[@]}" --out "$out/$group/evaluation.json" >/dev/null
    "$PYTHON" - "$out/$group/evaluation.json" "$LABEL" "$what" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))["summary"]["metrics"]
def cell(name, std=True):
    v = m[name]
    return "—" if v["mean"] is None else f"{v['mean']:.2f}" + (f" ± {v['std']:.2f}" if std else "")
cols = [cell("identity_background"), cell("identity_both", False), cell("identity_chunks", False),
        cell("caption_background"), cell("seam_score"), cell("scene_cuts", False), cell("mean_flow_magnitude", False),
        cell("identity_texture"), cell("caption_texture")]
print(f"| {sys.argv[2]} ({m['identity_background']['n']} videos) | {sys.argv[3]} | " + " | ".join(cols) + " |")
chance = json.load(open(sys.argv[1]))["summary"]["mismatched_captions"]["caption_sprites"]["mean"]
if chance is not None:
    print(f"  caption sprites {cell('caption_sprites', False)} (chance: {chance:.2f}, on the videos of the other prompts)")
print(f"  sprite shapes: IoU {cell('shape_iou')}, clean {cell('shape_clean', False)}, consistency {cell('shape_consistency', False)}, "
      f"frames with a sprite {cell('shape_present', False)}")
EOF
done
