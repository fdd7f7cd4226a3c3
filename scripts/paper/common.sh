#!/usr/bin/env bash
# Shared settings of the paper-table scripts. They need the paper's assets (see pretrain_models/README.md and
# datasets/README.md) and, realistically, GPUs. Override any variable from the environment, e.g.
#   GPUS=4 ROUNDS=100 bash scripts/paper/table1_iid.sh
# ROUNDS is not stated in the available paper material (spec §7): 100 is an assumption (it must exceed t = 20).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
GPUS="${GPUS:-4}"
ROUNDS="${ROUNDS:-100}"
SEEDS="${SEEDS:-1206}"
PY="${PY:-$root/.venv/bin/python}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
launch() {  # launch <script> <args...>: the reference's accelerate command line
    local script="$1"; shift
    if [ "$GPUS" -gt 1 ]; then
        "$PY" -m accelerate.commands.launch --multi_gpu --num_processes="$GPUS" --num_machines 1 "$script" "$@"
    else
        "$PY" "$script" "$@"
    fi
}
# the README's settings (spec §7): effective batch 16 = 4 per device x 4 GPUs; keep it when GPUS differs
per_device=$(( 16 / GPUS > 0 ? 16 / GPUS : 1 ))
FL_COMMON=(--partitioner iid --learning_rate 0.0008 --num_rounds "$ROUNDS" --num_epochs 1 --lr_scheduler_type 2
           --proportion 0.1 --num_clients 100 --eval_interval 1 --lora_rank 8 --lora_alpha 48
           --per_device_train_batch_size "$per_device" --gradient_accumulation_steps 1 --align_epochs 0.02
           --dataset_path "$root/datasets/glue" --distill_dataset1_path "$root/datasets/bookcorpus"
           --distill_dataset2_path "$root/datasets/wikipedia")
sub_dir() {  # sub_dir <model> [distilled]: the sub-FM folders built by build_sub_fms
    local base="$root/sub_model_construct/sub_model/sub-$1-retained011-r1768-r2768"
    if [ "${2:-}" = distilled ]; then
        ls -d "$base"-distilled-* 2>/dev/null | head -n 1 || true
    else
        echo "$base"
    fi
}
build_sub_fms() {  # paper sub-FM: layers 0 and 11 whole, FFN 3072 -> 768, distilled on BookCorpus + Wikipedia
    for model in "$@"; do
        (cd "$root/sub_model_construct" && launch ./distill.py --model_checkpoint "../pretrain_models/$model" \
            --per_device_train_batch_size 32 --learning_rate 6e-4 --logging_steps 0.05 --save_steps 0.1 \
            --distill_epoch 5 --warm_up_ratio 0.048 --gradient_accumulation_steps $(( 32 / GPUS )) \
            --layers_retained 0 11 --lr_scheduler_type linear --distill True --qk_rank 768 \
            --intermediate_rank 768 --distill_alpha 0.01)
    done
}
fedtune() {  # fedtune <model> <task> <args...>, run from federated_proxy_finetuning/ like the reference
    local model="$1" task="$2"; shift 2
    local metric=accuracy
    [ "$task" = mnli ] && metric=matched_accuracy
    (cd "$root/federated_proxy_finetuning" && launch ./fedtune.py --model_checkpoint "../pretrain_models/$model" \
        --task_name "$task" --metric_for_best_model "$metric" "${FL_COMMON[@]}" "$@")
}
