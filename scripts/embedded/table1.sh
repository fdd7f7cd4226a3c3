#!/usr/bin/env bash
# Table 1 (IID) on the embedded assets: FedPETuning, FedOT (distilled emulator), FedOT w/o KD and FedPFT with MiniLM
# on wiki-topics (SST-2's analogue) and wiki-pairs (QNLI's analogue), seeds CLAIM_SEEDS (five by default); the vision
# row (ViT FM pretrained on Fashion-MNIST, MNIST task, t = 4, seeds SEEDS); with BBC=1 the earlier BBC block (bbc,
# bbc-pairs) and with PAPER_SHAPE=1 all-mpnet-base-v2 (the paper's layer shape: 81.1 Mi -> 47.3 Mi) on BBC, seeds
# MPNET_SEEDS (default: SEEDS), MPNET_ROUNDS rounds (default 20).
#   bash scripts/embedded/table1.sh [--dry-run]     (VISION=0 skips the vision row; see common.sh for the rest)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
started=$(date +%s)
METHODS=(FedPETuning FedOT FedOT-noKD FedPFT)
# the FM every TABLE1_EVAL_INTERVAL rounds (default 5, for the curves) and at the last: a 2,200-example evaluation
# costs about 45 s on one thread, as much as five rounds of client training; the sub-FM or emulator only with
# EVAL_SUB_MODEL=True (no table or plot reads it)
EVAL=(--eval_interval "${TABLE1_EVAL_INTERVAL:-5}" --eval_sub_model "${EVAL_SUB_MODEL:-False}")
require datasets/wiki-pairs "the embedded Wikipedia data"
build_models minilm wiki-topics
for task in wiki-topics wiki-pairs; do
    for method in "${METHODS[@]}"; do SEEDS="$CLAIM_SEEDS" cell table1 minilm "$task" iid "$method" "${EVAL[@]}"; done
done
if [ "${VISION:-1}" = 1 ]; then
    require datasets/mnist "the MNIST task"
    build_models vit-tiny
    for method in "${METHODS[@]}"; do  # every round, as committed
        ROUNDS="${VISION_ROUNDS:-20}" ALIGN_T=4 cell table1 vit-tiny mnist iid "$method" --eval_sub_model False
    done
fi
if [ "$BBC" = 1 ]; then
    require datasets/bbc-pairs "the embedded BBC data"
    build_models minilm
    for task in bbc bbc-pairs; do  # every round, as committed
        for method in "${METHODS[@]}"; do cell table1 minilm "$task" iid "$method" --eval_sub_model False; done
    done
fi
if [ "${PAPER_SHAPE:-0}" = 1 ]; then
    build_models mpnet
    for method in "${METHODS[@]}"; do SEEDS="${MPNET_SEEDS:-$SEEDS}" ROUNDS="${MPNET_ROUNDS:-20}" \
        cell table1 mpnet bbc iid "$method" --eval_sub_model False; done
fi
table_done "$started" table1
