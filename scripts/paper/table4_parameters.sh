#!/usr/bin/env bash
# Table 4 (parameter study, QNLI IID): alignment interval t in {5, 10, 20} at p = 0.5, and updated-neuron
# proportion p in {0.3, 0.5, 0.8} at t = 10. p = 1 - --align_retained_ratio (spec §4.10).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODELS="${MODELS:-bert-base-uncased roberta-base}"
build_sub_fms $MODELS
for model in $MODELS; do
    distilled="$(sub_dir "$model" distilled)"
    for t in 5 10 20; do
        fedtune "$model" qnli --method pft --sub_model_checkpoint "$distilled" --align_interval "$t" --align_retained_ratio 0.5
    done
    for retained in 0.7 0.2; do  # p = 0.3 and p = 0.8 (p = 0.5 is the t = 10 run above)
        fedtune "$model" qnli --method pft --sub_model_checkpoint "$distilled" --align_interval 10 --align_retained_ratio "$retained"
    done
done
"$PY" "$root/scripts/summarize.py" "$root/federated_proxy_finetuning/fed-result/qnli"
