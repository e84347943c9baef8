#!/usr/bin/env bash
# GFT vs CFG on the embedded shapes data, for one model family or all four, end to end:
#   (a) train a CFG model and (b) a GFT model from scratch with identical budgets (preset, steps, batch, lr, data,
#   seed); (c) GFT-fine-tune (a) with 5% of its steps; sweep (b) and (c) over β = 1/w and (a) over the CFG scale w
#   (w ∈ {1, 1.25, 1.5, 2, 3, 4}), with bootstrap spreads; learning curves: (a) and (b) export their weights at the
#   step counts in CURVE (--export-every) and those snapshots are swept the same way; both also log the held-out
#   loss with and without the class every STEPS/10 steps (val_cond_loss, val_null_loss: what the class is worth to
#   the model). Writes docs/gft_vs_cfg/<family>/ and, with all families done, docs/gft_vs_cfg/summary.md + the
#   per-family plots (scripts/experiment_summary.py).
#
#   bash scripts/experiment_gft_vs_cfg.sh                 # all four families, one after the other
#   FAMILIES=llamagen bash scripts/experiment_gft_vs_cfg.sh
#   FAMILIES=t2i PAPER=0 bash scripts/experiment_gft_vs_cfg.sh    # text-to-image (not part of the default four)
#
# Environment overrides (defaults in brackets; per-family defaults below): PYTHON [python], FAMILIES
# [llamagen var masked mar], OUT [runs/gft_vs_cfg], DOCS [docs/gft_vs_cfg], PRESET, STEPS, LR, BATCH [64],
# FT_STEPS [STEPS/20], FT_LR, CURVE [STEPS/4 STEPS/2: multiples of STEPS/4], TRAIN_IMAGES [10000], N_PER_CLASS
# [100; t2i: 5 per prompt], SEED [0], THREADS [0: torch's default], GFT_FLAGS [none: extra flags for the GFT runs, e.g.
# "--beta-embed-lr 1" for the paper's single learning rate], SWEEP_FLAGS [per family: MAR "--steps 8", its
# diffusion head makes every sampled setting slow on a CPU; none otherwise], PAPER [1: also train "gft-paper", GFT
# from scratch with --beta-embed-lr 1, and sweep it beside the others; 0: skip it]. MAR's learning curve defaults to
# the one snapshot at STEPS/2 for the same reason.
# A finished phase leaves <run>/DONE and is skipped when the script runs again; sweeps resume too.
set -euo pipefail

PYTHON=${PYTHON:-python}
FAMILIES=${FAMILIES:-llamagen var masked mar}
OUT_ROOT=${OUT:-runs/gft_vs_cfg}
DOCS_ROOT=${DOCS:-docs/gft_vs_cfg}
BATCH=${BATCH:-64}
TRAIN_IMAGES=${TRAIN_IMAGES:-10000}
SEED=${SEED:-0}
THREADS=${THREADS:-0}
GFT_FLAGS=${GFT_FLAGS:-}
PAPER=${PAPER:-1}
BETAS="1 0.8 0.6667 0.5 0.3333 0.25"   # = 1/w for the CFG scales below
SCALES="1 1.25 1.5 2 3 4"

defaults() {  # per family: preset, steps, lr, fine-tune lr (each ≤ ~20 min of training on a 2-core CPU)
    case "$1" in
        llamagen) echo "GPT-tiny 2000 2e-3 2e-4" ;;
        var)      echo "d2 1000 1e-3 5e-4" ;;
        masked)   echo "MAR-tiny 1500 1e-3 5e-4" ;;
        mar)      echo "MAR-tiny 500 1e-3 5e-4" ;;
        t2i)      echo "GPT-tiny 1000 2e-3 1e-3" ;;   # text-to-image LlamaGen on the embedded captions
        *)        echo "unknown family $1" >&2; exit 2 ;;
    esac
}

sweep_defaults() {  # per family: extra sampling flags for every sweep of it
    case "$1" in
        mar) echo "--steps 8" ;;
        *)   echo "" ;;
    esac
}

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

for FAMILY in $FAMILIES; do
    read -r D_PRESET D_STEPS D_LR D_FT_LR < <(defaults "$FAMILY")
    PRESET=${PRESET_OVERRIDE:-${PRESET:-$D_PRESET}}
    STEPS_F=${STEPS:-$D_STEPS}
    LR_F=${LR:-$D_LR}
    FT_LR_F=${FT_LR:-$D_FT_LR}
    # samples per class; t2i: per prompt, over the first 200 held-out captions (5 x 200 = 1000 per setting)
    N_PER_CLASS_F=${N_PER_CLASS:-$([[ "$FAMILY" == t2i ]] && echo 5 || echo 100)}
    FT_STEPS_F=${FT_STEPS:-$(( STEPS_F / 20 > 0 ? STEPS_F / 20 : 1 ))}
    if [[ "$FAMILY" == mar ]]; then D_CURVE="$((STEPS_F / 2))"; else D_CURVE="$((STEPS_F / 4)) $((STEPS_F / 2))"; fi
    CURVE_F=${CURVE:-$D_CURVE}
    # shellcheck disable=SC2206
    SWEEP_EXTRA=(${SWEEP_FLAGS:-$(sweep_defaults "$FAMILY")})
    OUT="$OUT_ROOT/$FAMILY"
    DOCS="$DOCS_ROOT/$FAMILY"
    mkdir -p "$OUT" "$DOCS"
    TIMES="$OUT/timings.jsonl"
    QUARTER=$(( STEPS_F / 4 > 0 ? STEPS_F / 4 : 1 ))
    COMMON=(--preset "$PRESET" --batch-size "$BATCH" --lr "$LR_F" --train-images "$TRAIN_IMAGES" --seed "$SEED"
            --save-every 0 --keep-last 1 --threads "$THREADS" --val-fraction 0.05 --val-samples 500
            --val-every $(( STEPS_F / 10 > 0 ? STEPS_F / 10 : 1 )) --export-every "$QUARTER")
    SWEEP=(--model "$FAMILY" --betas $BETAS --cfg-scales $SCALES --n-per-class "$N_PER_CLASS_F" --seed "$SEED"
           --resume --threads "$THREADS" "${SWEEP_EXTRA[@]}")
    # shellcheck disable=SC2206
    GFT_EXTRA=($GFT_FLAGS)

    phase "$FAMILY train-cfg" "$OUT/cfg" \
        "$PYTHON" "scripts/train_$FAMILY.py" --objective cfg --steps "$STEPS_F" "${COMMON[@]}" --out "$OUT/cfg"
    phase "$FAMILY train-gft" "$OUT/gft" \
        "$PYTHON" "scripts/train_$FAMILY.py" --objective gft --steps "$STEPS_F" "${COMMON[@]}" "${GFT_EXTRA[@]}" \
        --out "$OUT/gft"
    PAPER_RUN=()
    if [[ "$PAPER" == 1 ]]; then
        phase "$FAMILY train-gft-paper" "$OUT/gft-paper" \
            "$PYTHON" "scripts/train_$FAMILY.py" --objective gft --steps "$STEPS_F" "${COMMON[@]}" "${GFT_EXTRA[@]}" \
            --beta-embed-lr 1 --out "$OUT/gft-paper"
        PAPER_RUN=(--gft "gft-paper=$OUT/gft-paper/model")
    fi
    phase "$FAMILY finetune-gft" "$OUT/gft-ft" \
        "$PYTHON" "scripts/train_$FAMILY.py" --objective gft --init-from "$OUT/cfg/model" --steps "$FT_STEPS_F" \
        --lr "$FT_LR_F" --warmup-steps 5 --batch-size "$BATCH" --train-images "$TRAIN_IMAGES" --seed "$SEED" \
        --save-every 0 --keep-last 1 --threads "$THREADS" "${GFT_EXTRA[@]}" --out "$OUT/gft-ft"
    phase "$FAMILY sweep" "" \
        "$PYTHON" scripts/sweep.py "${SWEEP[@]}" --cfg "cfg=$OUT/cfg/model" --gft "gft-scratch=$OUT/gft/model" \
        "${PAPER_RUN[@]}" --gft "gft-finetune=$OUT/gft-ft/model" --out "$DOCS" --samples-dir "$OUT/samples"
    for S in $CURVE_F; do  # learning curve: the runs' own snapshots at S steps
        SNAP=$(printf 'snapshots/step-%06d' "$S")
        if [[ ! -d "$OUT/cfg/$SNAP" || ! -d "$OUT/gft/$SNAP" ]]; then
            echo "error: no snapshot at step $S in $OUT/cfg or $OUT/gft (CURVE values must be multiples of $QUARTER)" >&2
            exit 2
        fi
        PAPER_SNAP=()
        # the paper-setting run joins the curve when it has the snapshot (a run trained without --export-every,
        # e.g. one copied in from elsewhere, is swept at its end only)
        if [[ "$PAPER" == 1 && -d "$OUT/gft-paper/$SNAP" ]]; then
            PAPER_SNAP=(--gft "gft-paper=$OUT/gft-paper/$SNAP")
        fi
        phase "$FAMILY curve-sweep-$S" "" \
            "$PYTHON" scripts/sweep.py "${SWEEP[@]}" --cfg "cfg=$OUT/cfg/$SNAP" --gft "gft-scratch=$OUT/gft/$SNAP" \
            "${PAPER_SNAP[@]}" --no-floors --out "$DOCS/curve-$S"
    done
done
"$PYTHON" scripts/experiment_summary.py --docs "$DOCS_ROOT" --runs "$OUT_ROOT"
echo "== done; results in $DOCS_ROOT/summary.md"
