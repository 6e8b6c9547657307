#!/usr/bin/env bash
# Every GPU bench of the project in one go (<= 8 minutes on one H100/H200), then one table:
#   train_step    bench/train_step.py   training step per phase at the official batches
#   export_speed  bench/export_speed.py CAM export images/s (old vs batched path)
#   gpu_smoke     bench/gpu_smoke.py    voc-gpu-smoke up to pseudo_masks, per-stage extrapolation
#   sam_speed     bench/sam_speed.py    sam_masks images/s (ViT-H, official settings) vs Meta's generator
#   m2f_step      bench/m2f_step.py     Mask2Former Swin-L s/iter (final model)
# Without CUDA every bench that can runs with small arguments (figures say nothing about a GPU)
# and the CUDA-only ones print a skip line. Logs: $LOGS (default runs/gpu_check/).
# Usage: bench/gpu_check.sh   (from the project root; SAM_CHECKPOINT=path for real ViT-H weights)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOGS=${LOGS:-runs/gpu_check}
mkdir -p "$LOGS"
export PYTHONPATH=${PYTHONPATH:-$PWD}
CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
SAM_ARGS=()
[ -n "${SAM_CHECKPOINT:-}" ] && SAM_ARGS+=(--checkpoint "$SAM_CHECKPOINT")
if [ "$CUDA" = 1 ]; then
  BENCHES=(
    "train_step|90|bench/train_step.py"
    "export_speed|90|bench/export_speed.py --images 160 --old-images 16"
    "gpu_smoke|180|bench/gpu_smoke.py"
    "sam_speed|120|bench/sam_speed.py --images 12 --points-per-batch 256 ${SAM_ARGS[*]:-}"
    "m2f_step|120|bench/m2f_step.py --iters 40"
  )
else
  echo "no CUDA: small CPU runs, CUDA-only benches skipped; no figure below is a GPU figure"
  BENCHES=(
    "train_step|600|bench/train_step.py --steps 1"
    "export_speed|300|bench/export_speed.py --images 4 --old-images 4 --batch-size 2 --workers 0 --writer-threads 2"
    "gpu_smoke|0|SKIP: trains voc-gpu-smoke (DeiT-S, ViT-B/32, 200 steps a phase): needs CUDA"
    "sam_speed|300|bench/sam_speed.py --images 1 --points-per-side 8 --skip-reference"
    "m2f_step|60|bench/m2f_step.py"
  )
fi
declare -a ROWS
for spec in "${BENCHES[@]}"; do
  IFS='|' read -r name limit cmd <<< "$spec"
  if [ "$limit" = 0 ]; then
    ROWS+=("$(printf '%-13s %-8s %6s  %s' "$name" skipped - "${cmd#SKIP: }")"); echo "$name: ${cmd}"; continue
  fi
  echo "== $name: $cmd (limit ${limit}s)"
  start=$(date +%s)
  timeout "$limit" $PY $cmd > "$LOGS/$name.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  case $rc in 0) state=ok ;; 124) state=timeout ;; *) state="rc=$rc" ;; esac
  # the headline: a RESULT line if the bench prints one, else its last non-empty line
  head=$(grep -E '_RESULT' "$LOGS/$name.log" | tail -1)
  [ -z "$head" ] && head=$(grep -v '^\s*$' "$LOGS/$name.log" | tail -1)
  if [ $rc = 0 ] && grep -q ': skipped' "$LOGS/$name.log"; then state=skipped; head=$(grep ': skipped' "$LOGS/$name.log" | tail -1); fi
  ROWS+=("$(printf '%-13s %-8s %6s  %s' "$name" "$state" "$secs" "${head:0:110}")")
  tail -n 15 "$LOGS/$name.log"
done
echo
printf '%-13s %-8s %6s  %s\n' bench state seconds headline
for r in "${ROWS[@]}"; do echo "$r"; done
echo "full outputs: $LOGS/*.log"
