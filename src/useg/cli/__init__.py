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
import sys
import warnings

from useg.errors import UsegError, UsegWarning

# Subcommand modules, in the order ``useg --help`` lists them. A module missing here is skipped,
# so the CLI keeps working while a subcommand is being written.
_COMMANDS = ("predict", "train", "demo", "densify", "evaluate")


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
    parser = argparse.ArgumentParser(
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
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
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
    except KeyboardInterrupt:
        print(f"useg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
