#!/usr/bin/env bash
# Every GPU bench of the project in one go, within 8 minutes on one H100/H200 (the time limits
# below add up to 470 s), then one table of the goals against what they measured (bench/gpu_table.py):
#   train_step    bench/train_step.py   training step of match/refine/learn_prompts at the official batches
#   export_speed  bench/export_speed.py CAM export images/s at the VOC scales (old vs batched path)
#   gpu_smoke     bench/gpu_smoke.py    voc-gpu-smoke up to pseudo_masks, per-stage voc-full extrapolation
#   sam_speed     bench/sam_speed.py    sam_masks images/s (ViT-H, official settings)
#   m2f_step      bench/m2f_step.py     Mask2Former Swin-L s/iter (the final model; needs CUDA)
# Without CUDA every bench that can runs with small arguments (no figure is a GPU figure) and the
# CUDA-only one says it is skipped. --quick: the smallest arguments everywhere (tiny models, a few
# images; the plumbing and the table, in about a minute or two on a CPU; tests/test_gpu_check.py).
# Logs: $LOGS (default runs/gpu_check/). SAM_CHECKPOINT=path: real ViT-H weights for sam_speed.
# Usage: bench/gpu_check.sh [--quick]   (from anywhere; runs in the project root)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOGS=${LOGS:-runs/gpu_check}
QUICK=0
[ "${1:-}" = --quick ] && QUICK=1
mkdir -p "$LOGS"
: > "$LOGS/states.tsv"
export PYTHONPATH=${PYTHONPATH:-$PWD}
CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
SAM_ARGS=()
[ -n "${SAM_CHECKPOINT:-}" ] && SAM_ARGS+=(--checkpoint "$SAM_CHECKPOINT")
if [ $QUICK = 1 ]; then
  echo "quick: tiny models and a few images; no figure below is a goal's figure"
  BENCHES=(
    "train_step|300|bench/train_step.py --steps 1 --tiny"
    "export_speed|120|bench/export_speed.py --images 2 --old-images 1 --batch-size 1 --workers 0 --writer-threads 1 --scales 1.0 --backbone deit_tiny_patch16_224"
    "gpu_smoke|300|bench/gpu_smoke.py --config configs/voc-smoke.yaml --work-dir $LOGS/runs --max-images 8 --epochs 1"
    "sam_speed|120|bench/sam_speed.py --images 1 --points-per-side 4 --skip-reference"
    "m2f_step|600|bench/m2f_step.py --iters 20"
  )
elif [ "$CUDA" = 1 ]; then
  BENCHES=(
    "train_step|75|bench/train_step.py"
    "export_speed|60|bench/export_speed.py --images 160 --old-images 16"
    "gpu_smoke|150|bench/gpu_smoke.py"
    "sam_speed|85|bench/sam_speed.py --images 12 --points-per-batch 256 ${SAM_ARGS[*]:-}"
    "m2f_step|100|bench/m2f_step.py --iters 40"
  )
else
  echo "no CUDA: small CPU runs, CUDA-only benches skipped; no figure below is a GPU figure"
  BENCHES=(
    "train_step|600|bench/train_step.py --steps 1"
    "export_speed|300|bench/export_speed.py --images 4 --old-images 4 --batch-size 2 --workers 0 --writer-threads 2"
    "gpu_smoke|900|bench/gpu_smoke.py --config configs/voc-smoke.yaml --work-dir $LOGS/runs"
    "sam_speed|300|bench/sam_speed.py --images 1 --points-per-side 8 --skip-reference"
    "m2f_step|60|bench/m2f_step.py"
  )
fi
for spec in "${BENCHES[@]}"; do
  IFS='|' read -r name limit cmd <<< "$spec"
  echo "== $name: $cmd (limit ${limit}s)"
  start=$(date +%s)
  timeout "$limit" $PY $cmd > "$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in 0) state=ok ;; 124) state=timeout ;; *) state="rc=$rc" ;; esac
  [ $rc = 0 ] && grep -q ': skipped' "$LOGS/$name.log" && state=skipped
  printf '%s\t%s\t%s\n' "$name" "$state" "$(( $(date +%s) - start ))" >> "$LOGS/states.tsv"
  tail -n 15 "$LOGS/$name.log"
done
echo
$PY bench/gpu_table.py "$LOGS" $([ $QUICK = 1 ] && echo --quick)
echo "device: $($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU')"), torch $($PY -c "import torch; print(torch.__version__)"); full outputs: $LOGS/*.log"
! grep -qvP '\t(ok|skipped)\t' "$LOGS/states.tsv"  # exit status: every bench ran or said why not
