"""Click options built from option declarations (`balnmp_cache._options`), for both CLIs.

Each declared field becomes one option (or a positional argument): its flag, help (with the
default), metavar and choices come from the field, and the command-line value is checked by the
same constraint as the dataclass, so the command line, `config.yaml` and Python accept exactly
the same values with the same message.

Two ways to default: `from_config=False` (`extract-features`, and `balnmp-mil`'s commands
other than `train`/`cv`) gives click the field's default, and a field without one is a
required option or argument; `from_config=True` (`balnmp-mil train`, whose values may come
from a `--config` file) gives click None, so that only options given on the command line
override the file, and every switch gets an off form (`--standardize/--no-standardize`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from balnmp_cache._options import (
    SAME,
    Flag,
    Mapping,
    OptionSpec,
    declared,
    default_of,
    option_fields,
)
from balnmp_cache.errors import BalnmpError

__all__ = ["click_options", "field_option"]

F = TypeVar("F", bound=Callable[..., Any])


class OptionType(click.ParamType):
    """Command-line text -> the value the field's declaration allows (or a usage error)."""

    def __init__(self, name: str, spec: OptionSpec) -> None:
        self.field, self.spec = name, spec
        self.name = (spec.metavar or (spec.check.metavar() if spec.check else None)
                     or "text").lower()

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self.spec.metavar or (self.spec.check.metavar() if self.spec.check else None)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and self.spec.parse is not None:
            value = self.spec.parse(value)
        return checked(self.field, self.spec, value, ctx)

    def get_missing_message(self, param: click.Parameter, ctx: click.Context | None) -> str:
        choices = self.spec.check.choices() if self.spec.check else None
        return f"Choose one of {', '.join(choices)}." if choices else ""

    def shell_complete(self, ctx: click.Context, param: click.Parameter,
                       incomplete: str) -> list[click.shell_completion.CompletionItem]:
        choices = (self.spec.check.choices() if self.spec.check else None) or []
        return [click.shell_completion.CompletionItem(c) for c in choices
                if c.startswith(incomplete)]


def checked(name: str, spec: OptionSpec, value: Any, ctx: click.Context | None) -> Any:
    """`value` through the field's constraint; a refusal is a usage error (exit 2)."""
    if spec.check is None:
        return value
    try:
        return spec.check.convert(value, name, spec.flag_for(name))
    except BalnmpError as exc:
        raise click.UsageError(str(exc), ctx) from exc


def _shown(value: Any) -> str | None:
    """How help shows a default (None: not shown)."""
    if value is dataclasses.MISSING or value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _help(spec: OptionSpec, default: Any) -> str:
    """The declared help with the default, e.g. 'Training epochs.  [default: 100]'."""
    shown = spec.default_text if spec.default_text is not None else _shown(default)
    return spec.help if shown is None else f"{spec.help}  [default: {shown}]"


def _repeated(name: str, spec: OptionSpec) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """The callback of a repeatable option: each value parsed, all checked at once (a mapping
    field gets the `KEY=VALUE` pairs as a dict)."""

    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
        if not values:
            return None
        try:
            items = [spec.parse(v) if spec.parse is not None else v for v in values]
        except BalnmpError as exc:
            raise click.UsageError(f"{spec.flag_for(name)} {exc}", ctx) from exc
        value = (dict(cast("list[tuple[str, object]]", items))
                 if isinstance(spec.check, Mapping) else items)
        return checked(name, spec, value, ctx)

    return callback


def field_option(f: dataclasses.Field[Any], from_config: bool = False,
                 default_text: str | None = None) -> Callable[[F], F]:
    """The click option (or argument) of one declared field (`default_text`: how its help
    shows the default, when the command's default is not the field's). A field without a
    default is a required option or argument, unless `from_config` (a file may give it)."""
    spec = declared(f)
    if spec is None:
        raise TypeError(f"field {f.name!r} declares no option")
    if default_text is not None:
        spec = dataclasses.replace(spec, default_text=default_text)
    default = default_of(f) if spec.cli_default is SAME else spec.cli_default
    required = default is dataclasses.MISSING and not from_config
    if spec.argument:
        return click.argument(f.name, required=required, type=click.Path(path_type=Path))
    flag, text = spec.flag_for(f.name), _help(spec, default)
    # required: click's own "Missing option" (exit 2), so click gets no default
    kwargs: dict[str, Any] = ({"required": True} if required
                              else {"default": None if from_config else default})
    kwargs["help"] = text
    if isinstance(spec.check, Flag):
        negative = spec.negative or (f"--no-{flag[2:]}" if from_config or default else None)
        if negative is None:  # a plain switch, off unless given
            return click.option(flag, f.name, is_flag=True, default=kwargs["default"],
                                help=spec.help)
        return click.option(f"{flag}/{negative}", f.name, **kwargs)
    if spec.multiple:
        kwargs["default"] = None
        return click.option(flag, f.name, multiple=True, metavar=spec.metavar,
                            callback=_repeated(f.name, spec), **kwargs)
    native = spec.check.click_type() if spec.check is not None else None
    kind = click.Path(path_type=Path) if spec.path else native or OptionType(f.name, spec)
    return click.option(flag, f.name, type=kind, metavar=spec.metavar, **kwargs)


def click_options(fields: type | Sequence[dataclasses.Field[Any]], command: str | None = None,
                  from_config: bool = False) -> Callable[[F], F]:
    """Decorator adding one click option per declared field (of a dataclass, or the given
    fields) that `command` offers, in field order; each reaches the command as a keyword
    named after its field."""
    if isinstance(fields, type):
        fields = option_fields(fields)
    wanted = [f for f in fields
              if (spec := declared(f)) is not None and (command is None or spec.commands is None
                                                       or command in spec.commands)]

    def deco(func: F) -> F:
        for f in reversed(wanted):
            func = field_option(f, from_config)(func)
        return func

    return deco
