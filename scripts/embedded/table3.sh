#!/usr/bin/env bash
# Table 3 (ablation) on the sentence-pair proxy (QNLI's analogue), MiniLM, IID. Our reading of the names (spec
# §4.13, an inference): FedPFT_N = undistilled sub-FM, no alignment; FedPFT_B = distilled, no alignment;
# FedPFT_D = undistilled + alignment; FedPFT = distilled + alignment; FedOT = the distilled layer-drop emulator.
#   bash scripts/embedded/table3.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
started=$(date +%s)
require datasets/bbc-pairs "the embedded BBC data"
build_models minilm
for method in FedOT FedPFT_N FedPFT_B FedPFT_D FedPFT; do
    cell table3 minilm bbc-pairs iid "$method" --eval_interval "${EVAL_INTERVAL:-5}" --eval_sub_model False
done
table_done "$started" table3
