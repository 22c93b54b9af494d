"""The `ddpm` command: one sub-command per module in this package, listed in COMMANDS.

Each module defines `add_parser(subparsers)` (its argparse sub-parser, with `func=run`) and
`run(args) -> int`, and imports torch and the rest of the package inside `run` only, so `ddpm --help`
answers at once.

Every failure ends in one line `ddpm <cmd>: error: <cause and fix>` and an exit status (`explain`):

| status  | when                                                                                       |
| ------- | ------------------------------------------------------------------------------------------ |
| 2       | bad input: a missing, unreadable or refused file, an unwritable output, an invalid option  |
| 1       | a failure during the work: out of memory, a disk error, an unexpected exception (a bug)    |
| 130/143 | interrupted by Ctrl-C / SIGTERM (training saves a checkpoint first), as shells report it    |

`--debug` (or DDPM_DEBUG=1) prints the traceback above that line. Warnings print as one line each too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["COMMANDS", "main", "build_parser", "explain", "UsageError"]

COMMANDS = (
    "demo", "train", "sample", "restore", "export", "eval", "data", "convert", "txt2img", "img2img",
    "inpaint", "fid", "serve", "edit", "upscale", "variations",
)

BAD_INPUT, FAILED, INTERRUPTED = 2, 1, 130
# Exceptions that mean the input (paths, files, options) is wrong, whatever the command.
_INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                 IsADirectoryError, PermissionError)
_OOM_FIX = ("out of memory: use a smaller --batch-size, --num or --size (or train.batch_size), --dtype "
            "float16 on a GPU, or --vae-tile for large images")
# How torch words running out of memory in a plain RuntimeError (CUDA, MPS, the CPU allocator).
_OOM_TEXTS = ("out of memory", "can't allocate memory", "Out of memory")


class UsageError(ValueError):
    """A problem the user can fix that argparse cannot see (a missing option pair, a diverged run, …)."""


class _Formatter(argparse.HelpFormatter):
    """The help column leaves room for the longest command name (Python 3.11's argparse measures only the
    options, so a name longer than "-h, --help" would push its help onto the next line)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog)
        self._action_max_length = max(self._action_max_length, 4 + max(map(len, COMMANDS)))


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command's sub-parser registered (each also takes --debug)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="ddpm",
        formatter_class=_Formatter,
        description="Denoising diffusion models: train on your images, sample fast, measure honestly.",
        epilog="Run `ddpm <command> --help` for a command's options. Exit status: 0 done, 2 bad input, "
        "1 failed, 130/143 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, also print the traceback")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    _add_debug(sub)
    return parser


def _add_debug(subparsers: argparse._SubParsersAction) -> None:
    """--debug on every (nested) sub-parser; SUPPRESS keeps a top-level `ddpm --debug CMD` in force."""
    for parser in subparsers.choices.values():
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="on an error, also print the traceback (or set DDPM_DEBUG=1)")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug(action)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(error).__name__


def _kinds(error: BaseException) -> set[str]:
    """The class names in `error`'s MRO (to recognise torch's errors without importing torch)."""
    return {cls.__name__ for cls in type(error).__mro__}


def explain(error: BaseException) -> tuple[int, str, str]:
    """(exit status, "error" or "interrupted", one-line message) for an exception a command raised."""
    code = getattr(error, "exit_code", None)
    if isinstance(code, int) and not isinstance(code, bool):  # e.g. ddpm.training.TrainingInterrupted
        return code, "interrupted", _one_line(error)
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED, "interrupted", "stopped by Ctrl-C before the command finished"
    if isinstance(error, MemoryError) or "OutOfMemoryError" in _kinds(error) or (
        isinstance(error, RuntimeError) and any(s in str(error) for s in _OOM_TEXTS)
    ):
        return FAILED, "error", f"{_OOM_FIX} ({_one_line(error)[:200]})"
    if isinstance(error, _INPUT_ERRORS):
        return BAD_INPUT, "error", _one_line(error)
    if isinstance(error, OSError):
        return FAILED, "error", (f"{_one_line(error)}: reading or writing a file failed (a full disk, a lost "
                                 "network drive?); fix that and run the command again")
    return FAILED, "error", (f"unexpected {type(error).__name__}: {_one_line(error)[:300]}; this is a bug in "
                             "ddpm or an input it does not check: rerun with --debug for the traceback "
                             "and report it")


def _debug_requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("DDPM_DEBUG", "") not in ("", "0")


@contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """Print each warning as `ddpm <cmd>: warning: …` instead of Python's two-line file:line form."""

    def show(message, category, filename, lineno, file=None, line=None):  # warnings.showwarning's signature
        print(f"ddpm {command}: warning: {_one_line(Warning(message))}", file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the command, return its exit status (see the table)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and argparse's own usage errors (status 2)
        return int(exit_.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    with _warnings_as_lines(args.command):
        try:
            return int(args.func(args) or 0)
        except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001  (each kind maps to a status)
            code, label, message = explain(error)
            if _debug_requested(args):
                import traceback

                traceback.print_exc()
            print(f"ddpm {args.command}: {label}: {message}", file=sys.stderr)
            return code
