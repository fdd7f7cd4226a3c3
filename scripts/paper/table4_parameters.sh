#!/usr/bin/env bash
# Table 4 (parameter study, QNLI IID, spec §7): FedPFT with alignment interval t in {5, 10, 20} at p = 0.5, and
# updated-neuron proportion p in {0.3, 0.5, 0.8} at t = 10, where p = 1 - --align_retained_ratio (spec §4.10).
# The default t = 10, p = 0.5 run is one cell, t10, which is both the t = 10 and the p = 0.5 row.
# Cells: $RESULTS/table4/<model>/qnli/{t5,t10,t20,p0.3,p0.8}/FedPFT/. Options and environment: common.sh.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODELS="${MODELS:-bert-base-uncased roberta-base}"
TASKS="${TASKS:-qnli}"
for model in $MODELS; do
    build_sub_fm "$model"
done
# setting name, t, r = 1 - p
SETTINGS=("t5 5 0.5" "t10 10 0.5" "t20 20 0.5" "p0.3 10 0.7" "p0.8 10 0.2")
for seed in $SEEDS; do
    for model in $MODELS; do
        sub="$(sub_fm_dir "$model")-distilled"
        for task in $TASKS; do
            for row in "${SETTINGS[@]}"; do
                read -r setting interval retained <<<"$row"
                run_cell=fedtune
                if [ "$setting" = t10 ]; then run_cell=shared_fedtune; fi  # Table 1's FedPFT when finished
                "$run_cell" table4 "$model" "$task" "$setting" FedPFT "$seed" --partitioner iid --method pft \
                    --sub_model_checkpoint "$sub" --align_interval "$interval" --align_retained_ratio "$retained"
            done
        done
    done
done
collect table4
