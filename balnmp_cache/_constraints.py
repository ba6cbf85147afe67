"""The allowed values of an option (`balnmp_cache._options`), modelled on scikit-learn's
`validate_parameter_constraints` (`Interval`, `StrOptions`): each `Constraint` converts a value
to its normal form or refuses it with an `OptionError` naming the option and what is allowed.
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from balnmp_cache._registry import Registry
from balnmp_cache.errors import OptionError

if TYPE_CHECKING:
    import click

__all__ = ["AnyOf", "Constraint", "Flag", "InstanceOf", "Interval", "ListOf", "Mapping", "OneOf",
           "PathTo", "Rule", "Text", "comma_list"]


class Constraint(abc.ABC):
    """The values one option may take."""

    @abc.abstractmethod
    def convert(self, value: object, name: str, flag: str) -> object:
        """The value, normalised (e.g. 1 -> 1.0 for a float), or `OptionError` naming the
        option (`name`: its config key, `flag`: its command-line form) and what is allowed."""

    def choices(self) -> list[str] | None:
        """The allowed names, for command-line choices and help (None: not a choice)."""
        return None

    def metavar(self) -> str | None:
        """How help shows a value (None: click's own)."""
        return None

    def click_type(self) -> click.ParamType | None:
        """A click type that parses these values itself (None: checked by `convert`)."""
        return None

    def refuse(self, value: object, name: str, flag: str, allowed: str) -> OptionError:
        shown = value if isinstance(value, str) and value.strip() else repr(value)
        if isinstance(value, os.PathLike):
            shown = os.fspath(value)
        return OptionError(f"{name} {shown} ({flag}): {allowed}")


@dataclass(frozen=True)
class Interval(Constraint):
    """Numbers of `kind` (int or float; numeric text accepted) between `low` and `high` (None:
    unbounded); `closed` says which ends are allowed, as in scikit-learn."""

    kind: type[int] | type[float]
    low: float | None = None
    high: float | None = None
    closed: Literal["both", "left", "right", "neither"] = "both"

    def convert(self, value: object, name: str, flag: str) -> object:
        number = _number(value, self.kind)
        if number is None or not self._inside(number):
            raise self.refuse(value, name, flag, f"must be {self.describe()}")
        return number

    def _inside(self, x: float) -> bool:
        low_ok = self.low is None or x > self.low or (
            x == self.low and self.closed in ("both", "left"))  # fmt: skip
        high_ok = self.high is None or x < self.high or (
            x == self.high and self.closed in ("both", "right"))  # fmt: skip
        return low_ok and high_ok

    def describe(self) -> str:
        """'an integer >= 1', 'a number > 0', 'a number in [0, 1)'."""
        what = "an integer" if self.kind is int else "a number"
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            return (f"{what} in {'[' if left else '('}{self.low:g}, {self.high:g}"
                    f"{']' if right else ')'}")
        if self.low is not None:
            return f"{what} {'>=' if left else '>'} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<=' if right else '<'} {self.high:g}"
        return what

    def metavar(self) -> str:
        return "INTEGER" if self.kind is int else "FLOAT"


def _number(value: object, kind: type) -> int | float | None:
    """`value` as a finite int/float of `kind` (numeric text accepted), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value.strip())
        except ValueError:
            return None
    if kind is int:
        if isinstance(value, Integral):
            return int(value)
        if isinstance(value, Real) and float(value).is_integer():
            return int(float(value))
        return None
    if isinstance(value, Real) and math.isfinite(float(value)):
        return float(value)
    return None


class OneOf(Constraint):
    """One name of a table: a `Registry` or a callable (read when checked, so a newly
    registered plugin is accepted with no other edit) or a fixed list of names. `what` words
    the error (default: the registry's kind, else the option's name): "unknown optimizer 'x'
    (--optimizer); choose one of adam, adamw, sgd"."""

    def __init__(self, table: Registry[Any] | Iterable[str] | Callable[[], Iterable[str]],
                 what: str | None = None) -> None:
        self.table = table
        self.what = what

    def choices(self) -> list[str]:
        table = self.table
        if isinstance(table, Registry):
            return table.names()
        values = table() if callable(table) else table
        return [str(v) for v in values]

    def convert(self, value: object, name: str, flag: str) -> object:
        names = self.choices()
        if isinstance(value, str) and value in names:
            return value
        what = self.what or (self.table.kind if isinstance(self.table, Registry) else name)
        raise OptionError(f"unknown {what} {value!r} ({flag}); choose one of {', '.join(names)}")

    def metavar(self) -> str:
        return "[" + "|".join(self.choices()) + "]"


@dataclass(frozen=True)
class ListOf(Constraint):
    """A non-empty list of names of one table (a comma-separated text is split)."""

    item: OneOf

    def convert(self, value: object, name: str, flag: str) -> object:
        items = comma_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise self.refuse(value, name, flag, "must be a comma-separated list of "
                              + ", ".join(self.item.choices()))
        return [self.item.convert(v, name, flag) for v in items]

    def choices(self) -> list[str]:
        return self.item.choices()

    def metavar(self) -> str:
        return "[" + "|".join(self.choices()) + "],..."


class Text(Constraint):
    """Text (a path is kept as its string)."""

    def convert(self, value: object, name: str, flag: str) -> object:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise self.refuse(value, name, flag, "must be text")
        return value


class Flag(Constraint):
    """True or False (YAML `true`/`false`; a switch on the command line)."""

    def convert(self, value: object, name: str, flag: str) -> object:
        if not isinstance(value, bool):
            raise self.refuse(value, name, flag, "must be true or false")
        return value


class Mapping(Constraint):
    """A mapping of text keys to values (YAML `{key: value}`)."""

    def convert(self, value: object, name: str, flag: str) -> object:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise self.refuse(value, name, flag, "must be a mapping of name: value")
        return dict(value)


@dataclass(frozen=True)
class PathTo(Constraint):
    """A path; `kind` "file", "dir" or "any"; `exists`: it must be there already. `what` words
    the refusal ("not a folder of <slide_id>.json files"). The value is kept as given."""

    kind: Literal["file", "dir", "any"] = "any"
    exists: bool = True
    what: str = ""

    def convert(self, value: object, name: str, flag: str) -> object:
        if not isinstance(value, (str, os.PathLike)):
            raise self.refuse(value, name, flag, "must be a path")
        p = Path(value)
        noun = "folder" if self.kind == "dir" else "file"
        wrong = {"file": not p.is_file(), "dir": not p.is_dir(), "any": not p.exists()}[self.kind]
        if self.exists and wrong:
            raise self.refuse(value, name, flag, self.what or f"no such {noun}")
        if not self.exists and p.exists() and self.kind != "any" and wrong:
            raise self.refuse(value, name, flag, f"exists and is not a {noun}")
        return value

    def click_type(self) -> click.ParamType:
        import click

        return click.Path(exists=self.exists, file_okay=self.kind != "dir",
                          dir_okay=self.kind != "file", path_type=Path)  # fmt: skip


@dataclass(frozen=True)
class InstanceOf(Constraint):
    """An instance of `types` (for Python-only forms, such as a dict instead of a CSV path)."""

    types: tuple[type, ...]
    what: str

    def convert(self, value: object, name: str, flag: str) -> object:
        if not isinstance(value, self.types):
            raise self.refuse(value, name, flag, f"must be {self.what}")
        return value


class AnyOf(Constraint):
    """Allowed when one of `constraints` allows it (the first one's refusal is shown); the
    command line parses with the first that has a click type."""

    def __init__(self, *constraints: Constraint) -> None:
        self.constraints = constraints

    def convert(self, value: object, name: str, flag: str) -> object:
        first: OptionError | None = None
        for constraint in self.constraints:
            try:
                return constraint.convert(value, name, flag)
            except OptionError as exc:
                first = first or exc
        raise cast(OptionError, first)

    def click_type(self) -> click.ParamType | None:
        return next((t for c in self.constraints if (t := c.click_type()) is not None), None)


class Rule(Constraint):
    """A check written as a function that raises a `BalnmpError` with the whole message (a
    shard `I/N`, an encoder name); the value is kept as given."""

    def __init__(self, func: Callable[[Any], object]) -> None:
        self.func = func

    def convert(self, value: object, name: str, flag: str) -> object:
        self.func(value)
        return value


def comma_list(value: object) -> list[str]:
    """'abmil, mean' -> ['abmil', 'mean']."""
    return [v.strip() for v in str(value).split(",") if v.strip()]
