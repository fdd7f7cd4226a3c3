"""Do finished runs with the same training configuration already exist?

    python scripts/same_run.py {text|image} <fedtune flags of run 1> [-- <fedtune flags of run 2> ...]

Exit 0 when, for each set of flags, the run folder they name (`<output_root>/<task>/<client model>/<run name>`, as
fedtune.py and fedtune_cv.py make it) holds a finished run whose config.json records the same value for every flag,
except those that only decide when it evaluates, where files go or how it was started (IGNORED); exit 1 otherwise,
with the reasons on stderr. Paths are compared by their last two parts, so results moved to another checkout still
match.

The table scripts (scripts/embedded/common.sh: shared_cell; scripts/paper/common.sh: from_table1) use it for the
cells that Tables 3 and 4 share with Table 1 (same method, task, seeds and training flags; at most the evaluation
schedule differs, which does not change a run's numbers): when Table 1 has finished them, the later table skips
them, and make_tables and the plots show Table 1's runs there (marked †).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# flags that do not change a run's training or its final evaluation: when it evaluates, whether the sub-FM is also
# evaluated, where its files, caches and partitions go, how it was started
IGNORED = frozenset(
    {
        "eval_interval",
        "eval_sub_model",
        "eval_round_zero",
        "output_root",
        "task_root",
        "cache_dir",
        "resume",
        "overwrite",
        "stop_after_round",
        "num_processes",
        "dataloader_num_workers",
    }
)
PATHS = frozenset(
    {
        "model_checkpoint",
        "sub_model_checkpoint",
        "dataset_path",
        "distill_dataset1_path",
        "distill_dataset2_path",
        "distill_dataset_path",
        "evaluate_path",
    }
)


def _tail(value):
    return "/".join(Path(value).parts[-2:]) if isinstance(value, str) and value else value


def comparable(flags: dict) -> dict:
    return {k: (_tail(v) if k in PATHS else v) for k, v in flags.items() if k not in IGNORED}


# flags added after runs were recorded, with the value that does what those runs did
ADDED_LATER = {"lora_ffn": False}


def differences(recorded: dict, wanted: dict) -> list[str]:
    a, b = comparable({**ADDED_LATER, **recorded}), comparable({**ADDED_LATER, **wanted})
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def check(modality: str, argv: list[str]) -> str | None:
    """None when a finished run with the same configuration exists, else why not."""
    from federated_proxy_finetuning.fedtune import parse_settings
    from sub_model_construct.typed_settings import as_flags

    settings = parse_settings(argv, modality)
    folder = settings.run_path
    try:
        summary = json.loads((folder / "summary.json").read_text())
        recorded = json.loads((folder / "config.json").read_text())["args"]
    except (OSError, ValueError, KeyError) as exc:
        return f"{folder}: no finished run ({type(exc).__name__})"
    if not summary.get("finished"):
        return f"{folder}: not finished"
    wanted = json.loads(json.dumps(as_flags(settings)))  # tuples as lists, as config.json has them
    differ = differences(recorded, wanted)
    return f"{folder}: different {', '.join(differ)}" if differ else None


def split_runs(argv: list[str]) -> list[list[str]]:
    runs, current = [], []
    for arg in argv:
        if arg == "--":
            runs.append(current)
            current = []
        else:
            current.append(arg)
    return [*runs, current]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("text", "image"):
        print("usage: same_run.py {text|image} <fedtune flags> [-- <fedtune flags> ...]", file=sys.stderr)
        return 2
    reasons = [why for run in split_runs(argv[1:]) if (why := check(argv[0], run))]
    for why in reasons:
        print(why, file=sys.stderr)
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
