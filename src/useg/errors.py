"""Errors meant for users: one line, naming the file and the problem."""

from __future__ import annotations


class UsegError(ValueError):
    """Base of every error a user can cause; the CLI prints it as one line and exits with code 2."""


class InputError(UsegError):
    """An input file or array is missing, unreadable or of the wrong shape, type or content."""


class ModelFileError(UsegError):
    """A model file is not a useg model or is corrupt."""


class ConfigError(UsegError):
    """A configuration value is out of range or inconsistent."""


class UsegWarning(UserWarning):
    """A setting that works but is likely not what the user wants; the CLI prints it as one line."""
