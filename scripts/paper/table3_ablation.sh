#!/usr/bin/env bash
# Table 3 (ablation, QNLI IID, spec §4.13). Our reading of the row names (an inference from the names and the
# order of their scores):
#   FedOT     distilled layer-drop emulator (as in Table 1)
#   FedPFT_N  undistilled sub-FM, no alignment        FedPFT_B  distilled sub-FM (Before FL), no alignment
#   FedPFT_D  undistilled sub-FM + alignment (During FL, t = 10)      FedPFT  distilled sub-FM + alignment
# Alignment is switched off with --align_interval 0 (clean, spec §6.9).
# Cells: $RESULTS/table3/<model>/qnli/iid/<method>/. Options and environment: scripts/paper/common.sh.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODELS="${MODELS:-bert-base-uncased roberta-base}"
TASKS="${TASKS:-qnli}"
for model in $MODELS; do
    build_sub_fm "$model"
    build_emulator "$model"
done
for seed in $SEEDS; do
    for model in $MODELS; do
        plain="$(sub_fm_dir "$model")"
        emulator="$(emulator_dir "$model")-distilled"
        for task in $TASKS; do
            cell=(table3 "$model" "$task" iid)
            pft=(--partitioner iid --method pft --align_retained_ratio 0.5)
            shared_fedtune "${cell[@]}" FedOT "$seed" --partitioner iid --method fedot --sub_model_checkpoint "$emulator"
            fedtune "${cell[@]}" FedPFT_N "$seed" "${pft[@]}" --sub_model_checkpoint "$plain" --align_interval 0
            fedtune "${cell[@]}" FedPFT_B "$seed" "${pft[@]}" --sub_model_checkpoint "$plain-distilled" --align_interval 0
            fedtune "${cell[@]}" FedPFT_D "$seed" "${pft[@]}" --sub_model_checkpoint "$plain" --align_interval 10
            shared_fedtune "${cell[@]}" FedPFT "$seed" "${pft[@]}" --sub_model_checkpoint "$plain-distilled" \
                --align_interval 10
        done
    done
done
collect table3
