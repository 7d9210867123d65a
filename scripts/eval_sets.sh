#!/usr/bin/env bash
# The two 64-frame evaluation sets of docs/RESULTS.md ("Measured: identity and caption adherence"):
# 4 prompts x seeds 0-3 = 16 videos per set, generated with `vin generate` and scored with
# `vin evaluate` (exact palette identity + caption adherence of the sprite world).
#   named:   3 of the 4 prompts name the background
#   unnamed: none does (where only other chunks know the background: the paper's case)
#
# usage: scripts/eval_sets.sh OUT_DIR [extra vin generate args, e.g. --checkpoint F, --no-global, --cfg 3]
# writes OUT_DIR/{named,unnamed}/s<seed>-<i>.mp4 (+ .json/.png) and OUT_DIR/{named,unnamed}/evaluation.json,
# and prints one markdown row per set in the columns of the RESULTS table (mean +- std over the
# videos). SEEDS="0 1" and FRAMES=32 override the defaults; PYTHON names the interpreter with vin.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUT_DIR [vin generate args...]" >&2
    exit 2
fi
out=$1
shift
VIN=${VIN:-vin}
PYTHON=${PYTHON:-python}
SEEDS=${SEEDS:-0 1 2 3}
FRAMES=${FRAMES:-64}
named=("a large red circle and a small white square on a blue striped background"
       "a green triangle on a plain white background"
       "a small cyan square on an orange checkered background"
       "a yellow diamond and a magenta circle")
unnamed=("a circle"
         "a large square and a small triangle"
         "a red diamond and a circle"
         "a yellow diamond and a magenta circle")
for set in named unnamed; do
    declare -n prompts=$set
    args=()
    for p in "${prompts[@]}"; do args+=(--prompt "$p"); done
    mkdir -p "$out/$set"
    for s in $SEEDS; do
        "$VIN" generate --frames "$FRAMES" --seed "$s" --quiet "${args[@]}" --out "$out/$set/s$s.mp4" "$@" >/dev/null
    done
    "$VIN" evaluate "$out/$set" --out "$out/$set/evaluation.json" >/dev/null
    "$PYTHON" - "$out/$set/evaluation.json" "$set" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))["summary"]["metrics"]
def cell(name, std=True):
    v = m[name]
    return "—" if v["mean"] is None else f"{v['mean']:.2f}" + (f" ± {v['std']:.2f}" if std else "")
cols = [cell("identity_background"), cell("identity_both", False), cell("identity_chunks", False),
        cell("caption_background"), cell("seam_score"), cell("scene_cuts", False), cell("mean_flow_magnitude", False)]
print(f"| {sys.argv[2]} ({m['identity_background']['n']} videos) | " + " | ".join(cols) + " |")
EOF
done
