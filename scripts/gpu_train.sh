#!/usr/bin/env bash
# The prepared command for a session that is lent a GPU (issue 3: train the shipped checkpoint
# further "on the lent GPU whenever your session has one"). From the shipped weights it trains VIN
# and its no-global-token ablation side by side on the one device for LIMIT_S seconds at a
# GPU-sized batch, then exports both at the same step — the largest step both runs have a
# checkpoint of — so the two get the same budget. A device time limit ends the runs, not a step
# count, so the learning rate stays constant (no cool-down) and the EMA (0.999) does the averaging;
# a cool-down can follow anywhere with `vin train ... --train.init_from=<export>`.
#
# Before training it checks the device path: the shipped model's prediction on the device must
# match its prediction on the CPU (the same inputs), else it stops (exit 3).
#
# usage, with the device tool, from the repository root (one call of about LIMIT_S + 60 s):
#     OUT=$OUT scripts/gpu_train.sh
# writes to $OUT: vin.safetensors, noglobal.safetensors (EMA weights + config: `vin generate
# --checkpoint`, `train.init_from`), vin.jsonl, noglobal.jsonl (the runs' logs), report.txt.
# Environment: OUT (required), LIMIT_S (420), BATCH (64), LR (1e-3), WORKERS (6 per run),
# CKPT_EVERY (200), DEVICE (cuda), BF16 (true), PYTHON (python3), RUNS (runs/gpu); and, for the
# tests, VIN_CONFIG / ABL_CONFIG, VIN_INIT / ABL_INIT, EXTRA_ARGS (more --section.key=value for
# both runs), ABL_ARGS (for the ablation only).
# Needs only torch, numpy, einops, safetensors, pyyaml and tqdm (vin train and vin export import
# nothing else), so it runs from src/ without installing vin.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder the results go to}"
LIMIT_S=${LIMIT_S:-420}
BATCH=${BATCH:-64}
LR=${LR:-1e-3}
WORKERS=${WORKERS:-6}
CKPT_EVERY=${CKPT_EVERY:-200}
DEVICE=${DEVICE:-cuda}
BF16=${BF16:-true}
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-runs/gpu}
VIN_CONFIG=${VIN_CONFIG:-configs/vin-s.yaml}
ABL_CONFIG=${ABL_CONFIG:-configs/vin-s-noglobal.yaml}
VIN_INIT=${VIN_INIT:-src/vin/weights/vin-s.safetensors}
ABL_INIT=${ABL_INIT:-checkpoints/vin-s-noglobal.safetensors}
read -r -a extra <<< "${EXTRA_ARGS:-}"
read -r -a abl_extra <<< "${ABL_ARGS:-}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
report="$OUT/report.txt"
say() { echo "gpu_train: $*" | tee -a "$report"; }
for f in "$VIN_CONFIG" "$ABL_CONFIG" "$VIN_INIT" "$ABL_INIT"; do
    [[ -f $f ]] || { echo "gpu_train: no file $f" >&2; exit 2; }
done
if [[ -e $RUNS ]]; then
    echo "gpu_train: $RUNS exists; move it away or set RUNS" >&2
    exit 2
fi

say "$(date -u +%FT%TZ) device=$DEVICE batch=$BATCH lr=$LR limit=${LIMIT_S}s workers=$WORKERS bf16=$BF16"
"$PYTHON" - "$DEVICE" "$VIN_INIT" >> "$report" 2>&1 <<'EOF' || { cat "$report"; echo "gpu_train: the device check failed" >&2; exit 3; }
# The device path: the shipped model on the device predicts what it predicts on the CPU.
import sys
import torch
from vin.checkpoint import checkpoint_config, load_checkpoint
from vin.training.trainer import build_model

device, path = sys.argv[1], sys.argv[2]
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
cfg = checkpoint_config(path)
F = cfg.model.chunk_frames
x = torch.randn(2, cfg.model.channels, 2 * F - 2, cfg.data.height, cfg.data.width, generator=torch.Generator().manual_seed(0))
t = torch.tensor([0.3, 0.9])
outs = []
for dev in ("cpu", device):
    model = build_model(cfg, dev).eval()
    load_checkpoint(path, model, weights="ema")
    xd, td = x.to(dev), t.to(dev)
    with torch.no_grad():
        text = model.encode_text(["a red circle on a blue striped background", ""])
        z = model.read(xd, td, text)  # the global tokens (None for the ablation)
        chunks = torch.stack([xd[:, :, :F], xd[:, :, -F:]], dim=1)  # two overlapping chunks
        outs.append(model.denoise_chunks(chunks, td, text, z).float().cpu())
err = (outs[0] - outs[1]).abs().max().item()
scale = outs[0].abs().max().item()
print(f"device check: max |cpu - {device}| = {err:.2e} (output scale {scale:.2f})")
sys.exit(0 if err <= 1e-2 * max(scale, 1.0) else 1)
EOF
tail -n 2 "$report"

common=(--device "$DEVICE" --quiet --train.steps=100000000 --train.batch_size="$BATCH" --train.lr="$LR"
        --train.lr_decay=constant --train.decay_steps=0 --train.ema_decay=0.999 --train.threads=0
        --train.autocast_bf16="$BF16" --train.data_workers="$WORKERS" --train.ckpt_every="$CKPT_EVERY"
        --train.keep_checkpoints=100000 --train.log_every=25 "${extra[@]}")
# `timeout` ends each run with SIGTERM: it finishes its step, writes a checkpoint and exits 143;
# timeout then exits 124. Both are the expected end here.
timeout -s TERM "$LIMIT_S" "$PYTHON" -m vin train --config "$VIN_CONFIG" --out "$RUNS/vin" \
    --train.init_from="$VIN_INIT" "${common[@]}" > "$OUT/vin.out" 2>&1 &
vin_pid=$!
timeout -s TERM "$LIMIT_S" "$PYTHON" -m vin train --config "$ABL_CONFIG" --out "$RUNS/noglobal" \
    --train.init_from="$ABL_INIT" "${common[@]}" "${abl_extra[@]}" > "$OUT/noglobal.out" 2>&1 &
abl_pid=$!
status=0
wait "$vin_pid" || status=$?
[[ $status == 0 || $status == 124 ]] || { tail -n 20 "$OUT/vin.out" >&2; echo "gpu_train: the VIN run failed ($status)" >&2; exit 1; }
wait "$abl_pid" || status=$?
[[ $status == 0 || $status == 124 ]] || { tail -n 20 "$OUT/noglobal.out" >&2; echo "gpu_train: the ablation run failed ($status)" >&2; exit 1; }

steps() { ls "$1/checkpoints" | sed -n 's/^step-0*\([0-9][0-9]*\)\.safetensors$/\1/p' | sort -n; }
step=$(comm -12 <(steps "$RUNS/vin" | sort) <(steps "$RUNS/noglobal" | sort) | sort -n | tail -n 1)
[[ -n $step ]] || { echo "gpu_train: the two runs have no checkpoint step in common (raise LIMIT_S or lower CKPT_EVERY)" >&2; exit 1; }
name=$(printf 'step-%07d.safetensors' "$step")
"$PYTHON" -m vin export "$RUNS/vin/checkpoints/$name" --out "$OUT/vin.safetensors" > /dev/null
"$PYTHON" -m vin export "$RUNS/noglobal/checkpoints/$name" --out "$OUT/noglobal.safetensors" > /dev/null
cp "$RUNS/vin/log.jsonl" "$OUT/vin.jsonl"
cp "$RUNS/noglobal/log.jsonl" "$OUT/noglobal.jsonl"
rm -f "$OUT/vin.out" "$OUT/noglobal.out"
"$PYTHON" - "$OUT" "$step" >> "$report" <<'EOF'
import json, sys
out, step = sys.argv[1], int(sys.argv[2])
for run in ("vin", "noglobal"):
    recs = [json.loads(line) for line in open(f"{out}/{run}.jsonl") if line.strip()]
    last = recs[-1]
    print(f"{run}: reached step {last['step']}, loss {last['loss']:.4f}, {last['samples_per_s']:.1f} videos/s, "
          f"{last['wall_s']:.0f} s")
print(f"exported both at step {step}")
EOF
tail -n 3 "$report"
