#!/usr/bin/env bash
# Table 1 (IID): FedPETuning, FedOT and FedPFT on SST-2, QNLI, MNLI, QQP with BERT-base and RoBERTa-base.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODELS="${MODELS:-bert-base-uncased roberta-base}"
TASKS="${TASKS:-sst2 qnli mnli qqp}"
build_sub_fms $MODELS
for model in $MODELS; do
    for task in $TASKS; do
        for seed in $SEEDS; do
            fedtune "$model" "$task" --seed "$seed" --method peft
            fedtune "$model" "$task" --seed "$seed" --method fedot --adapter_layers 1 1 --emulator_layers 5
            fedtune "$model" "$task" --seed "$seed" --method pft --sub_model_checkpoint "$(sub_dir "$model" distilled)" \
                --align_interval 10 --align_retained_ratio 0.5
        done
    done
done
"$PY" "$root/scripts/summarize.py" "$root/federated_proxy_finetuning/fed-result"
