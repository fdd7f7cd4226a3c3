#!/usr/bin/env bash
# A real Flower deployment on this machine: one SuperLink and N SuperNodes as separate processes on 127.0.0.1, the
# FedPFT Flower app (scripts/flower_app) run on them, then everything stopped. The run folder is the one fedtune.py
# would write for the same flags (metrics.jsonl, summary.json, checkpoints; --resume works). With --engine simulation
# the same app runs on Flower's simulation engine instead (a SuperLink in simulation mode, N virtual SuperNodes).
#
#   bash scripts/flower_local.sh --supernodes 2 [--engine deployment|simulation] [--modality text|image] \
#       [--round-timeout S] [--base-port P] -- <fedtune.py flags>
#
# SuperNode i holds client (partition) i, so --num_clients must equal --supernodes. Relative paths in the fedtune
# flags are read from the current directory, as with fedtune.py. Everything runs without TLS, which is only
# acceptable on the loopback interface; for separate hosts see docs/multi-process-and-flower.md
# ("Across hosts").
# Environment: PY (default .venv/bin/python), FLOWER_WORK (logs and Flower state; default a temporary folder,
# kept when the run fails). Needs the Flower extra: pip install -e '.[flower]'.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$root/.venv/bin/python}"
BIN="$(dirname "$PY")"
supernodes=2 modality=text round_timeout=0 base_port=19090 engine=deployment
while [ $# -gt 0 ]; do
    case "$1" in
        --supernodes) supernodes="$2"; shift 2 ;;
        --modality) modality="$2"; shift 2 ;;
        --engine) engine="$2"; shift 2 ;;
        --round-timeout) round_timeout="$2"; shift 2 ;;
        --base-port) base_port="$2"; shift 2 ;;
        --) shift; break ;;
        -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1 (flags for fedtune.py go after --)" >&2; exit 2 ;;
    esac
done
case "$engine" in deployment | simulation) ;; *) echo "error: --engine $engine: deployment or simulation" >&2; exit 2 ;; esac
case "$supernodes" in '' | *[!0-9]* | 0) echo "error: --supernodes $supernodes: a positive integer" >&2; exit 2 ;; esac
if ! [ -x "$BIN/flower-superlink" ]; then
    echo "error: Flower is not installed in $(dirname "$BIN"); run: $PY -m pip install -e '$root[flower]'" >&2
    exit 2
fi
args=("$@")
num_clients=""
for ((i = 0; i < ${#args[@]}; i++)); do
    if [ "${args[$i]}" = "--num_clients" ]; then num_clients="${args[$((i + 1))]:-}"; fi
done
if [ "$num_clients" != "$supernodes" ]; then
    echo "error: --num_clients ${num_clients:-<default>} must equal --supernodes $supernodes (one client per SuperNode)" >&2
    exit 2
fi

work="${FLOWER_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/fedpft-flower.XXXXXX")}"
mkdir -p "$work"
export PATH="$BIN:$PATH" FLWR_HOME="$work/home" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
link=$base_port  # Flower 1.42 serves the runtime, fleet and control APIs on one port
mkdir -p "$FLWR_HOME"
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "fedpft-local"

[superlink.fedpft-local]
address = "127.0.0.1:$link"
insecure = true
EOF
if [ "$engine" = simulation ]; then
    printf '\n[superlink.fedpft-local.options]\nnum-supernodes = %d\n' "$supernodes" >>"$FLWR_HOME/config.toml"
fi
# the run configuration: the fedtune command line as one TOML string
"$PY" - "$work/run.toml" "$modality" "$round_timeout" "${args[@]}" <<'EOF'
import shlex, sys, tomli_w
path, modality, timeout, *flags = sys.argv[1:]
with open(path, "wb") as f:
    tomli_w.dump({"fedtune-args": shlex.join(flags), "modality": modality, "round-timeout": float(timeout)}, f)
EOF

pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # the ServerApp and SuperExec processes Flower starts detached, found by the API address they were given
    for ((port = base_port; port < base_port + 10 + supernodes; port++)); do
        pkill -f -- "--runtime-api-address 127.0.0.1:$port( |$)" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM

simulation=()
if [ "$engine" = simulation ]; then simulation=(--simulation); fi
"$BIN/flower-superlink" "${simulation[@]}" --insecure --host 127.0.0.1 --port "$link" --database "$work/superlink.db" \
    >"$work/superlink.log" 2>&1 &
pids+=($!)
wait_port() {  # wait_port <port> <what> <log>: until something listens on 127.0.0.1:<port>
    local t=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        if [ $t -ge 120 ] || ! kill -0 "${pids[0]}" 2>/dev/null; then
            echo "error: the $2 did not start within $t s; see $3" >&2; exit 1
        fi
        sleep 1; t=$((t + 1))
    done
}
wait_port "$link" SuperLink "$work/superlink.log"
nodes=$supernodes
if [ "$engine" = simulation ]; then nodes=0; fi
for ((i = 0; i < nodes; i++)); do
    FLWR_HOME="$work/node$i" "$BIN/flower-supernode" --insecure --superlink "127.0.0.1:$link" \
        --port $((base_port + 10 + i)) --node-config "partition-id=$i num-partitions=$supernodes" \
        >"$work/supernode$i.log" 2>&1 &
    pids+=($!)
done
if [ "$engine" = simulation ]; then
    echo "SuperLink in simulation mode with $supernodes virtual SuperNodes on 127.0.0.1 (logs in $work)"
else
    echo "SuperLink and $supernodes SuperNodes on 127.0.0.1 (logs in $work)"
fi

started=$(date +%s)
# in the background and waited for, so that a signal to this script stops everything at once (bash runs its traps
# only after a foreground command returns)
"$BIN/flwr" run "$root/scripts/flower_app" fedpft-local --run-config "$work/run.toml" --stream \
    >"$work/run.log" 2>&1 &
pids+=($!)
tail -f "$work/run.log" --pid "$!" &
wait "${pids[-1]}" || true
run_status() {  # the status of the newest run on this SuperLink (e.g. running, finished:completed)
    "$BIN/flwr" ls fedpft-local --format json 2>/dev/null | "$PY" -c '
import json, sys
runs = json.load(sys.stdin).get("runs", [])
print(runs[-1]["status"] if runs else "unknown")' || echo unknown
}
# the log stream can end before the run does (e.g. on a busy machine): wait for the run itself
status=$(run_status) unknown=0
while [ "${status%%:*}" != finished ]; do
    sleep 5
    status=$(run_status)
    if [ "$status" = unknown ]; then unknown=$((unknown + 1)); else unknown=0; fi
    if ! kill -0 "${pids[0]}" 2>/dev/null || [ "$unknown" -ge 12 ]; then
        status="no longer known: the SuperLink stopped or does not answer ($status)"; break
    fi
done
echo "Flower run: $status after $(($(date +%s) - started)) s"
case "$status" in
    *completed*) [ -n "${FLOWER_WORK:-}" ] || rm -rf "$work" ;;
    *) echo "error: the Flower run did not complete ($status); logs in $work" >&2; exit 1 ;;
esac
