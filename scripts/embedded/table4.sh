#!/usr/bin/env bash
# Table 4 (parameter study) on wiki-pairs (with BBC=1 also bbc-pairs), MiniLM, IID: alignment interval t in
# {5, 10, 20} at p = 0.5, and updated-neuron proportion p in {0.3, 0.5, 0.8} at t = 10 (p = 1 -
# --align_retained_ratio). The t = 10, p = 0.5 run is the `t10` setting and stands for both rows.
#   bash scripts/embedded/table4.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
started=$(date +%s)
tasks=(wiki-pairs)
require datasets/wiki-pairs "the embedded Wikipedia data"
build_models minilm wiki-pairs
if [ "$BBC" = 1 ]; then build_models minilm; tasks+=(bbc-pairs); fi
for task in "${tasks[@]}"; do
    study=($(eval_flags "$task") --eval_sub_model False)
    for t in 5 10 20; do  # t = 10, p = 0.5 trains as Table 1's FedPFT: borrowed when that is finished
        if [ "$t" = 10 ]; then step=shared_cell; else step=cell; fi
        ALIGN_T="$t" "$step" table4 minilm "$task" "t$t" FedPFT --align_retained_ratio 0.5 "${study[@]}"
    done
    for p in 0.3 0.8; do
        retained=$(awk "BEGIN { printf \"%g\", 1 - $p }")
        ALIGN_T=10 cell table4 minilm "$task" "p$p" FedPFT --align_retained_ratio "$retained" "${study[@]}"
    done
done
table_done "$started" table4
