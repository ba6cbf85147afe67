"""`ExtractOptions`: every option of an extraction job, declared once.

Each field is the option's one declaration: its type, default, help text and allowed values.
`extract_features(slides, out, **options)` takes the fields as keywords, `extract-features`
builds its command-line options from them (choices read from the registries: slide backends,
writable store formats, tissue presets, precisions), and a value outside what a field allows
is refused when the options are built, before any slide is touched.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from balnmp_cache._options import (
    AnyOf,
    Flag,
    InstanceOf,
    Interval,
    OneOf,
    PathTo,
    Rule,
    check_options,
    option,
)
from balnmp_cache.extract.sharding import Shard, parse_devices, parse_shard

__all__ = ["PRECISIONS", "ExtractOptions"]

# Autocast precisions: name -> torch dtype name (None: no autocast); the runner and
# `--precision` both read this table.
PRECISIONS: dict[str, str | None] = {"bf16": "bfloat16", "fp16": "float16", "fp32": None}


def _slide_backends() -> list[str]:
    from balnmp_cache.slides.registry import backend_choices

    return backend_choices()


def _writable_formats() -> list[str]:
    from balnmp_cache.store.backend import writable_formats

    return writable_formats()


def _tissue_presets() -> list[str]:
    from balnmp_cache.tiling.tissue import PRESETS

    return list(PRESETS)


def _feature_dtypes() -> tuple[str, ...]:
    from balnmp_cache.store.types import FEATURE_DTYPES

    return FEATURE_DTYPES


def _encoder(name: str) -> None:
    from balnmp_cache.encoders.base import check_encoder_name

    check_encoder_name(name)


def _weights(weights: str | Path) -> None:
    from balnmp_cache.encoders.base import check_weights

    check_weights(weights)


def _warn_other_mpp(o: ExtractOptions) -> None:
    """A foundation model used at another µm/px than it was trained at: say so (a warning,
    not an error: other resolutions are a valid experiment)."""
    from balnmp_cache.encoders.base import ENCODERS

    card = ENCODERS.get(o.encoder).card if o.encoder in ENCODERS else None
    if card is None or card.mpp is None or o.mpp is None or o.level is not None:
        return
    if abs(card.mpp - o.mpp) > 1e-6:
        warnings.warn(f"encoder {o.encoder!r} was trained at {card.mpp:g} µm/px; extracting at "
                      f"{o.mpp:g} µm/px (pass --mpp {card.mpp:g} to match)", stacklevel=4)


def _shard(shard: str | Shard) -> None:
    if not isinstance(shard, Shard):
        parse_shard(shard)


@dataclass
class ExtractOptions:
    """How an extraction job reads, tiles, encodes and stores slides (picklable, so worker
    processes get the same object). Field order is `extract_features`'s keyword order."""

    encoder: str = option(
        "resnet50", Rule(_encoder),
        help="Registered encoder name (--list-encoders; docs/extraction.md) or timm:<model>.")
    weights: str | Path | None = option(
        None, Rule(_weights), default_text="imagenet for the CNNs, hf for foundation models",
        help="imagenet | hf (the local Hugging Face cache) | none (seeded random init) | PATH "
             "to a local checkpoint (.safetensors, .bin, .pth).")
    mpp: float | None = option(
        0.5, Interval(float, 0, None, closed="neither"), nullable=True,
        help="Target resolution in µm/px (0.5 ≈ 20x).")
    patch_size: int = option(
        256, Interval(int, 8), help="Patch side in pixels at the target µm/px.")
    format: str = option("h5", OneOf(_writable_formats), help="Feature store format.")
    device: str | None = option(
        None, help="cuda, cuda:1 or cpu [default: cuda if present].")
    batch_size: int = option(256, Interval(int, 1), help="Patches per encoder batch.")
    annotations: str | Path | None = option(
        None, PathTo("dir", what="not a folder of <slide_id>.json files"),
        help="Folder of <slide_id>.json (BALNMP) or .geojson (QuPath): tile inside them.")
    num_workers: int | None = option(
        None, Interval(int, 0), help="Reader threads [default: the slide backend's choice].")
    precision: str | None = option(
        None, OneOf(PRECISIONS),
        help="Autocast precision [default: on cuda the encoder's recommended one "
             "(--list-encoders), else bf16; fp32 on cpu].")
    shard: str | Shard | None = option(
        None, Rule(_shard),
        help="Process shard I of N (0-based), e.g. 0/4 [default: from "
             "SLURM_ARRAY_TASK_ID/COUNT when set, else all].")
    skip_errors: bool = option(
        False, Flag(),
        help="Record failing slides in manifest.csv and go on (exit status 1 at the end).")
    overwrite: bool = option(False, Flag(), help="Re-extract slides that are already finished.")
    min_tissue: float = option(
        0.5, Interval(float, 0, 1), help="Minimum tissue fraction of a patch.")
    level: int | None = option(
        None, Interval(int, 0), help="Read this pyramid level instead of choosing one for --mpp.")
    qc_dir: str | Path | None = option(
        None, PathTo("dir", exists=False), flag="--qc",
        help="Write a QC thumbnail (tissue mask + patch grid) per slide here.")
    allow_unannotated: bool = option(
        False, Flag(),
        help="With --annotations: tile all tissue of slides that have no annotation.")
    mpp_overrides: str | Path | Mapping[str, float] | None = option(
        None, AnyOf(PathTo("file"), InstanceOf((Mapping,), "a CSV file or a {slide_id: µm/px} "
                                               "mapping")),
        help="CSV with slide_id,mpp for slides whose files lack (or misstate) µm/px.")
    backend: str = option("auto", OneOf(_slide_backends), help="Slide reader.")
    tissue: str = option("biopsy", OneOf(_tissue_presets), help="Tissue-detection preset.")
    progress: bool | None = option(
        None, Flag(), negative="--no-progress", help="Progress bar [default: only on a terminal].")
    devices: str | Sequence[str | int] | None = option(
        None, Rule(parse_devices),
        help="One worker per GPU on this node, e.g. 0,1,2,3 (overrides --device).")
    seed: int = option(0, Interval(int), help="Random-init seed for --weights none.")
    flatten: bool = option(
        False, Flag(),
        help="VGG/AlexNet/DenseNet: the flattened map BALNMP's backbone_builder.py cuts "
             "(25,088-d for VGG16; DenseNet's without its final ReLU) instead of global "
             "average pooling.")
    dtype: str = option("float16", OneOf(_feature_dtypes), help="Stored feature dtype.")
    input_size: int | None = option(
        None, Interval(int, 16),
        help="Resize patches to this side for the encoder, with no crop [default: its model "
             "card's resize and crop, e.g. 224; CNNs accept any size].")
    pooling: str | None = option(
        None, OneOf(("cls", "cls+mean")),
        help="Transformers: the class token (cls), or it joined to the mean of the patch "
             "tokens (cls+mean) [default: the encoder's published embedding].")

    def __post_init__(self) -> None:
        check_options(self)
        _warn_other_mpp(self)

    @property
    def weights_name(self) -> str:
        """`weights` as the encoder builder takes it (None: the encoder's default source,
        ImageNet for the CNNs, the Hugging Face cache for the foundation models)."""
        if self.weights is not None:
            return str(self.weights)
        from balnmp_cache.encoders.base import default_weights

        return default_weights(self.encoder)
