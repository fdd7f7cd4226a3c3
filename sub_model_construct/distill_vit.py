"""ViT twin of distill.py: same program, image corpus flags (`--distill_dataset_path`, `--image_size`) and
distill_alpha default 0.0 (spec §3.3–3.4)."""

import sys

from sub_model_construct.cli import run_cli
from sub_model_construct.distill import main

if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:], "image"))
