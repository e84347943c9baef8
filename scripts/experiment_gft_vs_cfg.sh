#!/usr/bin/env bash
# GFT vs CFG on the embedded shapes data, LlamaGen family, end to end:
#   (a) train a CFG model and (b) a GFT model from scratch with identical budgets (preset, steps, batch, lr, data,
#   seed); (c) GFT-fine-tune (a) with 5% of its steps; sweep (b) and (c) over β and (a) over the CFG scale w;
#   write the table and plots to docs/gft_vs_cfg/.
#
#   bash scripts/experiment_gft_vs_cfg.sh
#
# Environment overrides (defaults in brackets): PYTHON [python], MODEL [llamagen], OUT [runs/gft_vs_cfg],
# DOCS [docs/gft_vs_cfg], PRESET [GPT-tiny], STEPS [2000], FT_STEPS [STEPS/20], FT_LR [1e-3], BATCH [64],
# LR [2e-3], TRAIN_IMAGES [10000], N_PER_CLASS [100], SEED [0].
# A finished phase leaves <run>/DONE and is skipped when the script runs again; the sweep resumes too.
set -euo pipefail

PYTHON=${PYTHON:-python}
MODEL=${MODEL:-llamagen}
OUT=${OUT:-runs/gft_vs_cfg}
DOCS=${DOCS:-docs/gft_vs_cfg}
PRESET=${PRESET:-GPT-tiny}
STEPS=${STEPS:-2000}
FT_STEPS=${FT_STEPS:-$((STEPS / 20))}
FT_LR=${FT_LR:-1e-3}
BATCH=${BATCH:-64}
LR=${LR:-2e-3}
TRAIN_IMAGES=${TRAIN_IMAGES:-10000}
N_PER_CLASS=${N_PER_CLASS:-100}
SEED=${SEED:-0}

mkdir -p "$OUT" "$DOCS"
TIMES="$OUT/timings.jsonl"
START=$(date +%s)

phase() {  # phase NAME DIR COMMAND...: run unless DIR/DONE exists; log its wall time
    local name=$1 dir=$2
    shift 2
    if [[ -n "$dir" && -f "$dir/DONE" ]]; then
        echo "== $name: done before, skipped"
        return
    fi
    echo "== $name: $*"
    local t0
    t0=$(date +%s)
    "$@"
    local dt=$(( $(date +%s) - t0 ))
    [[ -n "$dir" ]] && touch "$dir/DONE"
    printf '{"phase": "%s", "wall_s": %d}\n' "$name" "$dt" >> "$TIMES"
    echo "== $name: ${dt}s"
}

COMMON=(--preset "$PRESET" --batch-size "$BATCH" --lr "$LR" --train-images "$TRAIN_IMAGES" --seed "$SEED"
        --save-every 0 --keep-last 1)

phase train-cfg "$OUT/cfg" \
    "$PYTHON" "scripts/train_$MODEL.py" --objective cfg --steps "$STEPS" "${COMMON[@]}" --out "$OUT/cfg"
phase train-gft "$OUT/gft" \
    "$PYTHON" "scripts/train_$MODEL.py" --objective gft --steps "$STEPS" "${COMMON[@]}" --out "$OUT/gft"
phase finetune-gft "$OUT/gft-ft" \
    "$PYTHON" "scripts/train_$MODEL.py" --objective gft --init-from "$OUT/cfg/model" --steps "$FT_STEPS" \
    --lr "$FT_LR" --warmup-steps 5 --batch-size "$BATCH" --train-images "$TRAIN_IMAGES" --seed "$SEED" \
    --save-every 0 --keep-last 1 --out "$OUT/gft-ft"
phase sweep "" \
    "$PYTHON" scripts/sweep.py --model "$MODEL" --cfg "cfg=$OUT/cfg/model" --gft "gft-scratch=$OUT/gft/model" \
    --gft "gft-finetune=$OUT/gft-ft/model" --n-per-class "$N_PER_CLASS" --seed "$SEED" --out "$DOCS" \
    --samples-dir "$OUT/samples" --resume

TOTAL=$(( $(date +%s) - START ))
"$PYTHON" - "$OUT" "$DOCS" "$TOTAL" <<'EOF'
import json, sys
from pathlib import Path
out, docs, total = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
phases = [json.loads(line) for line in (out / "timings.jsonl").read_text().splitlines() if line.strip()]
train = {}
for run in ("cfg", "gft", "gft-ft"):
    log = [json.loads(line) for line in (out / run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    train[run] = {"steps": log[-1]["step"], "final_loss": log[-1]["loss"], "final_own_loss": log[-1].get("own_loss"),
                  "train_s": log[-1]["elapsed_s"], "config": json.loads((out / run / "model" / "config.json").read_text()).get("preset")}
summary = {"command": "bash scripts/experiment_gft_vs_cfg.sh", "wall_s_this_invocation": total, "phases": phases,
           "training": train}
(docs / "experiment.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary))
EOF
echo "== all done in ${TOTAL}s; results in $DOCS/results.md"
