#!/usr/bin/env bash
# The prepared command for a session that is lent a GPU (issue 3: train the shipped checkpoint
# further "on the lent GPU whenever your session has one"). From the shipped weights it trains VIN
# and its no-global-token ablation side by side on the one device for LIMIT_S seconds at a
# GPU-sized batch, then exports both at the same step — the largest step both runs have a
# checkpoint of — so the two get the same budget. A device time limit ends the runs, not a step
# count, so the learning rate stays constant (no cool-down) and the EMA (0.999) does the averaging;
# a cool-down can follow anywhere with `vin train ... --train.init_from=<export>`.
#
# First, scripts/device_check.py checks the device path against the CPU (prediction, a float32 and
# a bf16 training step, data workers with pinned memory) and that both start files are at the same
# step; on a failure nothing is trained (exit 3), so the call can be repeated with BF16=false or
# WORKERS=0 while the machine is warm.
#
# usage, with the device tool, from the repository root (one call of about LIMIT_S + 90 s):
#     OUT=$OUT bash scripts/gpu_train.sh
# writes to $OUT: vin.safetensors, noglobal.safetensors (EMA weights + config: `vin generate
# --checkpoint`, `train.init_from`), vin.jsonl, noglobal.jsonl (the runs' logs), report.txt; and
# vin.out / noglobal.out (the runs' output) when a run failed. A failed run still gets its
# partner's and its own last common checkpoint exported, and the script exits 1.
# Environment: OUT (required), LIMIT_S (420), BATCH (64), LR (1e-3), WORKERS (6 per run; 0 when
# /dev/shm has too little free for them: 1.7 GiB at the defaults), CKPT_EVERY (200), DEVICE (cuda),
# BF16 (true), PYTHON (python3), RUNS (runs/gpu); and, for the tests, VIN_CONFIG / ABL_CONFIG,
# VIN_INIT / ABL_INIT, EXTRA_ARGS (more --section.key=value for both runs), ABL_ARGS (for the
# ablation only), MAX_STEPS (the step, counted on from the start files', at which a run also ends
# before the time limit; none by default).
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
for f in "$VIN_CONFIG" "$ABL_CONFIG" "$VIN_INIT" "$ABL_INIT"; do
    [[ -f $f ]] || { echo "gpu_train: no file $f" >&2; exit 2; }
done
if [[ -e $RUNS ]]; then
    echo "gpu_train: $RUNS exists; move it away or set RUNS" >&2
    exit 2
fi
mkdir -p "$OUT"
report="$OUT/report.txt"
say() { echo "gpu_train: $*" | tee -a "$report"; }
shm_kb=$(df -k --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ' || true)
# in flight through /dev/shm: 2 runs x WORKERS x 2 (prefetch) batches of BATCH videos of up to 32 frames
# of 32x32, video and noise in float32 (768 kB per video), and half as much again for safety
need_kb=$(( 6 * WORKERS * BATCH * 768 ))
if [[ $WORKERS != 0 && ${shm_kb:-0} -lt $need_kb ]]; then
    say "/dev/shm has ${shm_kb:-no} kB free, the data workers need about $need_kb kB: data workers off (WORKERS=0)"
    WORKERS=0
fi
say "$(date -u +%FT%TZ) device=$DEVICE batch=$BATCH lr=$LR limit=${LIMIT_S}s workers=$WORKERS bf16=$BF16"
bf16_flag=()
[[ $BF16 == true ]] && bf16_flag=(--bf16)
if ! "$PYTHON" scripts/device_check.py --device "$DEVICE" --workers "$WORKERS" ${bf16_flag[@]+"${bf16_flag[@]}"} \
        "$VIN_INIT" "$ABL_INIT" >> "$report" 2>&1; then
    cat "$report"
    echo "gpu_train: the device check failed (see $report); nothing trained" >&2
    exit 3
fi

common=(--device "$DEVICE" --quiet --train.steps="${MAX_STEPS:-100000000}" --train.batch_size="$BATCH" --train.lr="$LR"
        --train.lr_decay=constant --train.decay_steps=0 --train.ema_decay=0.999 --train.threads=0
        --train.autocast_bf16="$BF16" --train.data_workers="$WORKERS" --train.ckpt_every="$CKPT_EVERY"
        --train.keep_checkpoints=100000 --train.log_every=25 ${extra[@]+"${extra[@]}"})
# `timeout` ends each run with SIGTERM: it finishes its step, writes a checkpoint, says "stopped by
# SIGTERM at step N" and exits 143; timeout then exits 124 (and kills a run still alive 60 s later).
timeout -k 60 -s TERM "$LIMIT_S" "$PYTHON" -m vin train --config "$VIN_CONFIG" --out "$RUNS/vin" \
    --train.init_from="$VIN_INIT" "${common[@]}" > "$OUT/vin.out" 2>&1 &
vin_pid=$!
timeout -k 60 -s TERM "$LIMIT_S" "$PYTHON" -m vin train --config "$ABL_CONFIG" --out "$RUNS/noglobal" \
    --train.init_from="$ABL_INIT" "${common[@]}" ${abl_extra[@]+"${abl_extra[@]}"} > "$OUT/noglobal.out" 2>&1 &
abl_pid=$!
# if this script ends early (a failure, a signal), stop the runs with a checkpoint rather than leave them
trap 'kill -TERM $vin_pid $abl_pid 2>/dev/null || true' EXIT
failed=()
for run in vin noglobal; do
    pid=$vin_pid; [[ $run == noglobal ]] && pid=$abl_pid
    status=0
    wait "$pid" || status=$?
    if ! { [[ $status == 0 || $status == 124 ]] && grep -q -e "stopped by SIGTERM at step" -e "trained to step" "$OUT/$run.out"; }; then
        failed+=("$run")
        say "the $run run failed (exit $status); its output: $OUT/$run.out"
        tail -n 20 "$OUT/$run.out" >&2
    fi
done
trap - EXIT

steps() { ls "$1/checkpoints" 2>/dev/null | sed -n 's/^step-0*\([0-9][0-9]*\)\.safetensors$/\1/p' | sort; }
step=$(comm -12 <(steps "$RUNS/vin") <(steps "$RUNS/noglobal") | sort -n | tail -n 1)
if [[ -z $step ]]; then
    say "the two runs have no checkpoint step in common (raise LIMIT_S or lower CKPT_EVERY); nothing exported"
    exit 1
fi
name=$(printf 'step-%07d.safetensors' "$step")
"$PYTHON" -m vin export "$RUNS/vin/checkpoints/$name" --out "$OUT/vin.safetensors" > /dev/null
"$PYTHON" -m vin export "$RUNS/noglobal/checkpoints/$name" --out "$OUT/noglobal.safetensors" > /dev/null
cp "$RUNS/vin/log.jsonl" "$OUT/vin.jsonl"
cp "$RUNS/noglobal/log.jsonl" "$OUT/noglobal.jsonl"
"$PYTHON" - "$OUT" "$step" >> "$report" <<'PY'
import json, sys
out, step = sys.argv[1], int(sys.argv[2])
for run in ("vin", "noglobal"):
    recs = [json.loads(line) for line in open(f"{out}/{run}.jsonl") if line.strip()]
    last = recs[-1]
    print(f"{run}: reached step {last['step']}, loss {last['loss']:.4f}, {last['samples_per_s']:.1f} videos/s, "
          f"{last['wall_s']:.0f} s")
print(f"exported both at step {step}")
PY
tail -n 3 "$report"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "gpu_train: failed: ${failed[*]} (exported the last common step anyway)" >&2
    exit 1
fi
rm -f "$OUT/vin.out" "$OUT/noglobal.out"
