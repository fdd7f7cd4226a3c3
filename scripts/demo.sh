#!/usr/bin/env bash
# The paper pipeline on the embedded default (MiniLM FM, BBC headlines, BBC article bodies as the public corpus):
#   1. build the sub-FM (layers 0 and 5 whole, other FFNs 1536 -> 384 neurons) and distil it (spec §2-§3)
#   2. FedPFT, FedPETuning, FedOT (layer-drop emulator distilled with the same budget) and FedOT w/o KD on BBC
#      with 20 clients (spec §4)
#   3. print one table from the runs' summary.json files
# Usage: bash scripts/demo.sh [--vision] [--rounds R]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
vision=0
rounds=""
while [ $# -gt 0 ]; do
    case "$1" in
        --vision) vision=1 ;;
        --rounds) rounds="$2"; shift ;;
        *) echo "usage: bash scripts/demo.sh [--vision] [--rounds R]" >&2; exit 2 ;;
    esac
    shift
done
if [ "$vision" = 1 ]; then bash scripts/setup.sh; else bash scripts/setup.sh --no-vision; fi
# defaults: 40 rounds for the text demo (about 10 minutes on 2 cores, distillations included), 20 for the slower
# vision one
[ -n "$rounds" ] || { [ "$vision" = 1 ] && rounds=20 || rounds=40; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=.venv/bin/python
out=demo-output  # the demo's own scratch folder: its fed-result is rewritten on every run
mkdir -p "$out"
start=$(date +%s)

if [ "$vision" = 0 ]; then
    fm=pretrain_models/all-MiniLM-L6-v2
    subdir="$out/sub_model"
    echo "== 1. sub-FM construction and layer-level distillation (MiniLM, layers 0 5 kept, FFN 1536 -> 384);"
    echo "      FedOT's emulator (layers 0 and 5 + 2 of the 4 middle layers) distilled with the same budget"
    distilled="$subdir/sub-all-MiniLM-L6-v2-retained05-r1384-r2384-distilled"
    emulator="$subdir/fedot-all-MiniLM-L6-v2-adapters11-emulator2"
    kd=(--model_checkpoint "$fm" --sub_model_dir "$subdir" --distill True --dataset1_path datasets/bbc-corpus
        --dataset2_path '' --block_size 128 --per_device_train_batch_size 16 --gradient_accumulation_steps 2
        --learning_rate 6e-4 --lr_scheduler_type linear --warm_up_ratio 0.048 --distill_epoch 1 --distill_alpha 0.01
        --save_steps 0 --overwrite True)
    if [ ! -f "$distilled/distill_summary.json" ]; then
        $py sub_model_construct/distill.py "${kd[@]}" --layers_retained 0 5 --qk_rank 384 --intermediate_rank 384 \
            --output_dir "$distilled"
    else
        echo "   (reusing $distilled)"
    fi
    if [ ! -f "$emulator-distilled/distill_summary.json" ]; then
        $py sub_model_construct/distill.py "${kd[@]}" --emulator_layers 2 --adapter_layers 1 1 \
            --output_dir "$emulator-distilled"
    else
        echo "   (reusing $emulator-distilled)"
    fi
    rm -rf "$out/fed-result/bbc"
    common=(--model_checkpoint "$fm" --task_name bbc --dataset_path datasets/bbc --num_clients 20
            --proportion 0.2 --num_rounds "$rounds" --learning_rate 8e-4 --lr_scheduler_type 2 --num_epochs 1
            --per_device_train_batch_size 16 --gradient_accumulation_steps 1 --lora_rank 8 --lora_alpha 48
            --max_length 64 --eval_interval 1 --output_root "$out/fed-result" --task_root "$out/task"
            --cache_dir "$out/.cache" --overwrite True)
    echo "== 2a. FedPFT (distilled sub-FM, neuron-level alignment every t = 10 rounds, p = 0.5)"
    $py federated_proxy_finetuning/fedtune.py "${common[@]}" --method pft --sub_model_checkpoint "$distilled" \
        --align_interval 10 --align_epochs 0.1 --align_retained_ratio 0.5 --align_batch_size 16 \
        --align_grad_accum_start 4 --align_grad_accum_min 1 --align_block_size 128 \
        --distill_dataset1_path datasets/bbc-corpus --distill_dataset2_path ''
    echo "== 2b. FedPETuning (LoRA on the full FM)"
    $py federated_proxy_finetuning/fedtune.py "${common[@]}" --method peft
    echo "== 2c. FedOT (layer-drop emulator: layers 0 and 5 as adapters, 2 of the 4 middle layers, distilled)"
    $py federated_proxy_finetuning/fedtune.py "${common[@]}" --method fedot --sub_model_checkpoint "$emulator-distilled"
    echo "== 2d. FedOT w/o KD (the same emulator, undistilled)"
    $py federated_proxy_finetuning/fedtune.py "${common[@]}" --method fedot --sub_model_checkpoint "$emulator"
    task=bbc
else
    fm=pretrain_models/vit-tiny-fashion-mnist
    if [ ! -d "$fm" ]; then echo "the vision FM is missing: run bash scripts/setup.sh (it pretrains it)" >&2; exit 1; fi
    subdir="$out/sub_model"
    distilled="$subdir/sub-vit-tiny-fashion-mnist-retained05-r1192-r2192-distilled"
    emulator="$subdir/fedot-vit-tiny-fashion-mnist-adapters11-emulator2"
    echo "== 1. ViT sub-FM (layers 0 5 kept, FFN 768 -> 192) and FedOT emulator, distilled on Fashion-MNIST images"
    kd=(--model_checkpoint "$fm" --sub_model_dir "$subdir" --distill True --distill_dataset_path datasets/fashion-mnist
        --per_device_train_batch_size 64 --gradient_accumulation_steps 1 --learning_rate 1e-3
        --lr_scheduler_type linear --distill_epoch 1 --max_steps 150 --save_steps 0 --overwrite True)
    if [ ! -f "$distilled/distill_summary.json" ]; then
        $py sub_model_construct/distill_vit.py "${kd[@]}" --layers_retained 0 5 --qk_rank 192 --intermediate_rank 192 \
            --output_dir "$distilled"
    fi
    if [ ! -f "$emulator-distilled/distill_summary.json" ]; then
        $py sub_model_construct/distill_vit.py "${kd[@]}" --emulator_layers 2 --adapter_layers 1 1 \
            --output_dir "$emulator-distilled"
    fi
    rm -rf "$out/fed-result/mnist"
    common=(--model_checkpoint "$fm" --task_name mnist --dataset_path datasets/mnist --num_clients 20
            --proportion 0.2 --num_rounds "$rounds" --learning_rate 4e-3 --lr_scheduler_type 2 --num_epochs 1
            --per_device_train_batch_size 32 --gradient_accumulation_steps 1 --lora_rank 8 --lora_alpha 16
            --hflip False --min_crop_scale 0.5 --eval_interval 1 --output_root "$out/fed-result" --task_root "$out/task" --overwrite True)
    $py federated_proxy_finetuning/fedtune_cv.py "${common[@]}" --method pft --sub_model_checkpoint "$distilled" \
        --align_interval 4 --align_epochs 0.02 --align_grad_accum_start 2 --align_grad_accum_min 1 \
        --distill_dataset_path datasets/fashion-mnist
    $py federated_proxy_finetuning/fedtune_cv.py "${common[@]}" --method peft
    $py federated_proxy_finetuning/fedtune_cv.py "${common[@]}" --method fedot --sub_model_checkpoint "$emulator-distilled"
    $py federated_proxy_finetuning/fedtune_cv.py "${common[@]}" --method fedot --sub_model_checkpoint "$emulator"
    task=mnist
fi
echo "== 3. results (FM = the full model with the plugged-in global adapter)"
$py scripts/summarize.py "$out/fed-result/$task"
echo "demo wall time: $(( $(date +%s) - start )) s"
