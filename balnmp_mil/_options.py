"""One declaration per option: a config dataclass field carries its help, allowed values and
command-line form, and every other place (click options, `config.yaml` keys, Python keywords,
the scikit-learn wrapper) derives from it.

`option(default, help=..., check=...)` is a `dataclasses.field` whose metadata holds an
`Option`; `validate(config)` (called from the dataclass's `__post_init__`) checks and normalises
every declared field against its `check`: an `Interval`, a `OneOf` registry or table (read when
checked, so a newly registered model or optimiser is accepted with no other edit), `Text`,
`Flag`, `Mapping` or a `Check` of its own. `balnmp_mil.cli.options` builds click options from
the same fields. The shape follows scikit-learn's `validate_parameter_constraints`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import numbers
import os
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import TYPE_CHECKING, Any

from balnmp_cache._registry import Registry
from balnmp_mil.errors import InputError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["Check", "Flag", "Interval", "ListOf", "Mapping", "OneOf", "Option", "Text",
           "comma_list", "declared", "option", "option_fields", "validate"]

KEY = "balnmp_option"


class Check(abc.ABC):
    """Allowed values of one option: `convert` returns the normalised value or raises
    `InputError` naming the option (`name`, and its command-line `flag`) and what is allowed."""

    @abc.abstractmethod
    def convert(self, value: object, name: str, flag: str) -> object:
        """The value, normalised (e.g. 1 -> 1.0 for a float), or `InputError`."""

    def choices(self) -> list[str] | None:
        """The allowed names, for command-line choices and help (None: not a choice)."""
        return None

    def metavar(self) -> str:
        return "TEXT"

    def _refuse(self, value: object, name: str, flag: str, allowed: str) -> InputError:
        shown = value if isinstance(value, str) and value.strip() else repr(value)
        return InputError(f"{name} {shown} ({flag}): must be {allowed}")


@dataclass(frozen=True)
class Interval(Check):
    """A number of `kind` (int or float) between `low` and `high` (None: unbounded);
    `closed` says which ends belong: "both", "left", "right" or "neither"."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def convert(self, value: object, name: str, flag: str) -> object:
        number = _number(value, self.kind)
        if number is None or not self._inside(number):
            raise self._refuse(value, name, flag, self.describe())
        return number

    def _inside(self, x: float) -> bool:
        lo_ok = self.low is None or x > self.low or (x == self.low and self.closed in
                                                     ("both", "left"))
        hi_ok = self.high is None or x < self.high or (x == self.high and self.closed in
                                                       ("both", "right"))
        return lo_ok and hi_ok

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
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(float(value))
        return None
    if isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return float(value)
    return None


@dataclass(frozen=True)
class OneOf(Check):
    """One name of a table: a `Registry` (its names are read when checked, so a newly
    registered model or optimiser is accepted with no other edit) or a tuple of names.
    `what` words the error (default: the registry's kind), e.g. "unknown optimizer 'x'
    (--optimizer); choose one of adam, adamw, sgd"."""

    table: Registry[Any] | tuple[str, ...]
    what: str | None = None

    def choices(self) -> list[str]:
        return self.table.names() if isinstance(self.table, Registry) else list(self.table)

    def convert(self, value: object, name: str, flag: str) -> object:
        names = self.choices()
        if isinstance(value, str) and value in names:
            return value
        what = self.what or (self.table.kind if isinstance(self.table, Registry) else name)
        raise InputError(f"unknown {what} {value!r} ({flag}); choose one of {', '.join(names)}")

    def metavar(self) -> str:
        return "[" + "|".join(self.choices()) + "]"


@dataclass(frozen=True)
class ListOf(Check):
    """A non-empty list of names of one table (a comma-separated text is split)."""

    item: OneOf

    def convert(self, value: object, name: str, flag: str) -> object:
        items = comma_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise self._refuse(value, name, flag, "a comma-separated list of "
                               + ", ".join(self.item.choices()))
        return [self.item.convert(v, name, flag) for v in items]

    def choices(self) -> list[str]:
        return self.item.choices()

    def metavar(self) -> str:
        return "[" + "|".join(self.choices()) + "],..."


@dataclass(frozen=True)
class Text(Check):
    """Text (a path is kept as its string)."""

    def convert(self, value: object, name: str, flag: str) -> object:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise self._refuse(value, name, flag, "text")
        return value


@dataclass(frozen=True)
class Flag(Check):
    """True or False (YAML `true`/`false`; `--x/--no-x` on the command line)."""

    def convert(self, value: object, name: str, flag: str) -> object:
        if not isinstance(value, bool):
            raise self._refuse(value, name, flag, "true or false")
        return value


@dataclass(frozen=True)
class Mapping(Check):
    """A mapping of text keys to values (YAML `{key: value}`)."""

    def convert(self, value: object, name: str, flag: str) -> object:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise self._refuse(value, name, flag, "a mapping of name: value")
        return dict(value)


def comma_list(value: object) -> list[str]:
    """'abmil, mean' -> ['abmil', 'mean']."""
    return [v.strip() for v in str(value).split(",") if v.strip()]


@dataclass(frozen=True)
class Option:
    """What a config field declares beyond its name, type and default.

    `flag`: the command-line flag (default `--<name-with-dashes>`); `parse`: command-line text
    -> value (before `check`); `default_text`: how help shows a None or computed default;
    `commands`: the commands offering it (None: every command built from the config class);
    `argument`: a positional argument instead of an option; `multiple`: a repeatable option.
    """

    help: str
    check: Check
    flag: str | None = None
    metavar: str | None = None
    default_text: str | None = None
    path: bool = False
    parse: Callable[[str], object] | None = None
    multiple: bool = False
    argument: bool = False
    commands: tuple[str, ...] | None = None

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def option(default: Any = MISSING, *, help: str, check: Check,
           factory: Callable[[], Any] | None = None, **cli: Any) -> Any:
    """A dataclass field declaring an option (see `Option` for the command-line keywords)."""
    metadata = {KEY: Option(help=help, check=check, **cli)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(f: dataclasses.Field[Any]) -> Option | None:
    """The `Option` a field declares, or None for a plain field."""
    return f.metadata.get(KEY)


def option_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The declared option fields of a config dataclass, in declaration order."""
    return [f for f in dataclasses.fields(cls) if declared(f) is not None]


@functools.cache
def _nullable(cls: type) -> frozenset[str]:
    hints = typing.get_type_hints(cls)
    return frozenset(n for n, hint in hints.items() if type(None) in typing.get_args(hint))


def allows_none(cls: type, name: str) -> bool:
    """Whether the field's annotation admits None (`int | None`)."""
    return name in _nullable(cls)


def validate(config: DataclassInstance) -> None:
    """Check and normalise every declared field of a config dataclass instance in place."""
    cls = type(config)
    for f in dataclasses.fields(config):
        opt = declared(f)
        if opt is None:
            continue
        value = getattr(config, f.name)
        if value is None and allows_none(cls, f.name):
            continue
        object.__setattr__(config, f.name, opt.check.convert(value, f.name, opt.flag_for(f.name)))


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The field's default (its factory called), or MISSING for a required field."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING
