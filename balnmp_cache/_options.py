"""One declaration per option: a dataclass field holds its default, help text and allowed values.

`option(default, allowed, help=...)` declares a field. `check_options(obj)` checks an instance
against the fields' constraints (call it from `__post_init__`, so a bad value is refused before
any work); `click_options(cls)` turns the same fields into command-line options whose click
types (ranges, choices, paths) come from the same constraints; `with_option_keywords(cls)` gives
a function the fields as keyword arguments. Choices may be callables read when used, so a
backend registered later is a valid choice with no other edit. Modelled on scikit-learn's
`validate_parameter_constraints` with `Interval` and `StrOptions`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, cast

from balnmp_cache.errors import OptionError

if TYPE_CHECKING:
    import click

__all__ = [
    "AnyOf", "Constraint", "Flag", "InstanceOf", "Interval", "OneOf", "OptionSpec", "PathTo",
    "Rule", "check_options", "click_options", "option", "option_fields", "with_option_keywords",
]  # fmt: skip

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")
O_ = TypeVar("O_")
F = TypeVar("F", bound=Callable[..., Any])

_KEY = "balnmp_option"
_SAME = object()  # `cli_default` not given: the command line uses the field's default


class Constraint(abc.ABC):
    """The values an option may take."""

    @abc.abstractmethod
    def check(self, value: object) -> str | None:
        """None when `value` is allowed, else why not ("must be > 0"). May raise a
        `BalnmpError` with a complete message instead (see `Rule`)."""

    def click_type(self) -> click.ParamType | None:
        """The click type that parses (and shows) these values; None: a plain string."""
        return None


@dataclass(frozen=True)
class Interval(Constraint):
    """Numbers of `kind` between `low` and `high` (None: unbounded); `closed` says which ends
    are allowed, as in scikit-learn."""

    kind: type[int] | type[float]
    low: float | None = None
    high: float | None = None
    closed: Literal["both", "left", "right", "neither"] = "both"

    def check(self, value: object) -> str | None:
        integral = self.kind is int
        if isinstance(value, bool) or not isinstance(value, Integral if integral else Real):
            return f"must be {'an integer' if integral else 'a number'}{self._bounds()}"
        number = float(value)
        if not math.isfinite(number):
            return "must be a finite number"
        low_ok = self.low is None or number > self.low or (
            number == self.low and self.closed in ("both", "left"))  # fmt: skip
        high_ok = self.high is None or number < self.high or (
            number == self.high and self.closed in ("both", "right"))  # fmt: skip
        return None if low_ok and high_ok else f"must be{self._bounds()}"

    def _bounds(self) -> str:
        lo = "[" if self.closed in ("both", "left") else "("
        hi = "]" if self.closed in ("both", "right") else ")"
        if self.low is not None and self.high is not None:
            return f" in {lo}{self.low:g}, {self.high:g}{hi}"
        if self.low is not None:
            return f" {'>=' if lo == '[' else '>'} {self.low:g}"
        if self.high is not None:
            return f" {'<=' if hi == ']' else '<'} {self.high:g}"
        return ""

    def click_type(self) -> click.ParamType:
        import click

        if self.low is None and self.high is None:
            return click.INT if self.kind is int else click.FLOAT
        min_open = self.closed in ("right", "neither")
        max_open = self.closed in ("left", "neither")
        if self.kind is int:
            return click.IntRange(_int(self.low), _int(self.high), min_open, max_open)
        return click.FloatRange(self.low, self.high, min_open, max_open)


def _int(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


class OneOf(Constraint):
    """One of a list of names; `values` may be a callable (a registry's names) read when used."""

    def __init__(self, values: Iterable[str] | Callable[[], Iterable[str]]) -> None:
        self._values = values

    @property
    def values(self) -> list[str]:
        values = self._values() if callable(self._values) else self._values
        return [str(v) for v in values]

    def check(self, value: object) -> str | None:
        values = self.values
        return None if value in values else f"must be one of {', '.join(values)}"

    def click_type(self) -> click.ParamType:
        return _live_choice(self)


def _live_choice(constraint: OneOf) -> click.ParamType:
    """A `click.Choice` whose choices are read from `constraint` each time click needs them."""
    import click

    class LiveChoice(click.Choice):
        @property  # type: ignore[override]  # a live view instead of a frozen tuple
        def choices(self) -> Sequence[str]:
            return tuple(constraint.values)

        @choices.setter
        def choices(self, value: Sequence[str]) -> None:  # click's __init__ assigns it
            pass

    return LiveChoice([])


@dataclass(frozen=True)
class PathTo(Constraint):
    """A path; `kind` "file" or "dir" (or "any"); `exists`: it must be there already.
    `what` words the refusal ("not a folder of <slide_id>.json files")."""

    kind: Literal["file", "dir", "any"] = "any"
    exists: bool = True
    what: str = ""

    def check(self, value: object) -> str | None:
        if not isinstance(value, (str, os.PathLike)):
            return "must be a path"
        p = Path(value)
        wrong = {"file": not p.is_file(), "dir": not p.is_dir(), "any": not p.exists()}[self.kind]
        if self.exists and wrong:
            return self.what or f"no such {'folder' if self.kind == 'dir' else 'file'}"
        if not self.exists and p.exists() and self.kind != "any" and wrong:
            return f"exists and is not a {'folder' if self.kind == 'dir' else 'file'}"
        return None

    def click_type(self) -> click.ParamType:
        import click

        return click.Path(exists=self.exists, file_okay=self.kind != "dir",
                          dir_okay=self.kind != "file", path_type=Path)  # fmt: skip


@dataclass(frozen=True)
class InstanceOf(Constraint):
    """An instance of `types` (for Python-only forms, such as a dict instead of a CSV path)."""

    types: tuple[type, ...]
    what: str

    def check(self, value: object) -> str | None:
        return None if isinstance(value, self.types) else f"must be {self.what}"


class Flag(Constraint):
    """True or False (an on/off switch on the command line)."""

    def check(self, value: object) -> str | None:
        return None if isinstance(value, bool) else "must be True or False"


class AnyOf(Constraint):
    """Allowed when one of `constraints` allows it; the command line parses with the first that
    has a click type."""

    def __init__(self, *constraints: Constraint) -> None:
        self.constraints = constraints

    def check(self, value: object) -> str | None:
        reasons = [c.check(value) for c in self.constraints]
        return None if any(r is None for r in reasons) else reasons[0]

    def click_type(self) -> click.ParamType | None:
        return next((t for c in self.constraints if (t := c.click_type()) is not None), None)


class Rule(Constraint):
    """A check written as a function that raises a `BalnmpError` with the whole message (a shard
    `I/N`, an encoder name); its result is discarded."""

    def __init__(self, func: Callable[[Any], object]) -> None:
        self.func = func

    def check(self, value: object) -> str | None:
        self.func(value)
        return None


@dataclass(frozen=True)
class OptionSpec:
    """What a field says about its option besides its default (see `option`)."""

    help: str
    allowed: Constraint | None = None
    flag: str | None = None
    cli_default: object = _SAME
    negative: str | None = None
    nullable: bool = False
    metavar: str | None = None


def option(default: Any, allowed: Constraint | None = None, *, help: str,
           flag: str | None = None, cli_default: object = _SAME, negative: str | None = None,
           nullable: bool | None = None, metavar: str | None = None) -> Any:  # fmt: skip
    """A dataclass field declaring one option.

    `allowed`: the values it may take (checked by `check_options`, shown and parsed by click);
    `flag`: the command-line name (default `--field-name`); `cli_default`: a different default
    on the command line (shown in `--help`); `negative`: the off switch of a tri-state flag
    (`--no-progress`); `nullable`: None is allowed (default: when the default is None).
    """
    spec = OptionSpec(help, allowed, flag, cli_default, negative,
                      default is None if nullable is None else nullable, metavar)  # fmt: skip
    return dataclasses.field(default=default, metadata={_KEY: spec})


def option_fields(cls: type) -> list[tuple[str, OptionSpec, str, Any]]:
    """(field name, spec, flag, default) of every `option` field of dataclass `cls`, in order."""
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if spec is not None:
            out.append((f.name, spec, spec.flag or "--" + f.name.replace("_", "-"), f.default))
    return out


def _show(value: object) -> str:
    return str(value) if isinstance(value, os.PathLike) else repr(value)


def check_options(obj: object) -> None:
    """Raise `OptionError` (naming the flag and the value) for the first field of `obj` whose
    value its constraint refuses; `Rule` checks raise their own error."""
    for name, spec, flag, _ in option_fields(type(obj)):
        value = getattr(obj, name)
        if value is None:
            if not spec.nullable:
                raise OptionError(f"{flag} needs a value")
            continue
        reason = spec.allowed.check(value) if spec.allowed is not None else None
        if reason is not None:
            raise OptionError(f"{flag} {_show(value)}: {reason}")


def click_options(cls: type) -> Callable[[F], F]:
    """A decorator adding one click option per `option` field of `cls`, in field order; each
    reaches the command as a keyword named after its field."""
    import click

    def deco(func: F) -> F:
        for name, spec, flag, default in reversed(option_fields(cls)):
            value = default if spec.cli_default is _SAME else spec.cli_default
            kwargs: dict[str, Any] = {"default": value, "help": spec.help}
            decls = [flag if spec.negative is None else f"{flag}/{spec.negative}", name]
            if isinstance(spec.allowed, Flag) and spec.negative is None:
                kwargs["is_flag"] = True
            else:
                kwargs["show_default"] = value is not None and spec.negative is None
                if spec.allowed is not None and (ptype := spec.allowed.click_type()) is not None:
                    kwargs["type"] = ptype
            if spec.metavar:
                kwargs["metavar"] = spec.metavar
            func = click.option(*decls, **kwargs)(func)
        return func

    return deco


def with_option_keywords(
    cls: Callable[P, O_],
) -> Callable[[Callable[[A, B, O_], R]], Callable[Concatenate[A, B, P], R]]:
    """Turn `func(a, b, options)` into `func(a, b, **fields of cls)`: its keywords, their order
    and defaults are the fields of the options dataclass `cls`, declared once, and the options
    object is built (and checked) from them."""

    def deco(func: Callable[[A, B, O_], R]) -> Callable[Concatenate[A, B, P], R]:
        head = list(inspect.signature(func).parameters.values())[:2]
        fields = list(inspect.signature(cls).parameters.values())
        sig = inspect.Signature([*head, *fields],
                                return_annotation=inspect.signature(func).return_annotation)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> R:
            bound = sig.bind(*args, **kwargs).arguments
            a, b = (bound.pop(p.name) for p in head)
            return func(a, b, cls(**bound))  # type: ignore[call-arg]  # P: the fields of cls

        wrapper.__signature__ = sig  # type: ignore[attr-defined]  # what help() shows
        return cast(Callable[Concatenate[A, B, P], R], wrapper)

    return deco
