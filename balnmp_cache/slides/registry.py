"""`open_slide`: the one way in, and the registry of slide backends.

Backends (cuCIM, OpenSlide, a plain image, a folder of pre-cut patches) each live in their own
module and register here by name. `backend="auto"` probes the file's structure first (tifffile
tags, cheap) and hands cuCIM only files it is known to decode correctly, because cuCIM kills the
whole process on some TIFFs instead of raising.
"""

from __future__ import annotations

import os
from pathlib import Path

from balnmp_cache._registry import Registry
from balnmp_cache.errors import SlideError
from balnmp_cache.slides.base import Slide
from balnmp_cache.slides.ids import slide_id_from_path
from balnmp_cache.slides.mpp import resolve_override
from balnmp_cache.slides.tiffprobe import SourceInfo, probe_source

__all__ = ["BACKENDS", "available_backends", "backend_choices", "open_slide", "register_backend"]

BACKENDS: Registry[type[Slide]] = Registry("backend", "--backend")
BACKENDS.register("cucim", "balnmp_cache.slides.cucim:CuCIMSlide")
BACKENDS.register("openslide", "balnmp_cache.slides.openslide:OpenSlideSlide")
BACKENDS.register("image", "balnmp_cache.slides.image:ImageSlide")
BACKENDS.register("patches", "balnmp_cache.slides.patches:PatchFolderSlide")


def register_backend(name: str, target: type[Slide] | str, replace: bool = False) -> None:
    """Add a reader: a `Slide` subclass or its lazy `"module:Class"`; `auto` ones are tried in
    registration order."""
    BACKENDS.register(name, target, replace=replace)


def available_backends() -> list[str]:
    """Names of the registered backends (the `--backend` choices besides `auto`)."""
    return BACKENDS.names()


def backend_choices() -> list[str]:
    """What `open_slide`'s `backend` (and every `--backend`) accepts: `auto`, then the names."""
    return ["auto", *BACKENDS.names()]


def open_slide(
    path: str | os.PathLike[str],
    backend: str = "auto",
    mpp: float | None = None,
    mpp_overrides: dict[str, float] | str | os.PathLike[str] | None = None,
) -> Slide:
    """Open a slide file (or a folder of pre-cut patches) with a safe backend.

    `backend="auto"` tries cuCIM (only for files whose TIFF structure it is known to decode
    correctly), then OpenSlide, then a plain image reader. `mpp` (µm/px at level 0) or an entry
    in `mpp_overrides` (dict or CSV with `slide_id,mpp`) wins over the resolution found in the
    file. Raises `SlideError` naming the path and the reason.
    """
    info = probe_source(Path(path), SlideError)
    override = resolve_override(info.path, slide_id_from_path(info.path), mpp, mpp_overrides)
    if backend == "auto":
        return _open_auto(info, override)
    if backend not in BACKENDS:
        raise SlideError(info.path, BACKENDS.unknown(backend) + " (or auto)")
    cls = BACKENDS.get(backend)
    reason = cls.can_open(info)
    if reason is not None:
        raise SlideError(info.path, f"backend {backend!r} cannot serve this file: {reason}")
    return _open_with(cls, info, override, backend)


def _open_auto(info: SourceInfo, mpp: float | None) -> Slide:
    reasons: list[str] = []
    for name, cls in BACKENDS.items():
        if not cls.auto:
            continue
        reason = cls.can_open(info)
        if reason is not None:
            reasons.append(f"{name}: {reason}")
            continue
        try:
            return _open_with(cls, info, mpp, name)
        except SlideError as exc:
            reasons.append(f"{name}: {exc.reason}")
    raise SlideError(info.path, "no backend can read this file (" + "; ".join(reasons) + ")")


def _open_with(cls: type[Slide], info: SourceInfo, mpp: float | None, name: str) -> Slide:
    try:
        return cls.open(info, mpp)
    except SlideError:
        raise
    except Exception as exc:  # a reader library's own error type: wrap it, keep the reason
        reason = f"{name} failed to open it: {type(exc).__name__}: {exc}"
        raise SlideError(info.path, reason) from exc
