"""Typed settings: frozen dataclasses whose fields carry their help text, checked range and command-line flag
(transformers' `HfArgumentParser` idea, kept small). The command lines build a parser from them and a settings
object from the parsed flags; library code receives the object, never the argparse namespace.

A field is declared with `option(default, help, ...)`; a field whose type is itself a settings dataclass becomes an
argument group of its own. The flag is `--<field name>` unless `flag=` names it (the reference's flag names are
kept that way while the field reads well: `AlignSettings.interval` is `--align_interval`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import MISSING, dataclass, field

from .cli import UsageError, str2bool


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: low/high bounds (None = unbounded), each inclusive unless marked open. A number
    outside every range is NaN or infinite: those are never allowed. For a list-valued flag the range holds for each
    element."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
SHARE = Range(0, 1, high_open=True)  # a share that must leave something: [0, 1)
PROBABILITY = Range(0, 1)
SEED = Range(0, 2**32 - 1)  # numpy's RandomState and datasets' shuffles take 32-bit seeds
EPOCHS = Range(0, 1000, low_open=True)  # passes over the data; the bound keeps step counts finite
# a share of the steps (< 1) or a step count (>= 1); the bound keeps it a countable number of steps
STEPS_OR_SHARE = Range(0, 10**12)
TOKENS = Range(1, 1_000_000)  # a truncation length the tokenizers accept
IMAGE_SIZE = Range(1, 4096)  # pixels per side
# transformers schedules that need nothing beyond warm-up and total steps
SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)


SPEC = ("valid", "choices", "nargs", "parse", "metavar", "flag", "modality", "command_line")


def option(default=MISSING, help: str = "", **spec):
    """A settings field. Its spec: `valid` (a Range), `choices`, `nargs`, `metavar`; `parse` converts one
    command-line word (default: from the default's type; booleans honestly, spec §6.14); `flag` names the flag
    when it is not `--<field name>`; `modality` ("text"/"image") limits the flag to that command line;
    `command_line=False` marks a field the entry point fills in (e.g. the number of processes)."""
    unknown = set(spec) - set(SPEC)
    if unknown:
        raise TypeError(f"unknown option spec {sorted(unknown)}; known: {', '.join(SPEC)}")
    return field(default=default, metadata={"help": help, **spec})


def adapter_layers_option(help: str):
    """--adapter_layers BOTTOM TOP of FedOT's emulator (both command lines)."""
    return option((1, 1), help, nargs=2, metavar=("BOTTOM", "TOP"), valid=NON_NEGATIVE)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or f.name


def group(cls) -> dataclasses.Field:
    """A field holding a nested settings dataclass (its own argument group)."""
    return field(default_factory=cls, metadata={"group": True, "cls": cls})


def _converter(f: dataclasses.Field):
    if f.metadata.get("parse"):
        return f.metadata["parse"]
    default = f.default
    if isinstance(default, tuple):
        default = default[0] if default else ""
    if isinstance(default, bool):
        return str2bool
    if default is None or default is MISSING:
        return str
    return type(default)


KINDS = {int: "an integer", float: "a number"}


def _parser_type(f: dataclasses.Field):
    """The flag's converter; a word it cannot convert is reported with the flag's kind and range."""
    convert = _converter(f)
    kind = KINDS.get(convert)
    if kind is None:
        return convert
    valid = f.metadata.get("valid")
    expected = f"{kind} {valid}" if valid is not None else kind

    def parse(text: str):
        try:
            return convert(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    parse.__name__ = convert.__name__
    return parse


def help_text(f: dataclasses.Field) -> str | None:
    """The field's help with its valid range (what --help shows and the table in docs/flags.md lists)."""
    m = f.metadata
    text = m.get("help") or ""
    if m.get("valid") is not None:
        each = "each " if m.get("nargs") is not None else ""
        text = f"{text} [{each}{m['valid']}]" if text else f"[{each}{m['valid']}]"
    return (text or None) and text.replace("%", "%%")


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one `error:` line on stderr (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def add_arguments(parser: argparse.ArgumentParser, cls, modality: str | None, defaults: dict | None = None) -> None:
    """One argument group per settings dataclass (nested groups follow their parent's flags)."""
    defaults = defaults or {}
    title = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
    target = parser.add_argument_group(title)
    nested = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            nested.append(f.metadata["cls"])
            continue
        m = f.metadata
        if not m.get("command_line", True) or (m.get("modality") and m["modality"] != modality):
            continue
        name = flag_name(f)
        kwargs = dict(type=_parser_type(f), help=help_text(f))
        if f.default is MISSING:
            kwargs["required"] = True
        else:
            default = defaults.get(name, f.default)
            kwargs["default"] = list(default) if isinstance(default, tuple) else default
        for key in ("choices", "nargs", "metavar"):
            if m.get(key) is not None:
                kwargs[key] = m[key]
        target.add_argument(f"--{name}", **kwargs)
    for sub in nested:
        add_arguments(parser, sub, modality, defaults)


def from_namespace(cls, namespace: argparse.Namespace, defaults: dict | None = None, **given):
    """`cls` from parsed flags (a flag of the other modality keeps its default), then range-checked."""
    defaults = defaults or {}
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("group"):
            values[f.name] = from_namespace(f.metadata["cls"], namespace, defaults)
        elif f.name in given:
            values[f.name] = given[f.name]
        elif hasattr(namespace, flag_name(f)):
            value = getattr(namespace, flag_name(f))
            values[f.name] = tuple(value) if isinstance(value, list) else value
        elif f.default is not MISSING:
            values[f.name] = defaults.get(flag_name(f), f.default)
    settings = cls(**values)
    check(settings)
    return settings


def out_of_range(value, valid: Range) -> bool:
    """A value (or, for a list-valued flag, any of its elements) outside `valid`; None means "not given"."""
    if value is None:
        return False
    return any(v not in valid for v in value) if isinstance(value, tuple) else value not in valid


def check(settings) -> None:
    """Every field with a range holds a value inside it (None means "not given" and passes)."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        valid = f.metadata.get("valid")
        if valid is not None and out_of_range(value, valid):
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
            each = "each value of " if isinstance(value, tuple) else ""
            raise UsageError(f"{each}--{flag_name(f)} must be {valid}, got {shown}")


def as_flags(settings) -> dict:
    """Flat {flag: value} of a settings object and its groups (what config.json records)."""
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.metadata.get("group"):
            out.update(as_flags(value))
        else:
            out[flag_name(f)] = list(value) if isinstance(value, tuple) else value
    return out


def build_parser(cls, modality: str | None, description: str, defaults: dict | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, cls, modality, defaults)
    return parser
