#!/usr/bin/env bash
# Shared settings of the embedded reproduction (scripts/embedded/table{1,2,3,4}.sh): the paper's tables on the
# assets that install offline (MiniLM FM; Wikipedia topic classification and question/sentence pairs, the analogues
# of SST-2 and QNLI, with Wikipedia as the public corpus; the small ViT on MNIST; with BBC=1 the earlier BBC block,
# optionally all-mpnet-base-v2), on 2 CPU cores. Sourced by the table scripts.
#
# What is scaled from the paper (spec §7) and why: 20 clients with 2 per round (paper: 100 clients, the same 10 %;
# 4 per round did not fit the set into about 3 hours here), ROUNDS rounds (paper: unknown, > 20), LoRA r=8
# alpha=48, client lr 8e-4 with linear decay, 1 local epoch, batch 16 (the paper's README settings); layer-level
# distillation for one epoch of the task's public corpus (wiki-corpus: 3,433 Wikipedia summaries no task uses; the
# BBC block: 514 BBC bodies; paper: 5 epochs of BookCorpus + Wikipedia); alignment on 10 % of that corpus per
# alignment with a shorter accumulation schedule.
# Everything else (sub-FM rule, FedAvg, alignment rule, plug-in, evaluation on the FM) is the paper's.
#
# Rerun-safe: a finished run is skipped, an interrupted one resumed from its last round checkpoint (fedtune.py
# --resume auto); sub-FMs and emulators are built once under $RESULTS/models and reused, an interrupted
# distillation resumes from its latest checkpoint.
#
# Environment: RESULTS (default results/embedded), SEEDS (default "1 2 3"; CLAIM_SEEDS, default "1 2 3 4 5" or SEEDS
# when given, for Table 1's text rows and Table 3, where the claims need the power), ROUNDS (default 30), BBC=1 (also
# the earlier BBC block: its runs are committed and skipped), EVAL_INTERVAL (default 15: Tables 2-4 evaluate the FM
# at rounds 15 and 30, and at round 0 only with EVAL_ROUND_ZERO=True: with a seed, round 0 is the same model for
# every method, partition, t and p, Table 1's round 0; Table 1 every TABLE1_EVAL_INTERVAL, default 5, and at round 0,
# for its curves), JOBS (default 2:
# runs of a table at once, one CPU thread each: small models gain little from a second thread, and one thread per
# run makes a run's numbers independent of how busy the machine is), DRY_RUN=1 (or --dry-run) prints the command
# lines instead of running them. Each run's output goes to $RESULTS/.work/logs/; each table's planned runs (one
# line each: model, task, setting, method, seed) are recorded in $RESULTS/<table>/plan.tsv, which make_tables.py
# reads to say which have not finished.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
source "$root/scripts/distill_resume.sh"
RESULTS="${RESULTS:-$root/results/embedded}"
CLAIM_SEEDS="${CLAIM_SEEDS:-${SEEDS:-1 2 3 4 5}}"
SEEDS="${SEEDS:-1 2 3}"
BBC="${BBC:-0}"
EVAL_INTERVAL_SET="${EVAL_INTERVAL+1}"
EVAL_INTERVAL="${EVAL_INTERVAL:-15}"  # a 2,200-example evaluation costs about 45 s on one thread
EVAL_ROUND_ZERO="${EVAL_ROUND_ZERO:-False}"
eval_flags() {  # eval_flags <task>: when Tables 2-4 evaluate the FM (the BBC block's runs: every 5th round and 0)
    case "$1" in bbc*) if [ -z "$EVAL_INTERVAL_SET" ]; then echo --eval_interval 5; return; fi ;; esac
    echo --eval_interval "$EVAL_INTERVAL" --eval_round_zero "$EVAL_ROUND_ZERO"
}
ROUNDS="${ROUNDS:-30}"
PY="${PY:-$root/.venv/bin/python}"
DRY_RUN="${DRY_RUN:-0}"
JOBS="${JOBS:-2}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $arg (use --dry-run)" >&2; exit 2 ;;
    esac
done
MODELS_DIR="$RESULTS/models"   # sub-FMs and emulators (git-ignored)
WORK="$RESULTS/.work"          # partitions and tokenised data (git-ignored)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

run() {  # run <command...>: print it, and run it unless dry
    echo "+ $(printf '%q ' "$@")"
    if [ "$DRY_RUN" = 1 ]; then return 0; fi
    "$@"
}

run_job() {  # run_job <log name> <command...>: like run, in the background with at most JOBS at once
    local log="$WORK/logs/$1.log"; shift
    echo "+ $(printf '%q ' "$@")"
    if [ "$DRY_RUN" = 1 ]; then return 0; fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || failed=1; done
    mkdir -p "$(dirname "$log")"
    (
        if "$@" >"$log" 2>&1; then
            echo "   done: $(tail -n 1 "$log")"
        else
            echo "   FAILED ($log): $(grep -m1 '^error:' "$log" || tail -n 1 "$log")"
            exit 1
        fi
    ) &
}
failed=0
wait_jobs() {  # wait_jobs: wait for every background run; non-zero if one failed
    while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done
    return "$failed"
}

require() {  # require <folder> <what>: stop with one line when an asset is missing
    if [ "$DRY_RUN" = 1 ] || [ -e "$1" ]; then return 0; fi
    echo "error: $2 ($1) is missing; run bash scripts/fetch_assets.sh${3:+ $3}" >&2
    exit 1
}

# --- the FMs, their sub-FM shape and FedOT emulator shape (same client budget as the paper's 47M / 81M rule:
#     retained bottom and top layers, the other FFNs cut to a quarter; the emulator keeps half of the middle layers)
declare -A FM_PATH=([minilm]=pretrain_models/all-MiniLM-L6-v2 [mpnet]=pretrain_models/all-mpnet-base-v2
    [vit-tiny]=pretrain_models/vit-tiny-fashion-mnist [smollm2]=pretrain_models/SmolLM2-135M-Instruct)
# SmolLM2 (Table 5): every FFN but the first and last layer's halved (1,536 -> 768 gated neurons: 0.650 of the
# decoder-layer parameters); the emulator keeps 18 of the 28 middle layers (20 of 30 layers: 0.667)
declare -A RETAINED=([minilm]="0 5" [mpnet]="0 11" [vit-tiny]="0 5" [smollm2]="0 29")
declare -A RANK=([minilm]=384 [mpnet]=768 [vit-tiny]=192 [smollm2]=768)
declare -A EMULATOR=([minilm]=2 [mpnet]=5 [vit-tiny]=2 [smollm2]=18)

# distillation budget, identical for the sub-FM and the FedOT emulator (the same corpus, epochs and batch)
TEXT_KD=(--dataset2_path '' --block_size 128 --per_device_train_batch_size 16
    --gradient_accumulation_steps 2 --learning_rate 6e-4 --lr_scheduler_type linear --warm_up_ratio 0.048
    --distill_alpha 0.01 --save_steps 0.1 --save_total_limit 1 --keep_checkpoints False)
# a decoder's budget (Table 5): LLM_KD_STEPS steps of 16 blocks of 128 tokens (50: 0.3 of an epoch of wiki-corpus,
# about 15 minutes a model here); no FFN weight term (a gated FFN has two input matrices: --distill_alpha 0)
LLM_KD=(--dataset2_path '' --block_size 128 --per_device_train_batch_size 16 --gradient_accumulation_steps 1
    --learning_rate 6e-4 --lr_scheduler_type linear --warm_up_ratio 0.048 --distill_alpha 0 --distill_epoch 1
    --max_steps "${LLM_KD_STEPS:-50}" --save_steps 0.1 --save_total_limit 1 --keep_checkpoints False)
IMAGE_KD=(--distill_dataset_path datasets/fashion-mnist --per_device_train_batch_size 64
    --gradient_accumulation_steps 1 --learning_rate 1e-3 --lr_scheduler_type linear --distill_epoch 1
    --max_steps 150 --save_steps 0.1 --save_total_limit 1 --keep_checkpoints False)

# public corpus of each text task: the Wikipedia tasks distil and align on Wikipedia summaries no task uses, the BBC
# block on BBC bodies no task uses; a model distilled on wiki-corpus lives in "<name>-wiki" beside the BBC one
corpus_of() {  # corpus_of <task>: the public corpus folder
    case "$1" in wiki-*) echo datasets/wiki-corpus ;; *) echo datasets/bbc-corpus ;; esac
}
corpus_tag() {  # corpus_tag <task>: suffix of the distilled models' folders ("" for BBC, the layout before)
    case "$1" in wiki-*) echo -wiki ;; *) echo "" ;; esac
}
corpus_epochs() {  # corpus_epochs <corpus>: epochs of layer-level distillation (the paper's 5 on Wikipedia, about
    # 17 min a MiniLM model here; the BBC block's models were distilled for one epoch of its smaller corpus)
    case "$1" in *wiki-corpus) echo 5 ;; *) echo 1 ;; esac
}

sub_fm() {  # sub_fm <model> [distilled [<task>]]: folder of the sub-FM (distilled on <task>'s public corpus)
    local name
    name="$(basename "${FM_PATH[$1]}")"
    if [ "${2:-}" = distilled ]; then echo "$MODELS_DIR/$1/sub-distilled$(corpus_tag "${3:-}")"; else
        echo "$MODELS_DIR/$1/sub-$name-retained${RETAINED[$1]// /}-r1$(hidden "$1")-r2${RANK[$1]}"
    fi
}
emulator() {  # emulator <model> [distilled [<task>]]: folder of the FedOT emulator
    if [ "${2:-}" = distilled ]; then echo "$MODELS_DIR/$1/emulator-distilled$(corpus_tag "${3:-}")"; else
        echo "$MODELS_DIR/$1/fedot-$(basename "${FM_PATH[$1]}")-adapters11-emulator${EMULATOR[$1]}"
    fi
}
hidden() {  # hidden size = qk_rank (attention is never compressed, spec §2.4)
    case "$1" in minilm) echo 384 ;; mpnet) echo 768 ;; vit-tiny) echo 192 ;; smollm2) echo 576 ;; esac
}

distil() {  # distil <model> <distilled folder> <corpus> <construction flags...>
    local model="$1" out="$2" corpus="$3"; shift 3
    local script=sub_model_construct/distill.py
    local kd=("${TEXT_KD[@]}" --dataset1_path "$corpus" --distill_epoch "$(corpus_epochs "$corpus")")
    if [ "$model" = vit-tiny ]; then script=sub_model_construct/distill_vit.py kd=("${IMAGE_KD[@]}"); fi
    if [ "$model" = smollm2 ]; then kd=("${LLM_KD[@]}" --dataset1_path "$corpus"); fi
    if [ -f "$out/distill_summary.json" ]; then
        echo "  (reusing $out)"
        return 0
    fi
    # construction (saved as the undistilled folder, reused when present), then the distillation into its own
    # folder; an interrupted distillation (no distill_summary.json yet) resumes from its latest checkpoint (one is
    # kept, every tenth of the steps: MPNet's takes hours here), or is redone when it never reached one
    resume_flags "$out"
    if [ -n "$RESUME_NOTE" ]; then echo "  ($RESUME_NOTE)"; fi
    run "$PY" "$script" --model_checkpoint "${FM_PATH[$model]}" --sub_model_dir "$MODELS_DIR/$model" "$@" \
        --distill True "${kd[@]}" --output_dir "$out" "${RESUME[@]}"
}

build_models() {  # build_models <model> [<task>]: undistilled + distilled sub-FM and FedOT emulator (<task>'s corpus)
    local model="$1" task="${2:-}" h corpus
    h="$(hidden "$model")"
    corpus="$(corpus_of "$task")"
    require "${FM_PATH[$model]}" "the $model FM" "$(case "$model" in mpnet) echo --paper-shape ;; smollm2) echo --llm ;; esac)"
    echo "== models for $model: sub-FM (layers ${RETAINED[$model]} whole, FFN -> ${RANK[$model]}) and FedOT emulator"
    # the two distillations run side by side when JOBS allows (one thread each: half the wall clock on 2 cores)
    # shellcheck disable=SC2086
    distil "$model" "$(sub_fm "$model" distilled "$task")" "$corpus" \
        --layers_retained ${RETAINED[$model]} --qk_rank "$h" --intermediate_rank "${RANK[$model]}" &
    local first=$!
    if [ "$JOBS" -lt 2 ]; then wait "$first" || { echo "error: the $model sub-FM's distillation failed" >&2; exit 1; }; fi
    distil "$model" "$(emulator "$model" distilled "$task")" "$corpus" \
        --emulator_layers "${EMULATOR[$model]}" --adapter_layers 1 1
    if [ "$JOBS" -ge 2 ]; then wait "$first" || { echo "error: the $model sub-FM's distillation failed" >&2; exit 1; }; fi
}

# --- federated runs
FL_TEXT=(--num_clients 20 --proportion 0.1 --learning_rate 8e-4 --lr_scheduler_type 2 --num_epochs 1
    --per_device_train_batch_size 16 --gradient_accumulation_steps 1 --lora_rank 8 --lora_alpha 48
    --align_epochs 0.1 --align_batch_size 16 --align_grad_accum_start 4 --align_grad_accum_min 1
    --align_block_size 128 --distill_dataset2_path '')
FL_IMAGE=(--num_clients 20 --proportion 0.1 --learning_rate 4e-3 --lr_scheduler_type 2 --num_epochs 1
    --per_device_train_batch_size 32 --gradient_accumulation_steps 1 --lora_rank 8 --lora_alpha 16
    --hflip False --min_crop_scale 0.5 --align_epochs 0.02 --align_grad_accum_start 2 --align_grad_accum_min 1
    --distill_dataset_path datasets/fashion-mnist)
# a decoder on wiki-qa (Table 5): LoRA alpha 16 (scale 2), half a local epoch (about 50 records a client and round),
# alignment on 3 % of the corpus (about 80 blocks); the FM's loss and topic accuracy on all 551 held-out records
# (LLM_EVAL_SAMPLES=N: a seeded subset of N, the same for every run)
FL_LLM=(--num_clients 20 --proportion 0.1 --learning_rate 8e-4 --lr_scheduler_type 2 --num_epochs 0.5
    --per_device_train_batch_size 8 --gradient_accumulation_steps 1 --lora_rank 8 --lora_alpha 16
    --align_epochs 0.03 --align_batch_size 16 --align_grad_accum_start 2 --align_grad_accum_min 1
    --align_block_size 128 --distill_dataset2_path '' --max_eval_samples "${LLM_EVAL_SAMPLES:-0}"
    --per_device_eval_batch_size 8)
declare -A MAX_LENGTH=([bbc]=64 [bbc-pairs]=128 [wiki-topics]=64 [wiki-pairs]=128 [wiki-qa]=256)
ALIGN_T="${ALIGN_T:-10}"  # alignment interval t (paper default 10)

method_flags() {  # method_flags <model> <method> [<task>]: the flags that make a method (spec §4.13); t = $ALIGN_T
    local model="$1" task="${3:-}"
    case "$2" in
        FedPETuning) echo "--method peft" ;;
        FedOT) echo "--method fedot --sub_model_checkpoint $(emulator "$model" distilled "$task")" ;;
        FedOT-noKD) echo "--method fedot --sub_model_checkpoint $(emulator "$model")" ;;
        FedPFT) echo "--method pft --sub_model_checkpoint $(sub_fm "$model" distilled "$task") --align_interval $ALIGN_T" ;;
        FedPFT_N) echo "--method pft --sub_model_checkpoint $(sub_fm "$model") --align_interval 0" ;;
        FedPFT_B) echo "--method pft --sub_model_checkpoint $(sub_fm "$model" distilled "$task") --align_interval 0" ;;
        FedPFT_D) echo "--method pft --sub_model_checkpoint $(sub_fm "$model") --align_interval $ALIGN_T" ;;
        *) echo "unknown method $2" >&2; exit 2 ;;
    esac
}

fedtune_command() {  # fedtune_command <model> <task> <method> <seed> <output root> <extra flags...>: sets COMMAND
    local model="$1" task="$2" method="$3" seed="$4" out="$5" flags; shift 5
    # shellcheck disable=SC2207
    flags=($(method_flags "$model" "$method" "$task"))
    if [ "$task" = mnist ]; then
        COMMAND=("$PY" federated_proxy_finetuning/fedtune_cv.py --model_checkpoint "${FM_PATH[$model]}"
            --task_name mnist --dataset_path datasets/mnist "${FL_IMAGE[@]}" --num_rounds "$ROUNDS"
            "${flags[@]}" --seed "$seed" --output_root "$out" --task_root "$WORK/task"
            --cache_dir "$WORK/cache" --resume auto "$@")
    else
        local fl=("${FL_TEXT[@]}")
        if [ "$task" = wiki-qa ]; then fl=("${FL_LLM[@]}"); fi
        COMMAND=("$PY" federated_proxy_finetuning/fedtune.py --model_checkpoint "${FM_PATH[$model]}"
            --task_name "$task" --dataset_path datasets --max_length "${MAX_LENGTH[$task]}" "${fl[@]}"
            --distill_dataset1_path "$(corpus_of "$task")"
            --num_rounds "$ROUNDS" "${flags[@]}" --seed "$seed" --output_root "$out"
            --task_root "$WORK/task" --cache_dir "$WORK/cache" --resume auto "$@")
    fi
}

plan_run() {  # plan_run <table> <model> <task> <setting> <method> <seed>: record the run in $RESULTS/<table>/plan.tsv
    # (once; not in a dry run), so that make_tables.py can say which planned runs have not finished
    local file="$RESULTS/$1/plan.tsv" line
    line="$(printf '%s\t' "$2" "$3" "$4" "$5")$6"
    if [ "$DRY_RUN" = 1 ]; then return 0; fi
    mkdir -p "$RESULTS/$1"
    grep -qxF "$line" "$file" 2>/dev/null || printf '%s\n' "$line" >>"$file"
}

cell() {  # cell <table> <model> <task> <setting> <method> <extra fedtune flags...>: every seed of one table cell
    local table="$1" model="$2" task="$3" setting="$4" method="$5"; shift 5
    local out="$RESULTS/$table/$model/$task/$setting/$method" seed
    for seed in $SEEDS; do
        echo "== $table $model $task $setting $method seed $seed"
        plan_run "$table" "$model" "$task" "$setting" "$method" "$seed"
        fedtune_command "$model" "$task" "$method" "$seed" "$out" "$@"
        run_job "$table/$model/$task/$setting/$method-seed$seed" "${COMMAND[@]}"
    done
}

shared_cell() {  # shared_cell <table> <model> <task> <setting> <method> <extra flags...>: a cell whose training is
    # that of Table 1's IID cell of the same model, task and method (Table 3's FedOT and FedPFT, Table 4's t = 10,
    # p = 0.5; only when they evaluate differs, which changes no number). When Table 1 has finished it for every
    # seed with the same flags (scripts/same_run.py), nothing runs: make_tables and the plots show Table 1's runs in
    # this table, marked †. Otherwise the table runs the cell itself, every seed, under its own root.
    local table="$1" model="$2" task="$3" setting="$4" method="$5"; shift 5
    local source="$RESULTS/table1/$model/$task/iid/$method" seed modality=text check=()
    if [ "$task" = mnist ]; then modality=image; fi
    for seed in $SEEDS; do  # the flags of each seed's run under Table 1's root, separated by --
        fedtune_command "$model" "$task" "$method" "$seed" "$source" "$@"
        check+=(${check[0]+--} "${COMMAND[@]:2}")
    done
    if [ -d "$source" ] && "$PY" scripts/same_run.py "$modality" "${check[@]}" 2>/dev/null; then
        echo "== $table $model $task $setting $method: Table 1's finished runs, seeds $SEEDS (same training; shown †)"
        return 0
    fi
    cell "$table" "$model" "$task" "$setting" "$method" "$@"
}

table_done() {  # table_done <started> <table>: wait for the runs, then the table's markdown from the finished runs
    local started="$1" table="$2" status=0
    wait_jobs || status=1
    echo "== $table finished in $(( $(date +%s) - started )) s$([ $status = 1 ] && echo ', some runs FAILED (see above)')"
    if [ "$DRY_RUN" = 0 ]; then "$PY" scripts/make_tables.py --root "$RESULTS" --tables "${table#table}"; fi
    return "$status"
}
