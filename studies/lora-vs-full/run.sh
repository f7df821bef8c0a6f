#!/usr/bin/env bash
# The LoRA-vs-full study end to end (README, "LoRA against full fine-tuning"): the base model,
# then for sonnets and SST-5, LoRA at ranks 1, 4 and 32 on two sets of target modules and full
# fine-tuning, 3 seeds each, and the comparison: 42 fine-tuning runs. About an hour on a quiet
# 2-core CPU (RANKS=1,2,4,8,16,32 adds the ranks between, for twice the time); rerunning it
# skips what is done and resumes what was interrupted.
#   bash studies/lora-vs-full/run.sh [--data-root DIR]       (default: ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${2:-../shared/data}
python studies/lora-vs-full/corpus.py --data-root "$ROOT"
[ -f runs/study-base/summary.json ] || loraft train recipes/study-base.yaml train.resume=auto
GRID=(--grid "lora.r=${RANKS:-1,4,32}" --grid "lora.target_modules=[c_attn],[c_attn,c_proj,c_fc]" --seeds 3)
for task in sst sonnets; do
  loraft sweep recipes/study-$task.yaml "${GRID[@]}" --out runs/study-$task --data-root "$ROOT"
  loraft sweep recipes/study-$task.yaml method=full train.lr=5e-4 --seeds 3 --out runs/study-$task --data-root "$ROOT"
done
loraft compare runs/study-sonnets/study-* --metric gen_chrf --out studies/lora-vs-full/sonnets
loraft compare runs/study-sst/study-* --metric eval_accuracy --out studies/lora-vs-full/sst
loraft compare runs/study-sonnets/study-* --metric eval_loss --out studies/lora-vs-full/sonnets-loss
loraft compare runs/study-sst/study-* --metric eval_macro_f1 --out studies/lora-vs-full/sst-f1
