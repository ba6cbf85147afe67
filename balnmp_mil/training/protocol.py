"""Training protocols (`--protocol`): named sets of training options, one registry.

A protocol is a mapping of `FitConfig` field -> value. `apply_protocol` gives a config the
protocol's values for the fields still at their declared defaults, so an option given with
another value wins (to keep a default value against a protocol, write the protocol out as
options instead). The paper's protocol lives with what is specific to the paper
(`balnmp_mil.paper.protocol`), registered here by name and imported on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from balnmp_cache._options import default_of, option_fields
from balnmp_cache._registry import Registry

__all__ = ["PROTOCOLS", "apply_protocol"]

PROTOCOLS: Registry[Mapping[str, Any]] = Registry("training protocol", "--protocol")
PROTOCOLS.register("paper", "balnmp_mil.paper.protocol:PAPER_PROTOCOL")


def apply_protocol(config: Any) -> None:
    """Set `config.protocol`'s values on the fields of `config` left at their defaults."""
    name = getattr(config, "protocol", None)
    if name is None or name not in PROTOCOLS:
        return  # unknown names are refused by the option's check, with the choices
    preset = PROTOCOLS.get(name)
    fields = {f.name: f for f in option_fields(type(config))}
    unknown = sorted(set(preset) - set(fields))
    if unknown:
        raise TypeError(f"protocol {name!r} sets unknown options {unknown}")
    for key, value in preset.items():
        current = getattr(config, key)
        if current == default_of(fields[key]) and current != value:
            setattr(config, key, value)
