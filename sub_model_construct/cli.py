"""Command-line helpers shared by the entry points of both packages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .progress import interactive

TRUE = {"true", "1", "yes", "y", "on"}
FALSE = {"false", "0", "no", "n", "off"}


class UsageError(Exception):
    """Bad input: reported as one line on stderr with a non-zero exit, before anything is written."""


def str2bool(value: str) -> bool:
    """Honest boolean parsing: True/False/1/0/yes/no (the reference's `type=bool` made "False" true, spec §6.14)."""
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False/1/0/yes/no), got {value!r}")


def run_cli(main: Callable[[], int | None]) -> None:
    """Call `main` with SIGINT/SIGTERM turned into clean stops; bad input (a UsageError), a stop and a file that
    cannot be written become one `error:` line on stderr: exit status 2, 128 + the signal, 1."""
    from .signals import Interrupted, stopping_on_signals

    try:
        with stopping_on_signals():
            code = main()
    except UsageError as exc:
        _one_line(exc)
        sys.exit(2)
    except Interrupted as exc:
        _one_line(exc)
        sys.exit(exc.exit_code)
    except OSError as exc:  # e.g. the disk filled up while writing a checkpoint
        _one_line(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        sys.exit(1)
    sys.exit(code or 0)


def _one_line(message) -> None:
    """`error: <message>` on a line of its own: progress bars a stop left open are closed (cleared) first."""
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except ImportError:
        pass
    text = " ".join(str(message).split())
    print(f"error: {text}", file=sys.stderr, flush=True)


def setup_logging(is_main: bool = True) -> None:
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("transformers", "datasets", "httpx", "urllib3", "filelock", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:  # the library's own loggers/bars ("Some weights were newly initialized" is expected and said by us)
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        import datasets

        datasets.logging.set_verbosity_error()
        if not interactive():  # a log file gets our one line per tenth of the work, not datasets' bar frames
            datasets.disable_progress_bars()
    except ImportError:
        pass


FETCH_HINT = (
    "fetch the embedded assets with `bash scripts/fetch_assets.sh` (paper assets: see pretrain_models/README.md)"
)
