#!/usr/bin/env bash
# Table 3 (ablation, QNLI IID). Our reading of the names (spec §4.13, an inference):
#   FedPFT_N: undistilled sub-FM, no alignment   FedPFT_B: distilled sub-FM, no alignment
#   FedPFT_D: undistilled sub-FM + alignment      FedPFT:   distilled sub-FM + alignment
# Alignment is disabled with --align_interval 0 (never crashes, spec §6.9).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MODELS="${MODELS:-bert-base-uncased roberta-base}"
build_sub_fms $MODELS
for model in $MODELS; do
    plain="$(sub_dir "$model")"; distilled="$(sub_dir "$model" distilled)"
    fedtune "$model" qnli --method pft --sub_model_checkpoint "$plain" --align_interval 0          # FedPFT_N
    fedtune "$model" qnli --method pft --sub_model_checkpoint "$distilled" --align_interval 0      # FedPFT_B
    fedtune "$model" qnli --method pft --sub_model_checkpoint "$plain" --align_interval 10         # FedPFT_D
    fedtune "$model" qnli --method pft --sub_model_checkpoint "$distilled" --align_interval 10     # FedPFT
    fedtune "$model" qnli --method fedot --emulator_layers 5                                       # FedOT
done
"$PY" "$root/scripts/summarize.py" "$root/federated_proxy_finetuning/fed-result/qnli"
