#!/usr/bin/env bash
# Create or reuse .venv, install the pinned requirements and the two packages (editable), fetch the embedded assets.
# Idempotent: a re-run with unchanged requirements installs nothing and only checks the assets.
# --no-flower leaves out the optional Flower backend (requirements-flower.txt); other flags go to fetch_assets.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
flower=1
args=()
for arg in "$@"; do
    if [ "$arg" = --no-flower ]; then flower=0; else args+=("$arg"); fi
done
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($python_bin --version)"
    "$python_bin" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want="$(sha256sum requirements.txt requirements-flower.txt pyproject.toml | sha256sum | cut -d' ' -f1)-flower$flower"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing requirements.txt (a few minutes on a fresh machine)"
    extra=()
    if [ "$flower" = 1 ]; then extra=(-r requirements-flower.txt); fi
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt "${extra[@]}"
    .venv/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
    echo "$want" > "$stamp"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/fetch_assets.sh "${args[@]}"
