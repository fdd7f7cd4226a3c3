#!/usr/bin/env bash
# Table 3 (ablation) on the sentence-pair proxy (QNLI's analogue), MiniLM, IID. Our reading of the names (spec
# §4.13, an inference): FedPFT_N = undistilled sub-FM, no alignment; FedPFT_B = distilled, no alignment;
# FedPFT_D = undistilled + alignment; FedPFT = distilled + alignment; FedOT = the distilled layer-drop emulator.
# FedOT and FedPFT are Table 1's bbc-pairs cells when those are finished (common.sh: shared_cell).
#   bash scripts/embedded/table3.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
started=$(date +%s)
require datasets/bbc-pairs "the embedded BBC data"
build_models minilm
study=(--eval_interval "${EVAL_INTERVAL:-5}" --eval_sub_model False)
for method in FedOT FedPFT_N FedPFT_B FedPFT_D FedPFT; do
    case "$method" in  # FedOT and FedPFT train as Table 1's bbc-pairs cells: borrowed when those are finished
        FedOT | FedPFT) shared_cell table3 minilm bbc-pairs iid "$method" "${study[@]}" ;;
        *) cell table3 minilm bbc-pairs iid "$method" "${study[@]}" ;;
    esac
done
table_done "$started" table3
