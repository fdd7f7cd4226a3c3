#!/usr/bin/env bash
# Shared settings and helpers of the paper-table scripts (sourced by table*.sh). They need the paper's assets
# (`python scripts/fetch_paper_assets.py`; pretrain_models/README.md, datasets/README.md) and, realistically, GPUs.
#
#   bash scripts/paper/table1_iid.sh [--dry-run]
#   GPUS=8 SEEDS="1 2 3 4 5" MODELS=roberta-base bash scripts/paper/table3_ablation.sh
#
# --dry-run prints every command the script would run (distillation and fedtune), fully expanded, one per line,
# in order, and runs nothing; it needs neither the assets nor a GPU. Notes (what is skipped, resumed) go to stderr.
#
# Environment (default):
#   GPUS (4)          processes, one per GPU. Must divide 16 so that the README's effective batches hold exactly
#                     (spec §5, §7): FL 16 = per-device 16/GPUS x GPUS x 1, distillation 1024 = 32 x GPUS x 32/GPUS.
#   ROUNDS (100)      R. The paper material does not state it (spec §7): 100 is an assumption. It must exceed 20,
#                     Table 4's largest alignment interval t.
#   SEEDS (1 2 3)     federated seeds of every cell. The paper does not say how many runs its numbers average;
#                     three seeds give a mean and a spread, so that the one-to-three-point gaps of Tables 3 and 4
#                     can be weighed against run-to-run noise (the reference's single default seed is 1206).
#   MODELS, TASKS     FM folder names under $PRETRAINED and GLUE tasks (defaults per table).
#   RESULTS (results/paper)   cell (table, model, task, setting, method) -> fedtune --output_root
#                     $RESULTS/table{N}/<model>/<task>/<setting>/<method>/; no two tables share a run folder.
#                     Table 3's FedOT and FedPFT and Table 4's t10 are Table 1's runs when it has finished them
#                     (from_table1): run table1_iid.sh first and they are not run twice.
#   SUB_FMS ($RESULTS/models) sub-FMs and FedOT emulators, built once and reused by every table.
#   PRETRAINED (pretrain_models), DATA (datasets)   the paper's assets.
#   PORT (25000)      accelerate --main_process_port.   NUM_PROC (nproc) corpus tokenisation processes.
#   PY (.venv/bin/python)
#
# Rerun-safe: a finished fedtune run is skipped, an interrupted one resumes from its last round checkpoint
# (fedtune --resume auto); a finished distillation (distill_summary.json) is skipped, an interrupted one resumes
# from its latest complete checkpoint-<step>, or is redone when it never reached one. Run one table at a time:
# two scripts building the same sub-FM at once would collide.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/scripts/distill_resume.sh"

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help)  # the table's own header, then this one
            sed -n '2,/^[^#]/p' "$0" | sed '$d' | grep -v '^# shellcheck'
            echo
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d'
            exit 0
            ;;
        *) echo "error: unknown argument $arg (only --dry-run)" >&2; exit 2 ;;
    esac
done

GPUS="${GPUS:-4}"
ROUNDS="${ROUNDS:-100}"
SEEDS="${SEEDS:-1 2 3}"
RESULTS="${RESULTS:-$root/results/paper}"
SUB_FMS="${SUB_FMS:-$RESULTS/models}"
PRETRAINED="${PRETRAINED:-$root/pretrain_models}"
DATA="${DATA:-$root/datasets}"
PORT="${PORT:-25000}"
NUM_PROC="${NUM_PROC:-$(nproc)}"
PY="${PY:-$root/.venv/bin/python}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ! [[ "$GPUS" =~ ^[0-9]+$ ]] || [ "$GPUS" -lt 1 ] || [ $((16 % GPUS)) -ne 0 ]; then
    echo "error: GPUS=$GPUS must be 1, 2, 4, 8 or 16 (it must divide the README's effective batch of 16)" >&2
    exit 2
fi
if ! [[ "$ROUNDS" =~ ^[0-9]+$ ]] || [ "$ROUNDS" -le 20 ]; then
    echo "error: ROUNDS=$ROUNDS must be an integer above 20 (Table 4 aligns every t = 20 rounds)" >&2
    exit 2
fi


note() { echo "note: $*" >&2; }

run() {  # run <command...>: print it (--dry-run) or print it to stderr and run it
    local line
    printf -v line '%q ' "$@"
    if [ "$DRY_RUN" = 1 ]; then
        echo "${line% }"
    else
        echo "+ ${line% }" >&2
        "$@"
    fi
}

launch() {  # launch <script> <args...>: the reference's accelerate command line (spec §5)
    local script="$1"
    shift
    if [ "$GPUS" -gt 1 ]; then
        run "$PY" -m accelerate.commands.launch --multi_gpu --num_processes="$GPUS" --main_process_port "$PORT" \
            --num_machines 1 "$script" "$@"
    else
        run "$PY" "$script" "$@"
    fi
}

# ------------------------------------------------------------------------------------------ sub-FMs, emulators
# The paper's sub-FM (spec §2.8): layers 0 and 11 whole, the other ten FFNs cut from 3072 to 768 neurons (47M).
SUB_FM_SHAPE=(--layers_retained 0 11 --qk_rank 768 --intermediate_rank 768)
# FedOT's emulator at the same 47M (spec §4.13, an assumption): layers 0 and 11 as adapters + 5 of the 10 middle
# layers kept by uniform layer drop = 7 full layers.
EMULATOR_SHAPE=(--emulator_layers 5 --adapter_layers 1 1)
# Layer-level distillation, the README's budget (spec §3.4): BookCorpus + Wikipedia, effective batch 1024, lr 6e-4
# linear, warm-up 0.048, 5 epochs, alpha 0.01. The FedOT emulator gets exactly the same budget.
DISTILL=(--distill True --per_device_train_batch_size 32 --gradient_accumulation_steps $((32 / GPUS))
    --learning_rate 6e-4 --lr_scheduler_type linear --warm_up_ratio 0.048 --distill_epoch 5 --distill_alpha 0.01
    --logging_steps 0.05 --save_steps 0.1 --save_total_limit 1 --keep_checkpoints False
    --dataset1_path "$DATA/bookcorpus" --dataset2_path "$DATA/wikipedia" --num_proc "$NUM_PROC")

# distill.py writes the undistilled model to <--sub_model_dir>/<name> (spec §2.7) and the distilled one to
# --output_dir, which these scripts set to <undistilled>-distilled.
sub_fm_dir() { echo "$SUB_FMS/sub-$1-retained011-r1768-r2768"; }  # the name distill.py gives SUB_FM_SHAPE
emulator_dir() { echo "$SUB_FMS/fedot-$1-adapters11-emulator5"; }  # the name distill.py gives EMULATOR_SHAPE

build() {  # build <model> <undistilled folder> <shape flags...>: construct and distil once, reuse afterwards
    local model="$1" plain="$2"
    shift 2
    local out="$plain-distilled"
    local base=("$root/sub_model_construct/distill.py" --model_checkpoint "$PRETRAINED/$model" "$@"
        --sub_model_dir "$SUB_FMS")
    if [ -f "$out/distill_summary.json" ]; then
        if [ -f "$plain/model.safetensors" ]; then
            note "$out is distilled already: reused"
        else  # the undistilled folder was removed: construction alone rebuilds it (deterministic, seconds)
            launch "${base[@]}"
        fi
        return
    fi
    resume_flags "$out"
    if [ -n "$RESUME_NOTE" ]; then note "$RESUME_NOTE"; fi
    launch "${base[@]}" "${DISTILL[@]}" --output_dir "$out" "${RESUME[@]}"
}

build_sub_fm() { build "$1" "$(sub_fm_dir "$1")" "${SUB_FM_SHAPE[@]}"; }
build_emulator() { build "$1" "$(emulator_dir "$1")" "${EMULATOR_SHAPE[@]}"; }

# ------------------------------------------------------------------------------------------ federated runs
# The README's settings (spec §7): 100 clients, 10% per round, client lr 8e-4 with linear across-round decay,
# 1 local epoch, effective batch 16, LoRA r=8 alpha=48, FM evaluated every round, align_epochs 0.02.
FL_COMMON=(--num_rounds "$ROUNDS" --num_clients 100 --proportion 0.1 --learning_rate 0.0008 --lr_scheduler_type 2
    --num_epochs 1 --per_device_train_batch_size $((16 / GPUS)) --gradient_accumulation_steps 1 --lora_rank 8
    --lora_alpha 48 --eval_interval 1 --align_epochs 0.02 --dataset_path "$DATA/glue"
    --distill_dataset1_path "$DATA/bookcorpus" --distill_dataset2_path "$DATA/wikipedia"
    --task_root "$RESULTS/.work/task" --cache_dir "$RESULTS/.work/cache" --resume auto)

fedtune_args() {  # fedtune_args <table> <model> <task> <setting> <method> <seed> <flags...>: sets ARGS (fedtune.py's)
    local table="$1" model="$2" task="$3" setting="$4" method="$5" seed="$6"
    shift 6
    ARGS=(--model_checkpoint "$PRETRAINED/$model" --task_name "$task" "${FL_COMMON[@]}" --seed "$seed"
        --output_root "$RESULTS/$table/$model/$task/$setting/$method" "$@")
}

fedtune() {  # fedtune <table> <model> <task> <setting> <method> <seed> <flags...>: one seed of one table cell
    fedtune_args "$@"
    launch "$root/federated_proxy_finetuning/fedtune.py" "${ARGS[@]}"
}

# Table 3's FedOT and FedPFT and Table 4's t10 train exactly as Table 1's IID cell of the same model, task and
# method. When Table 1 has finished that cell for every seed with the same flags (scripts/same_run.py compares each
# run's config.json), the later table does not run it again, and make_tables shows Table 1's runs there (†);
# otherwise it runs every seed of the cell under its own root.
declare -A FROM_TABLE1=()
from_table1() {  # from_table1 <table> <model> <task> <setting> <method> <flags...>: true when Table 1's runs serve
    local key="$1/$2/$3/$4/$5" model="$2" task="$3" method="$5" seed check=()
    shift 5
    if [ -z "${FROM_TABLE1[$key]:-}" ]; then
        FROM_TABLE1[$key]=no
        if [ -d "$RESULTS/table1/$model/$task/iid/$method" ]; then
            for seed in $SEEDS; do  # each seed's flags under Table 1's root, separated by --
                fedtune_args table1 "$model" "$task" iid "$method" "$seed" "$@"
                check+=(${check[0]+--} "${ARGS[@]}")
            done
            if "$PY" "$root/scripts/same_run.py" text "${check[@]}" 2>/dev/null; then
                FROM_TABLE1[$key]=yes
                note "$key: Table 1's finished runs (seeds $SEEDS) train the same; not run again (shown †)"
            fi
        fi
    fi
    [ "${FROM_TABLE1[$key]}" = yes ]
}

shared_fedtune() {  # shared_fedtune <table> <model> <task> <setting> <method> <seed> <flags...>: fedtune, unless
    from_table1 "$1" "$2" "$3" "$4" "$5" "${@:7}" || fedtune "$@"  # Table 1's runs serve (from_table1)
}

collect() {  # collect <table>: the table as mean ± std over seeds beside the paper's numbers
    run "$PY" "$root/scripts/make_tables.py" --root "$RESULTS" --tables "${1#table}"
}
