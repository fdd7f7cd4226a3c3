"""Print the README's table of flags and their valid ranges, from the settings of the four command lines.

    python -m scripts.flag_ranges

`tests/test_bad_input.py` checks that the README holds exactly this table.
"""

from __future__ import annotations

import dataclasses

from federated_proxy_finetuning.settings import FedSettings
from sub_model_construct.settings import DistillSettings, flag_name


def rows(cls, modality: str | None = None) -> list[tuple[str, str, str]]:
    """(flag, valid values, help) of every command-line flag of a settings class (groups included)."""
    out = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        if m.get("group"):
            out += rows(m["cls"], modality)
            continue
        if not m.get("command_line", True):
            continue
        valid, choices = m.get("valid"), m.get("choices")
        default = f.default[0] if isinstance(f.default, tuple) and f.default else f.default
        if valid is not None:
            parse = m.get("parse")
            kind = "integer" if parse is int or (parse is None and type(default) is int) else "number"
            text = f"{kind} {valid}" if m.get("nargs") is None else f"integers, each {valid}"
        elif choices is not None:
            text = "one of " + ", ".join(f"`{c}`" for c in choices)
        elif isinstance(default, bool):
            text = "boolean: True/False/1/0/yes/no"
        else:
            text = "text (a path or a name)" if m.get("nargs") is None else "words"
        note = {"text": " (text only)", "image": " (image only)"}.get(m.get("modality"), "")
        meaning = (m.get("help") or "").replace("|", "/")
        out.append((f"`--{flag_name(f)}`", text + note, meaning))
    return out


def markdown_table() -> str:
    table = {}
    for program, cls in (("distill.py / distill_vit.py", DistillSettings), ("fedtune.py / fedtune_cv.py", FedSettings)):
        table[program] = rows(cls)
    lines = []
    for program, entries in table.items():
        lines += [f"**{program}**", "", "| flag | valid values | meaning |", "|---|---|---|"]
        lines += [f"| {flag} | {text} | {meaning} |" for flag, text, meaning in entries]
        lines.append("")
    return "\n".join(lines).strip() + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
