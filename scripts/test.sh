#!/usr/bin/env bash
# The test suite: sets up .venv and the embedded assets if needed, then runs pytest offline.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh --no-vision
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check sub_model_construct federated_proxy_finetuning scripts tests
exec .venv/bin/python -m pytest -q "$@"
