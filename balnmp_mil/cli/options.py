"""Click options built from the config dataclasses' declarations (`balnmp_mil._options`).

Each declared field becomes one option (or the FEATURES argument): its flag, help (with the
default), metavar and choices come from the field, and the value is checked by the same `check`
as the dataclass, so the command line and `config.yaml` accept exactly the same values. Only
options given on the command line override a `--config` file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from balnmp_cache.errors import BalnmpError
from balnmp_mil._options import Flag, Mapping, Option, declared, default_of

__all__ = ["config_data", "config_options", "field_option", "option_of"]

F = TypeVar("F", bound=Callable[..., Any])


class OptionType(click.ParamType):
    """Command-line text -> the value the field's declaration allows (or a usage error)."""

    def __init__(self, name: str, opt: Option) -> None:
        self.field, self.opt = name, opt
        self.name = opt.check.metavar().lower()

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self.opt.metavar or self.opt.check.metavar()

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and self.opt.parse is not None:
            value = self.opt.parse(value)
        return checked(self.field, self.opt, value, ctx)

    def shell_complete(self, ctx: click.Context, param: click.Parameter,
                       incomplete: str) -> list[click.shell_completion.CompletionItem]:
        choices = self.opt.check.choices() or []
        return [click.shell_completion.CompletionItem(c) for c in choices
                if c.startswith(incomplete)]


def checked(name: str, opt: Option, value: Any, ctx: click.Context | None) -> Any:
    """`value` through the field's check; a refusal is a usage error (exit 2)."""
    try:
        return opt.check.convert(value, name, opt.flag_for(name))
    except BalnmpError as exc:
        raise click.UsageError(str(exc), ctx) from exc


def _help(f: dataclasses.Field[Any], opt: Option) -> str:
    """The declared help with the default in brackets, e.g. 'Training epochs. [100]'."""
    default = default_of(f)
    if opt.default_text is not None:
        shown = opt.default_text
    elif default is dataclasses.MISSING or default is None:
        return opt.help
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
        shown = ",".join(map(str, default))
    else:
        shown = str(default)
    return f"{opt.help} [{shown}]"


def _repeated(name: str, opt: Option) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """The callback of a repeatable option: each value parsed, all checked at once (a mapping
    field gets the `KEY=VALUE` pairs as a dict)."""

    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
        if not values:
            return None
        try:
            items = [opt.parse(v) if opt.parse is not None else v for v in values]
        except BalnmpError as exc:
            raise click.UsageError(f"{opt.flag_for(name)} {exc}", ctx) from exc
        # a mapping field's parse turns KEY=VALUE into a (key, value) pair
        value = (dict(cast("list[tuple[str, object]]", items)) if isinstance(opt.check, Mapping)
                 else items)
        return checked(name, opt, value, ctx)

    return callback


def field_option(f: dataclasses.Field[Any], default_text: str | None = None
                 ) -> Callable[[F], F]:
    """The click option (or argument) of one declared field (`default_text`: how its help
    shows the default, when the command's default is not the field's)."""
    opt = declared(f)
    if opt is None:
        raise TypeError(f"field {f.name!r} declares no option")
    if default_text is not None:
        opt = dataclasses.replace(opt, default_text=default_text)
    if opt.argument:
        return click.argument(f.name, required=False, type=click.Path(path_type=Path))
    flag, text = opt.flag_for(f.name), _help(f, opt)
    if isinstance(opt.check, Flag):
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=text)
    if opt.multiple:
        return click.option(flag, f.name, multiple=True, metavar=opt.metavar, help=text,
                            callback=_repeated(f.name, opt))
    kind = click.Path(path_type=Path) if opt.path else OptionType(f.name, opt)
    return click.option(flag, f.name, type=kind, metavar=opt.metavar, help=text)


def option_of(cls: type, name: str, default_text: str | None = None) -> Callable[[F], F]:
    """The click option of field `name` of config class `cls`."""
    return field_option(next(f for f in dataclasses.fields(cls) if f.name == name),
                        default_text)


def config_options(fields: Sequence[dataclasses.Field[Any]],
                   command: str) -> Callable[[F], F]:
    """Decorator adding the options of `fields` that `command` offers, in that order."""
    wanted = [f for f in fields
              if (opt := declared(f)) is not None and (opt.commands is None
                                                      or command in opt.commands)]

    def deco(func: F) -> F:
        for f in reversed(wanted):
            func = field_option(f)(func)
        return func

    return deco


def given(ctx: click.Context, names: Sequence[str]) -> dict[str, Any]:
    """Parameters the user actually gave on the command line (not defaults)."""
    out = {}
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            out[name] = ctx.params[name]
    return out


def config_data(ctx: click.Context, fields: Sequence[dataclasses.Field[Any]],
                config: Path | None) -> tuple[dict[str, Any], str]:
    """A `--config` file's values (if any) overridden by the options given on the command line
    (repeatable `KEY=VALUE` options add to the file's mapping); and where they came from."""
    from balnmp_mil.workflow.rundir import read_config

    data: dict[str, Any] = {}
    source = "command line"
    if config is not None:
        data = read_config(config)
        data.pop("meta", None)
        source = f"config file {config}"
    mappings = {f.name for f in fields if isinstance(getattr(declared(f), "check", None),
                                                     Mapping)}
    for key, value in given(ctx, [f.name for f in fields if f.name in ctx.params]).items():
        if key in mappings and isinstance(data.get(key), dict):
            value = {**data[key], **value}
        data[key] = str(value) if isinstance(value, Path) else value
    return data, source
