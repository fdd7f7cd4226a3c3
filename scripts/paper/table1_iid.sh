#!/usr/bin/env bash
# Table 1 (IID, spec §7): FedPETuning, FedOT and FedPFT on SST-2, QNLI, MNLI and QQP with BERT-base and
# RoBERTa-base. FedOT uses its emulator distilled with FedPFT's layer-level budget, so that the two proxies are
# built equally well; FedOT-noKD (the undistilled emulator) shows what that distillation is worth.
# Cells: $RESULTS/table1/<model>/<task>/iid/<method>/. Options and environment: scripts/paper/common.sh.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODELS="${MODELS:-bert-base-uncased roberta-base}"
TASKS="${TASKS:-sst2 qnli mnli qqp}"
for model in $MODELS; do
    build_sub_fm "$model"
    build_emulator "$model"
done
for seed in $SEEDS; do  # seeds outermost: a complete one-seed table exists early
    for model in $MODELS; do
        sub="$(sub_fm_dir "$model")-distilled"
        emulator="$(emulator_dir "$model")"
        for task in $TASKS; do
            cell=(table1 "$model" "$task" iid)
            fedtune "${cell[@]}" FedPETuning "$seed" --partitioner iid --method peft
            fedtune "${cell[@]}" FedOT "$seed" --partitioner iid --method fedot --sub_model_checkpoint "$emulator-distilled"
            fedtune "${cell[@]}" FedOT-noKD "$seed" --partitioner iid --method fedot --sub_model_checkpoint "$emulator"
            fedtune "${cell[@]}" FedPFT "$seed" --partitioner iid --method pft --sub_model_checkpoint "$sub" \
                --align_interval 10 --align_retained_ratio 0.5
        done
    done
done
collect table1
