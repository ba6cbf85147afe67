"""Checkpoint layouts: the key names a published checkpoint uses, mapped onto the module's.

A `Layout` answers three questions for one kind of file: does a state dict look like it
(`matches`), which keys and shapes must it hold for a given module (`expected`, in the
*file's* names, so a strict check names what the user's file lacks), and how its tensors
become the module's state dict (`convert`). `Renames` is the common case: prefix rules with
`{n}` for a block index, plus "split" rules where one module tensor is several published ones
concatenated on the first dimension (a fused qkv projection).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["ANY", "NATIVE", "Expected", "Layout", "Renames", "Shape"]

Shape = tuple[int, ...]
ANY = -1  # in an expected shape: any size along this dimension


@dataclass
class Expected:
    """The published keys a module needs: `shapes` (key -> shape, `ANY` for a free size);
    `optional` keys may be absent (buffers the module recomputes, training-only tensors);
    `ignored` prefixes are dropped unread (a head the encoder removes)."""

    shapes: dict[str, Shape]
    optional: set[str] = field(default_factory=set)
    ignored: tuple[str, ...] = ()


class Layout:
    """The module's own key names (a checkpoint saved from the same architecture)."""

    name = "native"

    def matches(self, keys: Collection[str]) -> bool:
        """Whether a state dict with these keys is in this layout (native: always)."""
        return True

    def expected(self, own: Mapping[str, Shape], ignored: tuple[str, ...] = ()) -> Expected:
        """What a checkpoint must hold for a module whose state has shapes `own`; `ignored`
        are the module-side prefixes of the head the encoder dropped."""
        return Expected(dict(own), ignored=ignored)

    def convert(self, state: dict[str, torch.Tensor],
                own: Mapping[str, Shape]) -> dict[str, torch.Tensor]:  # fmt: skip
        """The module's state dict from a checked checkpoint (ignored keys already gone)."""
        return state


NATIVE = Layout()


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(r"\{n\}", r"(\d+)"))


def _fill(template: str, groups: Sequence[str]) -> str:
    out = template
    for g in groups:
        out = out.replace("{n}", g, 1)
    return out


@dataclass(frozen=True)
class Renames(Layout):
    """Prefix renames between a published layout and the module.

    `renames`: (published prefix, module prefix) pairs, `{n}` standing for a block index;
    `splits`: (module prefix, published prefixes): the module tensor is the published ones
    concatenated on dim 0; `drop`: published keys that are read and discarded (optional);
    `head`: published prefixes ignored (a classifier this encoder does not use);
    `marker`: a published prefix whose presence identifies the layout.
    """

    name: str = "renamed"
    renames: tuple[tuple[str, str], ...] = ()
    splits: tuple[tuple[str, tuple[str, ...]], ...] = ()
    drop: tuple[str, ...] = ()
    head: tuple[str, ...] = ()
    marker: str | None = None

    def matches(self, keys: Collection[str]) -> bool:
        marker = self.marker
        return marker is None or any(k.startswith(marker) for k in keys)

    def published(self, key: str) -> list[str]:
        """The published key(s) of module key `key` (several for a split)."""
        for module, parts in self.splits:
            m = _pattern(module).match(key)
            if m:
                rest = key[m.end():]
                return [_fill(p, m.groups()) + rest for p in parts]
        for pub, module in self.renames:
            m = _pattern(module).match(key)
            if m:
                return [_fill(pub, m.groups()) + key[m.end():]]
        return [key]

    def expected(self, own: Mapping[str, Shape], ignored: tuple[str, ...] = ()) -> Expected:
        shapes: dict[str, Shape] = {}
        for key, shape in own.items():
            names = self.published(key)
            part = (shape[0] // len(names), *shape[1:]) if len(names) > 1 else shape
            shapes.update(dict.fromkeys(names, part))
        heads = tuple(p for prefix in ignored for p in self.published(prefix))
        return Expected(shapes, ignored=self.head + heads)

    def module_key(self, key: str) -> str:
        for pub, module in self.renames:
            m = _pattern(pub).match(key)
            if m:
                return _fill(module, m.groups()) + key[m.end():]
        return key

    def convert(self, state: dict[str, torch.Tensor],
                own: Mapping[str, Shape]) -> dict[str, torch.Tensor]:  # fmt: skip
        state = {k: v for k, v in state.items() if k not in self.drop}
        out: dict[str, torch.Tensor] = {}
        for key in own:
            names = self.published(key)
            if len(names) > 1:
                out[key] = torch.cat([state.pop(n) for n in names], dim=0)
        for key, value in state.items():
            out[self.module_key(key)] = value
        return out
