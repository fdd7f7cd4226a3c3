# shellcheck shell=bash
# How a table script continues a layer-level distillation (distill.py / distill_vit.py --output_dir OUT) that an
# earlier run left unfinished. Sourced by scripts/embedded/common.sh and scripts/paper/common.sh.

latest_checkpoint() {  # latest_checkpoint <distilled folder>: its highest checkpoint-<step> that has a training state
    local dir step best="" best_step=-1
    for dir in "$1"/checkpoint-*/; do
        dir="${dir%/}"
        step="${dir##*/checkpoint-}"
        if [[ "$step" =~ ^[0-9]+$ ]] && [ -f "$dir/training_state.pt" ] && [ "$step" -gt "$best_step" ]; then
            best="$dir" best_step="$step"
        fi
    done
    echo "$best"
}

# shellcheck disable=SC2034  # RESUME and RESUME_NOTE are read by the caller
resume_flags() {  # resume_flags <distilled folder>: sets RESUME (flags for distill.py) and RESUME_NOTE (why)
    local checkpoint
    RESUME=() RESUME_NOTE=""
    checkpoint="$(latest_checkpoint "$1")"
    if [ -n "$checkpoint" ]; then
        RESUME=(--resume_from_checkpoint "$checkpoint")
        RESUME_NOTE="$1 was interrupted: resuming from $checkpoint"
    elif [ -e "$1" ]; then
        RESUME=(--overwrite True)
        RESUME_NOTE="$1 was interrupted before its first checkpoint: distilling again"
    fi
}
