"""Errors meant for users: one line, naming the file and the problem."""

from __future__ import annotations

import sys
from collections.abc import Collection
from types import ModuleType
from typing import TypeVar

_T = TypeVar("_T")

class UsegError(ValueError):
    """Base of every error a user can cause; the CLI prints it as one line and exits with code 2."""


class InputError(UsegError):
    """An input file or array is missing, unreadable or of the wrong shape, type or content."""


class ModelFileError(UsegError):
    """A model file is not a useg model or is corrupt."""


class ConfigError(UsegError):
    """A configuration value is out of range or inconsistent."""


class OutputError(UsegError):
    """A result cannot be written: its place is not a folder, not writable, or the disk is full."""


class UsegWarning(UserWarning):
    """A setting that works but is likely not what the user wants; the CLI prints it as one line."""


class TileWarning(UsegWarning):
    """A requested prediction tile that had to grow, or that costs much more work than needed."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none), for quoting the
    error of a library in a message of ours.

    Examples
    --------
    >>> one_line(ValueError("bad\\n  value")), one_line(KeyError())
    ('bad value', 'KeyError')
    """
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def input_error(where: object, problem: str) -> InputError:
    """The :class:`InputError` for a problem with a file (or files) a user gave: ``where: problem``.

    Examples
    --------
    >>> str(input_error("a.tif", "file not found"))
    'a.tif: file not found'
    """
    return InputError(f"{where}: {problem}")


def check_choice(name: str, value: _T, choices: Collection) -> _T:
    """``value`` if it is one of ``choices``, else the :class:`ConfigError` naming the setting.

    Examples
    --------
    >>> check_choice("norm", "batch", ("none", "batch"))
    'batch'
    >>> check_choice("norm", "group", ("none", "batch"))
    Traceback (most recent call last):
    ...
    useg.errors.ConfigError: norm must be one of none, batch, got 'group'
    """
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def require(module: str, extra: str, what: str) -> ModuleType:
    """The module ``module`` of the optional extra ``extra``, imported; when it is missing, a
    :class:`ConfigError` line saying that ``what`` needs it and how to install it.

    Examples
    --------
    >>> require("json", "none", "reading JSON").__name__
    'json'
    >>> require("no_such_module_here", "scale", "reading zarr stores")
    Traceback (most recent call last):
    ...
    useg.errors.ConfigError: reading zarr stores needs no_such_module_here: pip install useg[scale]
    """
    try:
        # The import statement's own hook (builtins.__import__), which import_module bypasses
        # for a module already loaded: a stand-in for "not installed" must be honoured.
        __import__(module)
        return sys.modules[module]
    except ImportError:
        raise ConfigError(f"{what} needs {module}: pip install useg[{extra}]") from None
