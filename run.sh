#!/usr/bin/env bash
# run.sh - the paper's comparison in miniature: every method on every toy world (README, "Worlds"),
# over 5 seeds, under the same budget of training prompts; then the tables, the plots, the signal
# AUCs and the README's figures.
#
#   bash run.sh            # 8 methods x 4 worlds x 5 seeds x 20 steps (1.5-2 hours on 2 cores)
#   bash run.sh --quick    # ropd, lopd and gad x 4 worlds x 1 seed x 20 steps
#   bash run.sh --worlds "default mimicry" --seeds "0 1 2" --methods "ropd lopd" --out results3
#
# Finished runs are reused and interrupted ones resumed, so a rerun only does what is missing.
# Writes OUT/<world>/{results.md,results.json,accuracy.png,signal.json,world.json}, OUT/summary.md,
# OUT/default-run.json (the README's first command, timed), and, without --quick and into the
# default OUT, rewrites the README's generated sections (report.py --readme). Runs: OUT/<world>/runs/*.
set -euo pipefail  # pipefail: a run piped into tee fails the script when the run fails
cd "$(dirname "$0")"

QUICK=0
SEEDS=""
OUT=""
WORLDS="default mimicry xtok imperfect"
METHODS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --seeds) SEEDS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --worlds) WORLDS="$2"; shift ;;
    --methods) METHODS="$2"; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$QUICK" = 1 ]; then
  STEPS=20; SEEDS=${SEEDS:-0}; OUT=${OUT:-results/quick}; METHODS=${METHODS:-"ropd lopd gad"}
else
  STEPS=20; SEEDS=${SEEDS:-"0 1 2 3 4"}; OUT=${OUT:-results}; METHODS=${METHODS:-"ropd lopd exopd tjudge ovd gad sft grpo"}
fi
EVAL_EVERY=5
EVAL_SAMPLES=200

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
    || echo "run.sh: matplotlib could not be installed; the tables are written, the plots are not" >&2
fi
mkdir -p "$OUT"

# 2. the README's first command as a newcomer runs it: an empty cache, so building the default world
#    is part of the time; its world must be the one the comparison uses (same weight fingerprints)
if [ "$QUICK" = 0 ] && [ ! -f "$OUT/default-run.json" ]; then
  echo "== the README's first command: python ropd.py (empty cache)"
  dir="$OUT/default-run"
  rm -rf "$dir"; mkdir -p "$dir"
  start=$SECONDS
  ROPD_CACHE="$dir/cache" "$PY" ropd.py --out "$dir/run" 2>&1 | tee "$dir/log.txt"
  seconds=$((SECONDS - start))
  ROPD_CACHE="$dir/cache" "$PY" toy.py --world default --json "$dir/world.json" >/dev/null
  "$PY" report.py "$OUT" --default-run "$dir/run" "$dir/log.txt" "$seconds" "$dir/world.json"
fi

# 3. each world (built once, cached) and what it is: accuracies and weight fingerprints
for world in $WORLDS; do
  echo "== world $world"
  mkdir -p "$OUT/$world/runs"
  "$PY" toy.py --world "$world" --json "$OUT/$world/world.json" | tail -n 1
done

# 4. every method in every world, the same budget: STEPS x 16 prompts x 8 rollouts (the toy preset);
#    seed by seed, so that an interrupted run.sh leaves every world with the same seeds
for seed in $SEEDS; do
  for world in $WORLDS; do
    for m in $METHODS; do
      dir="$OUT/$world/runs/$m-s$seed"
      if [ -f "$dir/refused.txt" ] || { [ -f "$dir/summary.json" ] && grep -q "\"steps\": $STEPS," "$dir/summary.json"; }; then
        echo "== $world $m seed $seed: done already ($dir)"; continue
      fi
      echo "== $world $m seed $seed"
      resume=()
      [ -f "$dir/latest" ] && resume=(--resume "$dir")
      # a teacher cache per run, so each run's teacher calls and tokens are its own
      if ! "$PY" ropd.py --world "$world" --method "$m" --seed "$seed" --steps "$STEPS" --eval-every "$EVAL_EVERY" \
          --eval-samples "$EVAL_SAMPLES" --save-every 10 --keep-last 1 --log-samples 2 \
          --out "$dir" --cache "$dir/teacher_cache.sqlite" "${resume[@]}" 2>&1 | tee "$dir.log"; then
        # a method the world rules out (LOPD without a shared vocabulary) refuses in one line: recorded
        if grep -q "does not share the student's tokenizer" "$dir.log"; then
          mkdir -p "$dir"; grep "^error:" "$dir.log" | head -1 | sed 's/^error: //' > "$dir/refused.txt"
        else
          exit 1
        fi
      fi
      rm -f "$dir.log"
    done
  done
done

# 5. §4.2's signal analysis on each world's initial student: how well each reward predicts correctness
for world in $WORLDS; do
  if [ ! -f "$OUT/$world/signal.json" ]; then
    "$PY" eval.py signal --world "$world" --prompts 32 --cache "$OUT/$world/signal_cache.sqlite" \
      --out "$OUT/$world/signal.json" | tail -n 5
  fi
done

# 6. the tables, the plots, and (a full run into results/) the README's figures
"$PY" report.py "$OUT" $( [ "$QUICK" = 0 ] && [ "$OUT" = results ] && echo --readme README.md )
