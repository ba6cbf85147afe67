"""Shared pieces of the `balnmp-mil` commands: input-error handling and option merging.

Bad input (a missing file or column, an unknown task/model, a patient missing from the store,
an existing run directory, a bad config) exits with status 2 and a one-line message naming the
file / column / patient; unexpected errors keep their traceback (status 1). Set
`BALNMP_DEBUG=1` to see the traceback of input errors too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml


class BadInput(click.ClickException):
    """Printed as `Error: <message>`; exit status 2 like click's own usage errors."""

    exit_code = 2


def input_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad user input (the store's StoreError when it exists)."""
    types: list[type[BaseException]] = [ValueError, FileNotFoundError, FileExistsError,
                                         NotADirectoryError, yaml.YAMLError]
    try:
        from balnmp_cache.store import StoreError

        types.append(StoreError)
    except ImportError:  # the store module is optional for the error mapping only
        pass
    return tuple(types)


def handle_input_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn input errors raised by the workflow into `BadInput` (exit 2)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except input_error_types() as exc:
            if os.environ.get("BALNMP_DEBUG"):
                raise
            message = str(exc) or type(exc).__name__
            if isinstance(exc, FileNotFoundError) and exc.filename:
                message = f"{exc.filename}: {exc.strerror or 'no such file or directory'}"
            raise BadInput(message) from exc

    return wrapper


def explicit_params(ctx: click.Context, names: list[str]) -> dict[str, Any]:
    """Parameters the user actually gave on the command line (not defaults)."""
    out = {}
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            out[name] = ctx.params[name]
    return out


def merge_config(ctx: click.Context, names: list[str], config: Path | None,
                 renames: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """Config file values (if any) overridden by options given on the command line."""
    from balnmp_mil.workflow.rundir import read_config

    data: dict[str, Any] = {}
    source = "command line"
    if config is not None:
        data = read_config(config)
        data.pop("meta", None)
        source = f"config file {config}"
    given = explicit_params(ctx, names)
    for key, value in given.items():
        data[(renames or {}).get(key, key)] = str(value) if isinstance(value, Path) else value
    return data, source


def parse_model_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`--model-arg hidden=128 --model-arg dropout=0.25` -> {"hidden": 128, "dropout": 0.25}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--model-arg {pair!r}: expected KEY=VALUE, e.g. hidden=128")
        out[key.strip()] = yaml.safe_load(value)
    return out


def split_list(value: str | None) -> list[str] | None:
    """'abmil, mean' -> ['abmil', 'mean']."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]
