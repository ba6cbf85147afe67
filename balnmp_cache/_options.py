"""One declaration per option, for both stages: a dataclass field holds its default, help text
and allowed values, and every other form of the option derives from it.

`option(default, check, help=...)` declares a field; `check_options(obj)` (called from the
dataclass's `__post_init__`) checks and normalises every declared field, so a bad value is
refused before any work, whether it came from Python, a `config.yaml` or the command line;
`balnmp_cache._options_click` turns the same fields into click options; `with_option_keywords`
gives a function the fields as keyword arguments. Allowed values are the `Constraint`s of
`balnmp_cache._constraints` (re-exported here); choices may be a `Registry` or a callable read
when checked, so a plugin registered later is a valid choice with no other edit.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

from balnmp_cache._constraints import (
    AnyOf,
    Constraint,
    Flag,
    InstanceOf,
    Interval,
    ListOf,
    Mapping,
    OneOf,
    PathTo,
    Rule,
    Text,
    comma_list,
)
from balnmp_cache.errors import OptionError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "AnyOf", "Constraint", "Flag", "InstanceOf", "Interval", "ListOf", "Mapping", "OneOf",
    "OptionSpec", "PathTo", "Rule", "Text", "check_options", "comma_list", "declared",
    "default_of", "option", "option_fields", "with_option_keywords",
]  # fmt: skip

P = ParamSpec("P")
R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")
O_ = TypeVar("O_")

_KEY = "balnmp_option"
SAME: Any = object()  # `cli_default` not given: the command line uses the field's default


@dataclass(frozen=True)
class OptionSpec:
    """What a field declares about its option besides its name, type and default.

    `check`: the allowed values; `flag`: the command-line name (default `--<name-with-dashes>`);
    `metavar` and `default_text`: how help shows a value and the default; `cli_default`: another
    default on the command line; `negative`: the off switch of a flag (`--no-progress`);
    `nullable`: None is allowed (default: when the annotation or the default admits it);
    `parse`: command-line text -> value before `check`; `path`: a filesystem path argument;
    `multiple`: repeatable; `argument`: positional; `commands`: the commands offering it (None:
    every command built from the class).
    """

    help: str
    check: Constraint | None = None
    flag: str | None = None
    metavar: str | None = None
    default_text: str | None = None
    cli_default: Any = SAME
    negative: str | None = None
    nullable: bool | None = None
    parse: Callable[[str], object] | None = None
    path: bool = False
    multiple: bool = False
    argument: bool = False
    commands: tuple[str, ...] | None = None

    def flag_for(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")


def option(default: Any = MISSING, check: Constraint | None = None, *, help: str,
           factory: Callable[[], Any] | None = None, **cli: Any) -> Any:
    """A dataclass field declaring one option (`cli`: the `OptionSpec` keywords)."""
    metadata = {_KEY: OptionSpec(help=help, check=check, **cli)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(f: dataclasses.Field[Any]) -> OptionSpec | None:
    """The `OptionSpec` a field declares, or None for a plain field."""
    return f.metadata.get(_KEY)


def option_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The declared option fields of a dataclass, in declaration order."""
    return [f for f in dataclasses.fields(cls) if declared(f) is not None]


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The field's default (its factory called), or MISSING for a required field."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


@functools.cache
def _nullable(cls: type) -> frozenset[str]:
    hints = typing.get_type_hints(cls)
    return frozenset(n for n, hint in hints.items() if type(None) in typing.get_args(hint))


def allows_none(cls: type, f: dataclasses.Field[Any]) -> bool:
    """Whether None is a value of the field: declared so, or its annotation or default says."""
    spec = declared(f)
    if spec is not None and spec.nullable is not None:
        return spec.nullable
    return f.name in _nullable(cls) or f.default is None


def check_options(obj: DataclassInstance) -> None:
    """Check and normalise, in place, every declared field of a dataclass instance; the first
    value its constraint refuses raises `OptionError` naming the option and the value."""
    cls = type(obj)
    for f in option_fields(cls):
        spec = cast(OptionSpec, declared(f))
        value = getattr(obj, f.name)
        flag = spec.flag_for(f.name)
        if value is None:
            if not allows_none(cls, f):
                raise OptionError(f"{f.name} ({flag}) needs a value")
            continue
        if spec.check is not None:
            object.__setattr__(obj, f.name, spec.check.convert(value, f.name, flag))


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
