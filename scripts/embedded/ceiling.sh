#!/usr/bin/env bash
# Each text task's ceiling: one centralised LoRA fine-tune of the FM (MiniLM) on the whole training split, with the
# tables' LoRA, learning rate and batch: FedPETuning with a single client that takes part in every round, so each
# round is one epoch over all the data (CEILING_EPOCHS, default 5, the learning rate decaying linearly across them),
# evaluated every epoch. It shows that a task is neither trivial nor out of reach for the FM; make_tables.py prints it
# under Table 1. Seed CEILING_SEED (default 1). Writes $RESULTS/ceiling/minilm/<task>/centralised/FedPETuning/.
#   bash scripts/embedded/ceiling.sh [--dry-run]     (BBC=1 also the BBC block's two tasks)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
started=$(date +%s)
tasks=(wiki-topics wiki-pairs)
require datasets/wiki-pairs "the embedded Wikipedia data"
if [ "$BBC" = 1 ]; then require datasets/bbc-pairs "the embedded BBC data"; tasks+=(bbc bbc-pairs); fi
for task in "${tasks[@]}"; do
    SEEDS="${CEILING_SEED:-1}" cell ceiling minilm "$task" centralised FedPETuning --num_clients 1 --proportion 1 \
        --num_rounds "${CEILING_EPOCHS:-5}" --eval_interval 1 --eval_sub_model False
done
wait_jobs || { echo "== ceiling: some runs FAILED (see above)"; exit 1; }
echo "== ceiling finished in $(( $(date +%s) - started )) s"
