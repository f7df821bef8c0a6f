#!/usr/bin/env bash
# The LoRA-vs-full study end to end (README, "What LoRA bought, measured"): the corpus; two
# bases (GPT-2 and Llama, recipes/study-base*.yaml); then on each base, for SST-5 and sonnets,
# every method with its learning rate tuned on the validation split (3 or 4 values, one seed each)
# and 3 seeds at the chosen value; learning curves on SST; the comparisons into studies/.
# The two bases' work runs side by side, one thread each (PARALLEL=0: one after the other, all
# threads). Rerunning it skips what is done and resumes what was interrupted. The README tables
# are studies/lora-vs-full/tables.md (tables.py); each point's tuning is in *-tuning.md.
#   bash studies/lora-vs-full/run.sh [--data-root DIR]       (default: ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${2:-../shared/data}
STUDY=studies/lora-vs-full
LOGS=runs/study/logs
mkdir -p "$LOGS"
python $STUDY/corpus.py --data-root "$ROOT"

declare -A RECIPE=([gpt2]=study-base [llama]=study-base-llama)  # a base's recipe and run folder

sweep() {  # sweep TASK BASE FAMILY [overrides and flags]: one method's tuned sweep
  local task=$1 base=$2 family=$3
  shift 3
  loraft sweep recipes/study-$task.yaml model.name=runs/${RECIPE[$base]}/checkpoints/best "$@" \
    --out runs/study/$base-$task/$family --data-root "$ROOT"
}

# Learning rates tried per method and task: four values a factor ~3 apart, placed where a first
# run with three (full 1e-4..1e-3, LoRA 1e-3..1e-2, ...) chose an edge of its grid: sonnets
# wanted higher rates for most adapters, SST lower ones for LoRA.
declare -A LR=(
  [sst-full]=1e-4,3e-4,1e-3,3e-3 [sonnets-full]=1e-4,3e-4,1e-3,3e-3
  [sst-lora]=3e-4,1e-3,3e-3,1e-2 [sonnets-lora]=1e-3,3e-3,1e-2,3e-2
  [sst-rslora]=3e-4,1e-3,3e-3 [sonnets-rslora]=3e-4,1e-3,3e-3,1e-2
  [sst-dora]=3e-4,1e-3,3e-3,1e-2 [sonnets-dora]=1e-3,3e-3,1e-2,3e-2
  [sst-pissa]=3e-4,1e-3,3e-3,1e-2 [sonnets-pissa]=3e-4,1e-3,3e-3,1e-2
  [sst-loraplus]=1e-4,3e-4,1e-3,3e-3 [sonnets-loraplus]=3e-4,1e-3,3e-3
  [sst-ia3]=3e-3,1e-2,3e-2 [sonnets-ia3]=3e-3,1e-2,3e-2,1e-1
  [sst-vera]=3e-3,1e-2,3e-2,1e-1 [sonnets-vera]=1e-2,3e-2,1e-1,3e-1
)

methods() {  # methods TASK BASE: every method of the study, each at its own tuned learning rate
  local task=$1 base=$2 all=lora.target_modules=[all-linear]
  tuned() { echo --tune train.lr=${LR[$task-$1]} --seeds 3; }
  sweep "$task" "$base" full method=full $(tuned full)
  sweep "$task" "$base" lora --grid lora.r=1,4,16 --grid "lora.target_modules=[attention],[all-linear]" \
    $(tuned lora)
  sweep "$task" "$base" rslora lora.r=16 $all lora.use_rslora=true $(tuned rslora)
  sweep "$task" "$base" dora lora.r=4 $all lora.use_dora=true $(tuned dora)
  sweep "$task" "$base" pissa lora.r=4 $all lora.init=pissa $(tuned pissa)
  sweep "$task" "$base" loraplus lora.r=4 $all lora.plus_lr_ratio=16 $(tuned loraplus)
  sweep "$task" "$base" ia3 method=ia3 $(tuned ia3)
  sweep "$task" "$base" vera method=vera $(tuned vera)
}

stream() {  # stream BASE: the base model, then everything fine-tuned from it
  local base=$1
  [ -f runs/${RECIPE[$base]}/summary.json ] || loraft train recipes/${RECIPE[$base]}.yaml train.resume=auto
  methods sst "$base"
  methods sonnets "$base"
  sweep sst "$base" learning-full method=full --grid data.train_size=500,1000 \
    --tune train.lr=${LR[sst-full]} --seeds 1
  sweep sst "$base" learning-lora lora.r=4 lora.target_modules=[all-linear] --grid data.train_size=500,1000 \
    --tune train.lr=${LR[sst-lora]} --seeds 1
}

if [ "${PARALLEL:-1}" = 1 ]; then
  OMP_NUM_THREADS=1 stream gpt2 > $LOGS/gpt2.log 2>&1 &
  OMP_NUM_THREADS=1 stream llama > $LOGS/llama.log 2>&1 &
  wait -n && wait -n || { echo "a stream failed: see $LOGS"; exit 1; }
else
  stream gpt2 && stream llama
fi

METHODS="full lora rslora dora pissa loraplus ia3 vera"
for base in gpt2 llama; do
  sst=runs/study/$base-sst sonnets=runs/study/$base-sonnets
  compare() { loraft compare $(for m in $METHODS; do echo "$1/$m"; done) "${@:2}"; }  # each sweep's chosen runs
  compare "$sst" --metric eval_accuracy --out $STUDY/$base-sst
  compare "$sst" --metric eval_macro_f1 --out $STUDY/$base-sst-f1
  compare "$sonnets" --metric eval_loss --out $STUDY/$base-sonnets-loss
  compare "$sonnets" --metric gen_chrf --out $STUDY/$base-sonnets
  loraft compare "$sst"/{full,lora,learning-full,learning-lora} --metric eval_accuracy --out $STUDY/$base-sst-learning
  for task in sst sonnets; do
    for m in $METHODS; do printf '\n### %s\n\n' "$m"; cat "runs/study/$base-$task/$m/tuning.md"; done \
      > $STUDY/$base-$task-tuning.md
  done
done
python $STUDY/tables.py > $STUDY/tables.md
echo "the study took $((SECONDS / 60)) minutes"
