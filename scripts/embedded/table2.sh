#!/usr/bin/env bash
# Table 2 (non-IID): flgo's Dirichlet partition Dir(alpha * p) with alpha in {1, 5, 10}; FedPETuning, FedOT and
# FedPFT on the BBC topic task and the sentence-pair proxy (MiniLM). Only the final round is evaluated beside
# every 5th (EVAL_INTERVAL) to keep the table within its time budget.
#   bash scripts/embedded/table2.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
started=$(date +%s)
require datasets/bbc-pairs "the embedded BBC data"
build_models minilm
for task in bbc bbc-pairs; do
    for alpha in 1 5 10; do
        for method in FedPETuning FedOT FedPFT; do
            cell table2 minilm "$task" "dir$alpha" "$method" --partitioner dir --dir_alpha "$alpha" \
                --eval_interval "${EVAL_INTERVAL:-5}" --eval_sub_model False
        done
    done
done
table_done "$started" table2
