"""Image twin of fedtune.py (spec §4.2 CV): same program, image task and corpus flags, CV alignment defaults."""

from federated_proxy_finetuning.fedtune import entry

if __name__ == "__main__":
    entry("image")
