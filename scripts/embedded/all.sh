#!/usr/bin/env bash
# The default set in one command, in the order the claims need it: the ceilings, Table 1 (whose runs Tables 3 and 4
# borrow), Table 3, Table 4, Table 2; with TABLE5=1 then Table 5 (SmolLM2, fetch_assets.sh --llm). Every script skips
# finished runs and resumes interrupted ones, so this is the command to rerun after a stop, in as many parts as the
# machine's sessions allow; TABLES="3 4" runs only those. The environment of common.sh passes through (RESULTS,
# SEEDS, JOBS, BBC, ...); --dry-run prints every command line.
#   bash scripts/embedded/all.sh [--dry-run]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
order="${TABLES:-ceiling 1 3 4 2}"
if [ "${TABLE5:-0}" = 1 ] && [ -z "${TABLES:-}" ]; then order="$order 5"; fi
for t in $order; do
    case "$t" in ceiling | [1-5]) ;; *) echo "error: TABLES takes ceiling and 1-5, got $t" >&2; exit 2 ;; esac
done
status=0
for t in $order; do
    script="table$t.sh"
    if [ "$t" = ceiling ]; then script=ceiling.sh; fi
    echo "=== $script $(date '+%F %T')"
    bash "$here/$script" "$@" || { status=1; echo "=== $script: some runs FAILED (see above); going on"; }
done
exit "$status"
