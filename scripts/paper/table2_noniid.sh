#!/usr/bin/env bash
# Table 2 (non-IID): FLGo Dirichlet Dir(alpha * p) label skew with alpha in {1, 5, 10} on SST-2 and QNLI.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODELS="${MODELS:-bert-base-uncased roberta-base}"
TASKS="${TASKS:-sst2 qnli}"
build_sub_fms $MODELS
for model in $MODELS; do
    for task in $TASKS; do
        for alpha in 1.0 5.0 10.0; do
            noniid=(--partitioner dir --dir_alpha "$alpha")
            fedtune "$model" "$task" --method peft "${noniid[@]}"
            fedtune "$model" "$task" --method fedot --emulator_layers 5 "${noniid[@]}"
            fedtune "$model" "$task" --method pft --sub_model_checkpoint "$(sub_dir "$model" distilled)" \
                --align_interval 10 --align_retained_ratio 0.5 "${noniid[@]}"
        done
    done
done
"$PY" "$root/scripts/summarize.py" "$root/federated_proxy_finetuning/fed-result"
