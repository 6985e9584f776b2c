#!/usr/bin/env bash
# run.sh - the paper's comparison in miniature: ROPD against LOPD and the black-box baselines on the
# toy world, under the same budget of training prompts and the same seeds; then the table and plot.
#
#   bash run.sh            # 7 methods x 2 seeds x 60 steps
#   bash run.sh --quick    # 7 methods x 1 seed x 20 steps (plus the world's
#                          # one-time build, 5.5 minutes, when it is not cached yet)
#   bash run.sh --seeds "0 1 2" --out results3
#
# Finished runs are reused and interrupted ones resumed, so a rerun only does what is missing.
# Writes OUT/results.md, OUT/results.json, OUT/accuracy.png (with matplotlib) and OUT/runs/*.
set -euo pipefail
cd "$(dirname "$0")"

QUICK=0
SEEDS=""
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --seeds) SEEDS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  STEPS=20; EVAL_EVERY=5; EVAL_SAMPLES=100; SEEDS=${SEEDS:-0}; OUT=${OUT:-results/quick}
else
  STEPS=60; EVAL_EVERY=5; EVAL_SAMPLES=200; SEEDS=${SEEDS:-"0 1"}; OUT=${OUT:-results}
fi
METHODS="ropd lopd exopd tjudge ovd gad sft grpo"

# 1. the environment: this python if it has the requirements, else .venv (created once)
PY=${PYTHON:-python3}
need="import torch, transformers, tokenizers, numpy, openai, anthropic, tqdm"
if ! "$PY" -c "$need" 2>/dev/null; then
  [ -x .venv/bin/python ] || python3 -m venv .venv
  PY=.venv/bin/python
  # torch pinned: on a CPU box an unpinned torch pulls a multi-GB CUDA build
  "$PY" -c "$need" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0 -r requirements.txt
fi
if ! "$PY" -c "import matplotlib" 2>/dev/null; then
  "$PY" -m pip install -q matplotlib 2>/dev/null \
    || echo "run.sh: matplotlib could not be installed; the table is written, the plot is not" >&2
fi

# 2. the toy world (built once, cached)
"$PY" toy.py

# 3. every method, every seed, the same budget: STEPS x 16 prompts (the toy preset)
for seed in $SEEDS; do
  for m in $METHODS; do
    dir="$OUT/runs/$m-s$seed"
    if [ -f "$dir/summary.json" ] && grep -q "\"steps\": $STEPS," "$dir/summary.json"; then
      echo "== $m seed $seed: done already ($dir)"; continue
    fi
    echo "== $m seed $seed"
    resume=()
    [ -f "$dir/latest" ] && resume=(--resume "$dir")
    # a teacher cache per run, so each run's teacher calls and tokens are its own
    "$PY" ropd.py --method "$m" --seed "$seed" --steps "$STEPS" --eval-every "$EVAL_EVERY" \
      --eval-samples "$EVAL_SAMPLES" --save-every 20 --keep-last 1 --log-samples 2 \
      --out "$dir" --cache "$dir/teacher_cache.sqlite" "${resume[@]}"
  done
done

# 4. the table and the plot
"$PY" report.py "$OUT/runs" --out "$OUT" --threshold 0.75
