"""Click options of `train`/`cv`/`evaluate`/`predict`, built from the config dataclasses'
declarations (`balnmp_cache._options_click`, shared with `extract-features`), and the merge of
a `--config` file with the options given on the command line.

Only options given on the command line override a `--config` file, so the options default to
None on the command line and every switch has an off form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from balnmp_cache._options import Mapping, declared
from balnmp_cache._options_click import click_options, field_option

__all__ = ["config_data", "config_options", "option_of"]

F = TypeVar("F", bound=Callable[..., Any])


def option_of(cls: type, name: str, default_text: str | None = None) -> Callable[[F], F]:
    """The click option of field `name` of config class `cls`."""
    return field_option(next(f for f in dataclasses.fields(cls) if f.name == name),
                        from_config=True, default_text=default_text)


def config_options(fields: Sequence[dataclasses.Field[Any]],
                   command: str) -> Callable[[F], F]:
    """Decorator adding the options of `fields` that `command` offers, in that order."""
    return click_options(fields, command, from_config=True)


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
