"""The errors `balnmp_cache` raises for bad input or bad usage, under one base.

`BalnmpError` is what a caller catches and what both command lines turn into a message and exit
status 2; anything else is a bug and keeps its traceback. Every message names the file, slide or
option at fault and says what to do on the command line.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "AnnotationError",
    "BalnmpError",
    "EncoderError",
    "ExtractError",
    "MissingSlideError",
    "OptionError",
    "RegistryError",
    "SlideError",
    "StoreError",
    "TilingError",
]


class BalnmpError(ValueError):
    """Bad input or bad usage: the message says what is wrong and how to fix it."""


class OptionError(BalnmpError):
    """A value an option (or keyword) may not take: out of range, not one of its choices, or
    an option file (such as `--mpp-overrides`) that cannot be used."""


class RegistryError(BalnmpError):
    """A name that no registered plugin (backend, format, encoder, model) answers to."""


class SlideError(BalnmpError):
    """A slide that cannot be served; the message names the path and the reason."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # picklable across processes
        return type(self), (self.path, self.reason)


class AnnotationError(BalnmpError):
    """An annotation file that cannot be read or holds invalid geometry."""


class TilingError(BalnmpError):
    """A patch grid that cannot be built (no resolution, bad size, ...)."""


class EncoderError(BalnmpError):
    """An unknown encoder, unusable weights or a checkpoint that does not fit."""


class StoreError(BalnmpError):
    """A feature store or pack that is missing, damaged or inconsistent."""


class MissingSlideError(StoreError, KeyError):
    """A slide id that the store does not hold."""

    __str__ = BalnmpError.__str__  # a message, not KeyError's quoted repr


class ExtractError(BalnmpError):
    """Bad input for a whole extraction job (no slides, duplicate ids, bad option)."""
