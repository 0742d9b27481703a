#!/usr/bin/env bash
# GPU check of the torch bridge, capped at 8 minutes on one H100/H200 (one deadline,
# TOTAL_S, default 450 s, caps every stage; stages run in the order below, most important first):
#   1. bench_step, bf16: OBLR-PO update vs GRPO update on the same batch, Qwen3-0.6B shape with the
#      real Qwen3 vocabulary (151936), random weights; BF16_RUNS times (default 2, each a fresh
#      process: the host-bound bf16 ratio varies by run), with torch.profiler operator tables of one
#      GRPO and one OBLR-PO update in the first (profile_step_<dtype>.txt);
#   2. qwen3_validation: theory vs practice at fixed θ on the built-in task with a Qwen3-0.6B-shaped
#      model (character vocabulary, pretrained on GPU until its expected reward reaches 0.3), fp32,
#      and its figure;
#   3. bench_step, fp32 (the same, once);
#   4. bench_step_phases (bf16): each update's host time and operators by phase.
# Outputs go under GPU_CHECK_DIR (default results/gpu_check); when $OUT is set (the device tool's
# folder, which returns at most 8 files), everything is also packed into $OUT/gpu_check.tar.gz,
# beside copies of the bench JSONs and the validation report. Each stage also has its own limit
# (T_BENCH, T_VAL, T_PHASES), so one slow stage cannot eat the others' time. QUICK=1 runs the same
# pipeline on a CPU with tiny sizes (a dry run of the script's logic, not a GPU measurement; with
# M = 4 groups its z-tests are not calibrated).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${GPU_CHECK_DIR:-results/gpu_check}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ "${QUICK:-0}" == "1" ]]; then
  DEV=cpu; SHAPE=(--hidden 64 --n-layers 2 --heads 4 --kv-heads 2 --head-dim 16 --intermediate 128)
  BENCH=(--vocab 512 --batch 2 --group 4 --prompt-len 8 --completion-len 16 --repeats 2)
  VAL=(--model tiny --prompts 3 --groups 4 --group-size 4 --pretrain-steps 20 --device cpu --dtype float64)
  T_BENCH=300; T_VAL=300
else
  DEV=cuda; SHAPE=(--shape 0.6B)
  BENCH=(--vocab 151936 --batch 4 --group 8 --prompt-len 64 --completion-len 192 --repeats 5)
  BF16_ROUNDS=(--repeats 9 --warmup 2)  # bf16 is the target ratio: more rounds for it
  VAL=(--model shape:0.6B --prompts 8 --groups 16 --group-size 8 --pretrain-steps "${PRETRAIN_STEPS:-200}" --device cuda --dtype float32)
  T_BENCH="${T_BENCH:-120}"; T_VAL="${T_VAL:-200}"  # per-stage time limits (s), settable
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpu.csv" 2>&1 || true
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')" || exit 2
fi

status=0
# One deadline for the whole script (TOTAL_S seconds, default 450: under 8 minutes with the
# interpreter starts): each stage runs under min(its own limit, the time left), and a stage with
# under 20 s left is skipped (reported, exit status 1). Stages run in priority order: the bf16
# target ratio, the validation and its figure, the fp32 ratio, the phase breakdown.
DEADLINE=$((SECONDS + ${TOTAL_S:-450}))
limit() {  # limit STAGE_LIMIT -> seconds this stage may run (0: skip it)
  local left=$((DEADLINE - SECONDS)); (( left < 20 )) && { echo 0; return; }
  echo $(( left < $1 ? left : $1 ))
}
skip() { echo "skipped $1: under 20 s of TOTAL_S=${TOTAL_S:-450} left"; status=1; }

bench() {  # bench DTYPE RUN_INDEX
  local dt="$1" i="$2" tag="$1" t; [[ "$i" != "1" ]] && tag="${dt}_run$i"
  local prof=(); [[ "$i" == "1" ]] && prof=(--profile "$OUT_DIR/profile_step_$dt.txt")
  local rounds=(); [[ "$dt" == "bfloat16" ]] && rounds=("${BF16_ROUNDS[@]}")
  echo "== bench_step ($tag)"
  t=$(limit "$T_BENCH"); [[ "$t" == 0 ]] && { skip "bench_step $tag"; return; }
  timeout "$t" python experiments/benchmarks/bench_step.py "${SHAPE[@]}" "${BENCH[@]}" "${rounds[@]}" --device "$DEV" --dtype "$dt" \
    "${prof[@]}" > "$OUT_DIR/bench_step_$tag.json" 2> "$OUT_DIR/bench_step_$tag.log" || { echo "bench_step $tag failed (see log)"; status=1; }
  python - "$OUT_DIR/bench_step_$tag.json" <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
keys = ("device", "params", "tokens", "median_s", "ratio_oblr_po_over_grpo", "ratio_min_oblr_po_over_grpo",
        "ratio_compute_ops_oblr_po_over_grpo", "ratio_ghost_over_grpo", "meets_target")
print({k: d.get(k) for k in keys})
PY
}

if [[ "$DEV" == "cuda" ]]; then
  for i in $(seq 1 "${BF16_RUNS:-2}"); do bench bfloat16 "$i"; done
fi

echo "== qwen3_validation"
t=$(limit "$T_VAL")
if [[ "$t" == 0 ]]; then
  skip qwen3_validation
else
  timeout "$t" python experiments/qwen3_validation.py "${VAL[@]}" --out "$OUT_DIR/qwen3_validation" --quiet \
    > "$OUT_DIR/qwen3_validation.txt" 2> "$OUT_DIR/qwen3_validation.log" || { echo "validation failed (see log)"; status=1; }
  head -40 "$OUT_DIR/qwen3_validation.txt"
  python paper_figures/qwen3_validation.py "$OUT_DIR/qwen3_validation" || status=1
fi

bench float32 1

echo "== bench_step_phases (bf16 on a GPU: the host's time to issue each phase)"
PH_DT=bfloat16; [[ "$DEV" == "cpu" ]] && PH_DT=float32
t=$(limit "${T_PHASES:-90}")
if [[ "$t" == 0 ]]; then
  skip bench_step_phases
else
  timeout "$t" python experiments/benchmarks/bench_step_phases.py "${SHAPE[@]}" "${BENCH[@]}" --repeats 3 --warmup 1 \
    --device "$DEV" --dtype "$PH_DT" > "$OUT_DIR/bench_step_phases.json" 2> "$OUT_DIR/bench_step_phases.log" \
    || { echo "bench_step_phases failed (see log)"; status=1; }
fi
echo "outputs in $OUT_DIR after $SECONDS s (exit $status)"
if [[ -n "${OUT:-}" ]]; then  # at most 8 files come back from $OUT: one archive, 6 key files
  mkdir -p "$OUT"
  tar czf "$OUT/gpu_check.tar.gz" -C "$OUT_DIR" . || status=1
  for f in "$OUT_DIR"/bench_step_*.json; do [[ -f "$f" ]] && cp "$f" "$OUT/"; done
  [[ -f "$OUT_DIR/qwen3_validation/report.json" ]] && cp "$OUT_DIR/qwen3_validation/report.json" "$OUT/qwen3_validation_report.json"
  ls "$OUT"
fi
exit $status
