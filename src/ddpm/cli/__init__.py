"""The `ddpm` command: one sub-command per module in this package, listed in COMMANDS.

Each module defines `add_parser(subparsers)` (its argparse sub-parser, with `func=run`) and
`run(args) -> int`, and imports torch and the rest of the package inside `run` only, so `ddpm --help`
answers at once. Errors a user can fix (ValueError, FileNotFoundError, …) print one line
`ddpm <cmd>: error: …` and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main", "build_parser", "UsageError"]

COMMANDS = (
    "demo", "train", "sample", "export", "eval", "data", "convert", "txt2img", "img2img", "inpaint",
)


class UsageError(ValueError):
    """A problem the user can fix that argparse cannot see (a missing option pair, a diverged run, …)."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command's sub-parser registered."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="ddpm",
        description="Denoising diffusion models: train on your images, sample fast, measure honestly.",
        epilog="Run `ddpm <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv[1:]), run the command, return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and argparse's own usage errors (status 2)
        return int(exit_.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError) as error:
        print(f"ddpm {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ddpm {args.command}: interrupted", file=sys.stderr)
        return 130
