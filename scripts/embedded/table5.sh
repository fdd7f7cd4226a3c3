#!/usr/bin/env bash
# Table 5 (beyond the paper): FedPFT on a decoder LLM. SmolLM2-135M-Instruct (bash scripts/fetch_assets.sh --llm) on
# wiki-qa, IID, seeds SEEDS: FedPETuning (LoRA on the full LLM), FedOT (the layer-drop emulator, distilled with the
# sub-FM's budget), FedOT w/o KD and FedPFT (t = LLM_ALIGN_T, default 4); with NONIID=1 also FedPETuning and FedPFT
# on Dir(1) over the article topics.
# Scaled to about 2.5 hours of this machine: LLM_ROUNDS rounds (default 10) of 2 of 20 clients, half a local epoch
# each; the FM evaluated at the last round on the 551 held-out records (LLM_EVAL_SAMPLES=N: N of them), and the untuned FM
# (round 0: the same model for every method and seed) once, in FedPETuning's first seed; LLM_KD_STEPS distillation
# steps (default 50) for the sub-FM and the emulator. See common.sh for the rest.
#   bash scripts/embedded/table5.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
started=$(date +%s)
require datasets/wiki-qa "the wiki-qa task"
build_models smollm2 wiki-qa
ROUNDS="${LLM_ROUNDS:-10}"
first_seed="${SEEDS%% *}"
settings=(iid)
if [ "${NONIID:-0}" = 1 ]; then settings+=(dir1); fi
for setting in "${settings[@]}"; do
    partition=()
    if [ "$setting" = dir1 ]; then partition=(--partitioner dir --dir_alpha 1); fi
    for method in FedPETuning FedOT FedOT-noKD FedPFT; do
        if [ "$setting" != iid ] && [ "${method#FedOT}" != "$method" ]; then continue; fi
        all_seeds="$SEEDS"
        for seed in $all_seeds; do
            zero=False
            if [ "$method" = FedPETuning ] && [ "$seed" = "$first_seed" ]; then zero=True; fi
            SEEDS="$seed" ALIGN_T="${LLM_ALIGN_T:-4}" cell table5 smollm2 wiki-qa "$setting" "$method" \
                "${partition[@]}" --eval_interval "$ROUNDS" --eval_round_zero "$zero" --eval_sub_model False
        done
        SEEDS="$all_seeds"
    done
done
table_done "$started" table5
