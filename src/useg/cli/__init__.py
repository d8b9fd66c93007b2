"""Command-line interface: argument parsing and error reporting only.

Each subcommand lives in its own module of this package and exposes ``add_parser(subparsers)``
(which registers the subcommand and sets ``func`` to a callable taking the parsed arguments and
returning an exit code). Errors derived from :class:`useg.errors.UsegError` become one line on
stderr and exit code 2; warnings derived from :class:`useg.errors.UsegWarning` become one line on
stderr, once per run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from useg.errors import UsegError, UsegWarning

# Subcommand modules, in the order ``useg --help`` lists them. A module missing here is skipped,
# so the CLI keeps working while a subcommand is being written.
_COMMANDS = ("predict", "train", "demo", "densify", "evaluate", "export", "report")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``useg <command>: error: <message>``, and
    exit code 2, like every other bad input (argparse prints its whole usage block first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


# --------------------------------------------------------------------------------------------
# Typed values of numeric options (argparse types): every subcommand uses these, so that a
# negative, zero, NaN or infinite value is refused when parsing, naming the option.


def _number(kind: type, text: str, what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def out_path(text: str) -> Path:
    """The argparse type of an output path: an empty one (an unset shell variable) is refused,
    not taken as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty output path; name a folder or file")
    return Path(text)


def int_at_least(low: int) -> Callable[[str], int]:
    """The argparse type of an integer ``>= low``."""
    what = {1: "a positive integer", 0: "a non-negative integer"}.get(
        low, f"an integer of at least {low}")

    def parse(text: str) -> int:
        value = _number(int, text, what)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = "int"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def float_range(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
                high_open: bool = False) -> Callable[[str], float]:
    """The argparse type of a finite float in the range from ``low`` to ``high`` (closed ends
    unless ``low_open`` / ``high_open``)."""
    if low == -math.inf and high == math.inf:
        what = "a finite number"
    elif high == math.inf:
        what = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        what = (f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
                f"{')' if high_open else ']'}")

    def parse(text: str) -> float:
        value = _number(float, text, what)
        if value < low or value > high or (low_open and value == low) or (
                high_open and value == high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


finite_float = float_range()
positive_float = float_range(0.0, low_open=True)
non_negative_float = float_range(0.0)
fraction = float_range(0.0, 1.0)


def add_precision_argument(p: argparse._ActionsContainer) -> None:
    """``--precision``, shared by the commands that run a network."""
    # Checked when the command runs (useg.device.check_precision), not by argparse, so that a
    # wrong value is one line like every other bad input.
    p.add_argument("--precision", default="auto", metavar="{auto,fp32,bf16,fp16}",
                   help="autocast precision. auto (default): the faster of fp32 and bf16 that "
                   "the device runs natively, never slower than fp32 (bf16 on CUDA when "
                   "supported; on CPU only with bf16 instructions and when a short, cached "
                   "measurement finds it faster). bf16 on a CPU without bf16 instructions is "
                   "emulated and much slower; fp16 needs CUDA")


def sizes(text: str) -> tuple[int, ...]:
    """``"572"`` or ``"64x256x256"`` (or commas) -> a tuple of positive ints (argparse type)."""
    try:
        values = tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or NxM[xK], got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="useg", description="U-Net segmentation for microscopy images and volumes."
    )
    from useg import __version__

    parser.add_argument("--version", action="version", version=f"useg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"useg.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"useg.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # a bad argument (Parser.error: one line), --help or --version
        return exc.code if isinstance(exc.code, int) else 2
    if unknown:  # named after the subcommand they were given to, like its other errors
        prog = f"useg {args.command}" if getattr(args, "command", None) else "useg"
        print(f"{prog}: error: unrecognized arguments: {' '.join(unknown)}", file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.argv = argv  # the command line as given (useg train records it in config.json)
    # tifffile logs what it finds wrong in a file to stderr; useg says the file's problem in
    # its own one line, so the library's line would be a second one.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    default_show = warnings.showwarning
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, UsegWarning):
            default_show(message, category, filename, lineno, file, line)
        elif str(message) not in shown:  # the same advice from several places: once
            shown.add(str(message))
            print(f"useg {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UsegWarning)
            warnings.showwarning = show
            return int(args.func(args) or 0)
    except UsegError as exc:
        print(f"useg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # its message, if any, says how to resume
        print(f"useg {args.command}: interrupted{f'; {exc}' if str(exc) else ''}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
