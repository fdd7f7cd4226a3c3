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


# ----------------------------------------------------------------------------------------------- distill.py
@dataclass(frozen=True)
class DistillSettings:
    """Construct a sub-FM and distil it from its FM (spec §2-§3)"""

    model_checkpoint: str = option(help="FM folder (transformers format)")
    layers_retained: tuple[int, ...] = option(
        (), "layers whose FFN stays whole (paper: 0 11)", parse=int, nargs="*", valid=NON_NEGATIVE
    )
    emulator_layers: int = option(
        0,
        "FedOT instead of FedPFT: keep this many middle layers by uniform layer drop (0 = FFN compression)",
        valid=NON_NEGATIVE,
    )
    adapter_layers: tuple[int, int] = adapter_layers_option(
        "with --emulator_layers: bottom/top layers kept whole as the offsite-tuning adapters"
    )
    intermediate_rank: int = option(
        1024, "FFN neurons kept per compressed layer, D' (paper: 768; at most the FFN width)", valid=AT_LEAST_ONE
    )
    qk_rank: int | None = option(
        None, "must equal the hidden size: attention is not compressed (spec §2.4)", parse=int, valid=AT_LEAST_ONE
    )
    distill: bool = option(False, "run layer-level distillation after construction")
    split_distill: bool = option(False, "accepted for compatibility; no effect (spec §6.2)")
    sub_model_dir: str = option("./sub_model", "where sub-FM folders are written")
    output_dir: str | None = option(None, "override the output folder (distilled, or undistilled without --distill)")
    overwrite: bool = option(False, "replace an existing distilled output folder")
    distill_dataset_path: str = option(
        "../datasets/IMAGENET", "image corpus (HF image folder or ImageFolder)", modality="image"
    )
    image_size: int | None = option(
        None,
        "crop size (default: the FM config's image_size; at least its patch size)",
        parse=int,
        valid=IMAGE_SIZE,
        modality="image",
    )
    dataset1_path: str = option("../datasets/bookcorpus", "first text corpus ('' to skip)", modality="text")
    dataset2_path: str = option("../datasets/wikipedia", "second text corpus ('' to skip)", modality="text")
    dataset1_config: str | None = option(None, "load_dataset config name of the first corpus", modality="text")
    dataset2_config: str = option("20220301.en", "load_dataset config name of the second corpus", modality="text")
    block_size: int = option(
        512,
        "tokens per training block (spec §3.1; at most the FM's max_position_embeddings)",
        valid=AT_LEAST_ONE,
        modality="text",
    )
    max_seq_length: int = option(
        512, "each corpus example is truncated to this many tokens first", valid=TOKENS, modality="text"
    )
    distill_alpha: float = option(1.0, "weight of the FFN weight term (spec §3.3)", valid=NON_NEGATIVE)
    weight_term_grad: bool = option(
        True, "weight term carries gradients (paper intent); False = reference (logged only, spec §6.1)"
    )
    student_dropout: bool = option(
        False, "keep the student's FFN dropout active as the reference does (spec §3.2, §6.13)"
    )
    per_device_train_batch_size: int = option(32, "micro-batch per process", valid=AT_LEAST_ONE)
    per_device_eval_batch_size: int = option(32, "held-out evaluation batch", valid=AT_LEAST_ONE)
    gradient_accumulation_steps: int = option(4, "micro-batches per step and process", valid=AT_LEAST_ONE)
    learning_rate: float = option(1e-4, "peak learning rate", valid=POSITIVE)
    lr_scheduler_type: str = option("cosine", "learning-rate schedule over the steps", choices=SCHEDULES)
    warm_up_ratio: float = option(0.06, "warm-up share of the steps", valid=PROBABILITY)
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and LayerNorm)", valid=NON_NEGATIVE)
    max_grad_norm: float = option(1.0, "gradient clipping (0 = none)", valid=NON_NEGATIVE)
    distill_epoch: float = option(1.0, "epochs over the corpus", valid=EPOCHS)
    max_steps: int = option(0, "stop after this many optimiser steps (0 = from epochs)", valid=NON_NEGATIVE)
    logging_steps: float = option(
        0.05, "log every N steps, or this fraction of all steps if < 1 (0 = never)", valid=STEPS_OR_SHARE
    )
    save_steps: float = option(
        0.1, "checkpoint every N steps, or this fraction if < 1 (0 = never)", valid=STEPS_OR_SHARE
    )
    save_total_limit: int = option(
        0, "keep only the newest N checkpoint-<step> folders, removing older ones (0 = keep all)", valid=NON_NEGATIVE
    )
    keep_checkpoints: bool = option(
        True, "keep the checkpoint-<step> folders once the distilled sub-FM is written (False: remove them then)"
    )
    resume_from_checkpoint: str | None = option(None, "a checkpoint-<step> folder, or True for the latest")
    eval_blocks: int = option(64, "held-out corpus items for the before/after MSE report", valid=NON_NEGATIVE)
    seed: int = option(123, "seed of the corpus order, crops and initial draws", valid=SEED)
    bf16: bool = option(False, "bfloat16 autocast (GPU)")
    fp16: bool = option(False, "not supported: use --bf16")
    num_proc: int | None = option(None, "processes for corpus tokenisation", parse=int, valid=Range(1, 256))
    cache_dir: str | None = option(None, "cache for tokenised corpus blocks (default: <sub_model_dir>/.cache)")
    cpu: bool = option(False, "force CPU (gloo) even when a GPU is visible")

    @property
    def resuming(self) -> bool:
        """--resume_from_checkpoint asks to resume unless it is absent, empty or a boolean "no" (False, 0, ...)."""
        value = self.resume_from_checkpoint
        if not value:
            return False
        try:
            return str2bool(value)
        except argparse.ArgumentTypeError:
            return True  # a checkpoint folder

    @property
    def resume_latest(self) -> bool:
        """--resume_from_checkpoint True (or another "yes"): the latest checkpoint; a path names one."""
        try:
            return str2bool(self.resume_from_checkpoint)
        except argparse.ArgumentTypeError:
            return False
