#!/usr/bin/env bash
# Table 3 (ablation) on wiki-pairs (QNLI's analogue), MiniLM, IID, seeds CLAIM_SEEDS (with BBC=1 also bbc-pairs,
# seeds SEEDS).
# Our reading of the names (spec §4.13, an inference): FedPFT_N = undistilled sub-FM, no alignment; FedPFT_B =
# distilled, no alignment; FedPFT_D = undistilled + alignment; FedPFT = distilled + alignment; FedOT = the distilled
# layer-drop emulator. FedOT and FedPFT are Table 1's cells of the task when those are finished (common.sh:
# shared_cell).
#   bash scripts/embedded/table3.sh [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
started=$(date +%s)
tasks=(wiki-pairs)
require datasets/wiki-pairs "the embedded Wikipedia data"
build_models minilm wiki-pairs
if [ "$BBC" = 1 ]; then build_models minilm; tasks+=(bbc-pairs); fi
three_seeds="$SEEDS"
for task in "${tasks[@]}"; do
    study=($(eval_flags "$task") --eval_sub_model False)
    # five seeds where the claims live; the BBC block keeps its three
    if [ "${task#bbc}" = "$task" ]; then SEEDS="$CLAIM_SEEDS"; else SEEDS="$three_seeds"; fi
    for method in FedOT FedPFT_N FedPFT_B FedPFT_D FedPFT; do
        case "$method" in  # FedOT and FedPFT train as Table 1's cells: borrowed when those are finished
            FedOT | FedPFT) shared_cell table3 minilm "$task" iid "$method" "${study[@]}" ;;
            *) cell table3 minilm "$task" iid "$method" "${study[@]}" ;;
        esac
    done
done
table_done "$started" table3
