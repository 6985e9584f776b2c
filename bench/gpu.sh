#!/usr/bin/env bash
# Every GPU figure of the README's Performance section, measured in one run on one GPU (planned to
# take about 8 minutes on one H100; each part is cut off at its own time limit rather than overrun):
#   1. a GRPO step, ropd.py against TRL's GRPOTrainer      (bench/grpo_step.py)
#   2. per-token log-prob memory and time against TRL       (bench/logprobs.py)
#   3. rollouts: hf, hf with a static cache, vLLM           (bench/rollouts.py)
#   4. one FSDP2 training step's memory per GPU, Qwen3-0.6B's shape built from its config
#                                                           (bench/fsdp_memory.py)
#
#   pip install -r bench/requirements.txt    # TRL (and vLLM for part 3: pip install vllm)
#   bash bench/gpu.sh                        # on the GPU machine; prints the tables
#   bash bench/gpu.sh --tiny                 # CPU, tiny shapes: checks that it all runs (a test does)
# PYTHON: the Python to run (default python); VLLM_PYTHON: another one with vLLM, for part 3 only.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=${TMPDIR:-/tmp}/bench-gpu-sh.log
FAILED=0
: > "$LOG"
if [[ "${1:-}" == "--tiny" ]]; then
  DEV=cpu
  STEP=(--hidden 64 --layers 1 --length 16 --prompts 2 --group 2 --steps 1 --warmup 0)
  LOGP=(--lengths 64 --repeat 1)
  ROLL=(--hidden 64 --layers 1 --batches 8 --lengths 16 --rounds 1 --warmup 0 --kv-cache-gb 1)
  FSDP=(--config tiny --batch 2 --length 32)
  LIMIT=600
else
  DEV=cuda
  STEP=(--hidden 1024 --layers 8 --length 512 --steps 4 --warmup 1)
  LOGP=(--lengths 1024 8192 --repeat 3)
  ROLL=(--hidden 1024 --layers 8 --batches 64 256 --lengths 512 --rounds 2 --warmup 1)
  FSDP=(--config qwen3-0.6b --batch 4 --length 2048)
  LIMIT=150
fi

part() {  # part TITLE SECONDS COMMAND...: run it under a time limit, say so if it failed
  local title=$1 limit=$2
  shift 2
  echo
  echo "## $title"
  echo "\$ $*"
  timeout "$limit" "$@" 2>>"$LOG" | grep -v -E "^(Writing|Loading|\{'loss|.*it/s\])"
  local rc=${PIPESTATUS[0]}
  [[ $rc == 0 ]] || { echo "(failed or cut off at ${limit} s: exit $rc; see $LOG)"; FAILED=1; }
}

echo "# bench/gpu.sh on $DEV: $($PY -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")'), $(date -u +%F)"
part "1. GRPO step against TRL" "$LIMIT" $PY bench/grpo_step.py --device $DEV "${STEP[@]}"
part "2. Per-token log-probs against TRL" "$LIMIT" $PY bench/logprobs.py --device $DEV "${LOGP[@]}"
part "3. Rollouts: hf, static cache, vLLM" "$((LIMIT * 2))" $PY bench/rollouts.py --device $DEV "${ROLL[@]}" \
  ${VLLM_PYTHON:+--vllm-python "$VLLM_PYTHON"}
part "4. FSDP2 step memory per GPU" "$LIMIT" $PY -m torch.distributed.run --standalone --nproc_per_node 1 \
  bench/fsdp_memory.py --device $DEV "${FSDP[@]}"
exit $FAILED
