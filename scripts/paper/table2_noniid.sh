#!/usr/bin/env bash
# Table 2 (non-IID, spec §7): FedPETuning, FedOT and FedPFT on SST-2 and QNLI under FLGo's Dirichlet label skew
# Dir(alpha * p) with alpha in {1, 5, 10} (spec §4.3; alpha = 1 is the most skewed). FedOT uses its distilled
# emulator (as in Table 1).
# Cells: $RESULTS/table2/<model>/<task>/dir{1,5,10}/<method>/. Options and environment: scripts/paper/common.sh.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODELS="${MODELS:-bert-base-uncased roberta-base}"
TASKS="${TASKS:-sst2 qnli}"
ALPHAS="${ALPHAS:-1 5 10}"
for model in $MODELS; do
    build_sub_fm "$model"
    build_emulator "$model"
done
for seed in $SEEDS; do
    for model in $MODELS; do
        sub="$(sub_fm_dir "$model")-distilled"
        emulator="$(emulator_dir "$model")-distilled"
        for task in $TASKS; do
            for alpha in $ALPHAS; do
                cell=(table2 "$model" "$task" "dir$alpha")
                noniid=(--partitioner dir --dir_alpha "$alpha.0")
                fedtune "${cell[@]}" FedPETuning "$seed" "${noniid[@]}" --method peft
                fedtune "${cell[@]}" FedOT "$seed" "${noniid[@]}" --method fedot --sub_model_checkpoint "$emulator"
                fedtune "${cell[@]}" FedPFT "$seed" "${noniid[@]}" --method pft --sub_model_checkpoint "$sub" \
                    --align_interval 10 --align_retained_ratio 0.5
            done
        done
    done
done
collect table2
