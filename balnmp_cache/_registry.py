"""One registry shape for every plugin folder: slide backends, store formats, encoders, models.

An entry is an object (a class, a builder) or a lazy `"module:attribute"` string resolved on
first use, so optional libraries (cuCIM, timm, zarr) load only when their entry is chosen.
Capabilities live as attributes on the registered class, not in lists kept elsewhere, and the
command line builds its choices from `names()`, so a new entry is one `register` call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from balnmp_cache.errors import RegistryError

__all__ = ["Registry", "lazy_face", "resolve"]

T = TypeVar("T")


def resolve(target: str) -> Any:
    """The object a `"package.module:attribute"` string names (the one lazy resolver)."""
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr:
        raise RegistryError(f"{target!r} is not a 'package.module:attribute' reference")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Named entries of one kind, in registration order.

    `kind` ("slide backend") and `option` ("--backend") word the error for an unknown name.
    """

    def __init__(self, kind: str, option: str | None = None) -> None:
        self.kind = kind
        self.option = option
        self._entries: dict[str, T | str] = {}

    @overload
    def register(self, name: str, target: None = None, *,
                 replace: bool = False) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, target: T | str, *, replace: bool = False) -> T | str: ...
    def register(self, name: str, target: T | str | None = None, *,
                 replace: bool = False) -> Any:
        """Add `target` under `name`; without `target`, a decorator that registers its argument."""
        if target is None:
            def deco(obj: T) -> T:
                self._add(name, obj, replace)
                return obj

            return deco
        self._add(name, target, replace)
        return target

    def _add(self, name: str, target: T | str, replace: bool) -> None:
        old = self._entries.get(name)
        if old is not None and not replace and old is not target and old != target:
            raise RegistryError(f"{self.kind} {name!r} is already registered; pass replace=True "
                                "to override it")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        """Remove the entry `name` (a plugin withdrawn at run time, or a test's stand-in)."""
        if name not in self._entries:
            raise RegistryError(self.unknown(name))
        del self._entries[name]

    def get(self, name: str) -> T:
        """The entry for `name` (a lazy string is imported now, once)."""
        try:
            target = self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown(name)) from None
        if isinstance(target, str):
            target = resolve(target)
            self._entries[name] = target
        return target

    def unknown(self, name: object) -> str:
        """The message for a name nobody registered: what was asked, what exists, where."""
        where = f" ({self.option})" if self.option else ""
        return f"unknown {self.kind} {name!r}{where}; choose one of {', '.join(self._entries)}"

    def names(self) -> list[str]:
        """Registered names, in registration order (the command line's choices)."""
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) pairs, resolving lazy entries."""
        for name in self.names():
            yield name, self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def lazy_face(package: str, exports: dict[str, str]
              ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package face whose names (`name -> "module"`) are imported on first use: returns the
    module-level `__getattr__` and `__dir__` (PEP 562), so `import package.sub` stays cheap."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return resolve(f"{module}:{name}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
