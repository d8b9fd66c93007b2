"""Command-line interface: argument parsing and error reporting only.

Each subcommand lives in its own module of this package and exposes ``add_parser(subparsers)``
(which registers the subcommand and sets ``func`` to a callable taking the parsed arguments and
returning an exit code). Errors derived from :class:`useg.errors.UsegError` become one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from useg.errors import UsegError

# Subcommand modules, in the order ``useg --help`` lists them. A module missing here is skipped,
# so the CLI keeps working while a subcommand is being written.
_COMMANDS = ("predict", "train", "demo", "densify", "evaluate")


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
    try:
        return int(args.func(args) or 0)
    except UsegError as exc:
        print(f"useg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"useg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
