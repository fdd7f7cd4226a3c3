#!/usr/bin/env bash
# Create or reuse .venv, install the pinned requirements and the two packages (editable), fetch the embedded assets.
# Idempotent: a re-run with unchanged requirements.txt installs nothing and only checks the assets.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($python_bin --version)"
    "$python_bin" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want="$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing requirements.txt (a few minutes on a fresh machine)"
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
    echo "$want" > "$stamp"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/fetch_assets.sh "$@"
