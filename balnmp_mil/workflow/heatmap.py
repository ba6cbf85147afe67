"""`balnmp-mil heatmap`: a saved run's attention (or instance scores) on one slide, over its
thumbnail (PNG), and as QuPath GeoJSON tiles.

This is the only code of balnmp_mil that reads a slide. `balnmp_cache.slides.open_slide` (and,
for the GeoJSON, the tumour annotation reader `balnmp_cache.tiling.annotations`) is imported
lazily inside `heatmap_run`, so `import balnmp_mil` (and every other command) never loads slide
readers (cuCIM, OpenSlide). SLIDE may be any file `open_slide` reads, including a plain
JPEG/PNG thumbnail of the slide at level-0 size or smaller (pass `mpp` then if known).

What is drawn: the attention of models that weight patches (abmil, clam_sb, dsmil, transmil;
one branch per class: the shown class's); for models without attention, or with one that is
the same for every patch (`mean`, `max`), the **instance score**: the probability of the
shown class (the positive class of a binary task, else the bag's predicted class) when the
patch alone is the bag. Every model has instance scores, so the GeoJSON always carries them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from balnmp_cache.slides.ids import slide_id_from_path as slide_id_of
from balnmp_cache.store._atomic import check_output
from balnmp_mil.errors import InputError
from balnmp_mil.workflow import geojson, rundir
from balnmp_mil.workflow.apply import check_run_store, clinical_matrix
from balnmp_mil.workflow.diagnose import check_store_path
from balnmp_mil.workflow.heatmap_options import HeatmapOptions
from balnmp_mil.workflow.heatmap_space import slide_coords

if TYPE_CHECKING:
    from balnmp_mil.models import MILModel

GALLERY_PX = 256  # target side of a gallery patch, in pixels
INSTANCE_CHUNK = 4096  # singleton bags per forward when scoring instances


@dataclass
class HeatmapResult:
    """The PNG (and GeoJSON) written, the slide, how many patches, what was mapped
    ("attention" or "instance score") and the run's class probabilities."""

    path: Path
    slide_id: str
    n_patches: int
    probabilities: dict[str, float]
    mapped: str = "attention"
    geojson: Path | None = None

    def summary(self) -> str:
        probs = ", ".join(f"p({k})={v:.3f}" for k, v in self.probabilities.items())
        extra = f" + {self.geojson}" if self.geojson else ""
        return (f"{self.slide_id}: {self.n_patches} patches, {probs}, {self.mapped} -> "
                f"{self.path}{extra}")


@dataclass
class BagScores:
    """One bag through a model: class probabilities (C,), the class shown, per-patch
    attention (N,) (None when the model has none or weights every patch alike) and
    instance scores (N,)."""

    probabilities: np.ndarray
    shown: int
    instance: np.ndarray
    attention: np.ndarray | None = None

    @property
    def mapped(self) -> str:
        return "instance score" if self.attention is None else "attention"

    @property
    def values(self) -> np.ndarray:
        """What the map shows: the attention, else the instance scores."""
        return self.instance if self.attention is None else self.attention

    def measurements(self) -> dict[str, np.ndarray]:
        """Per-patch QuPath measurements: attention and its rank (1 = highest), when the
        model has attention, and the instance score."""
        out: dict[str, np.ndarray] = {}
        if self.attention is not None:
            order = np.argsort(-self.attention, kind="mergesort")
            rank = np.empty(order.size, dtype=np.float64)
            rank[order] = np.arange(1, order.size + 1)
            out.update({"attention": self.attention, "attention rank": rank})
        out["instance score"] = self.instance
        return out


def shown_class(probs: np.ndarray) -> int:
    """The class a map is about: the positive class of two, else the predicted one."""
    return 1 if probs.size == 2 else int(probs.argmax())


def instance_scores(model: MILModel, features: np.ndarray, clinical: np.ndarray | None,
                    shown: int) -> np.ndarray:
    """p(class `shown`) of every patch as a bag of its own (packed forward, in chunks)."""
    import torch

    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    out = np.empty(x.shape[0], dtype=np.float64)
    with torch.no_grad():
        for a in range(0, x.shape[0], INSTANCE_CHUNK):
            part = x[a:a + INSTANCE_CHUNK]
            offsets = torch.arange(part.shape[0] + 1)
            clin = None if clinical is None else torch.from_numpy(
                np.repeat(np.asarray(clinical, np.float32).reshape(1, -1), part.shape[0], 0))
            logits = model.eval()(part, offsets, clinical=clin).logits.float()
            out[a:a + part.shape[0]] = torch.softmax(logits, dim=-1)[:, shown].numpy()
    return out


def bag_scores(model: MILModel, features: np.ndarray, clinical: np.ndarray | None
               ) -> BagScores:
    """Probabilities, attention (see `BagScores`) and instance scores of one bag."""
    import torch

    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    clin = None if clinical is None else torch.from_numpy(np.asarray(clinical, np.float32))
    with torch.no_grad():
        out = model.eval().forward_bag(x, clinical=clin)
    probs = torch.softmax(out.logits.float(), dim=-1).reshape(-1).numpy()
    shown = shown_class(probs)
    att = None
    if out.attention is not None:
        att = out.attention.float().cpu().numpy()
        if att.ndim == 2:  # one attention branch per class: the shown class's
            att = att[:, shown] if att.shape[1] == probs.size else att.mean(axis=1)
        att = att.reshape(-1).astype(np.float64)
        if att.size > 1 and np.ptp(att) <= 1e-12 * max(float(np.abs(att).max()), 1e-30):
            att = None  # uniform (mean pooling): a map of it shows nothing
    return BagScores(probs, shown, instance_scores(model, features, clinical, shown), att)


def patch_footprint(attrs: dict, coords: np.ndarray, where: str,
                    patch_size_level0: float | None = None) -> float:
    """The level-0 side of the bag's patches: `patch_size_level0` if given, else the store's
    (a CLAM cache records it only in CLAM's `patches/`). Refuses, never guesses, when the
    footprint or the coordinates are unknown."""
    if (coords < 0).any():
        raise InputError(
            f"{where} has no patch coordinates (a CLAM pt_files cache stores none), so there is "
            "nothing to place on the slide; point --features at a CLAM folder that also holds "
            "h5_files/ or CLAM's patches/ (create_patches_fp.py output)")
    size0 = attrs.get("patch_size_level0") if patch_size_level0 is None else patch_size_level0
    if size0 is None:
        raise InputError(
            f"{where} does not record the size of its patches in level-0 pixels "
            "(`patch_size_level0`; CLAM's h5_files and pt_files carry none); pass "
            "--patch-size-level0 PX, or put CLAM's patches/ folder (create_patches_fp.py "
            "output) beside h5_files/ in --features")
    if not float(size0) > 0:
        raise InputError(f"--patch-size-level0 must be a positive number of pixels, got {size0}")
    return float(size0)


@dataclass
class _Bag:
    """One slide's bag as the heatmap needs it."""

    slide_id: str
    store: Path
    features: np.ndarray
    coords: np.ndarray
    size0: float
    attrs: dict[str, Any] = field(default_factory=dict)
    regions: Path | None = None  # BCNB region file the coordinates were moved with


def _load_bag(run: rundir.Run, slide: Path, features: str | Path | None,
              patch_size_level0: float | None, allow_store_mismatch: bool,
              annotations: str | Path | None = None) -> _Bag:
    from balnmp_cache.store import load_bags
    from balnmp_mil.data.provenance import store_record

    if not slide.exists():
        raise InputError(f"slide {slide} does not exist")
    sid = slide_id_of(slide)
    store = features or run.config.get("features")
    if store is None or not Path(store).exists():
        raise InputError(f"feature store {store} does not exist; pass --features")
    check_store_path(store)
    packed = load_bags(store, slide_ids=[sid])
    check_run_store(run, store_record(packed.attrs, np.asarray(packed.features).shape[1]),
                    store, allow_store_mismatch)
    coords = np.asarray(packed.coords).reshape(-1, 2)
    if coords.shape[0] == 0:
        raise InputError(f"slide {sid} has no patches in {store}; nothing to draw")
    attrs = dict(packed.attrs[0]) if packed.attrs else {}
    size0 = patch_footprint(attrs, coords, f"slide {sid} in {store}", patch_size_level0)
    coords, regions = slide_coords(sid, slide, coords, attrs, packed.bag(0).patch_files,
                                   annotations)
    return _Bag(sid, Path(store), np.asarray(packed.features), coords, size0, attrs, regions)


def heatmap_run(run_path: str | Path, slide: str | Path, out: str | Path,
                features: str | Path | None = None, patient: str | None = None,
                clinical: str | Path | None = None, top_k: int = 8,
                thumbnail_size: int = 2048, backend: str = "auto",
                mpp: float | None = None, patch_size_level0: float | None = None,
                allow_store_mismatch: bool = False, geojson_out: str | Path | None = None,
                annotations: str | Path | None = None) -> HeatmapResult:
    """Draw the attention (or instance scores) of run `run_path` on SLIDE's bag (from
    FEATURES or the run's store, checked against the store the run was trained on unless
    `allow_store_mismatch`); `patch_size_level0` supplies the patch side when the store does
    not record it. `geojson_out`: also write QuPath GeoJSON there, with the tumour
    annotations from `annotations` (a file, or a folder of `<slide id>.json|.geojson`;
    default: the folder the store was extracted with, when it still exists). The options are
    checked as `HeatmapOptions` (`--top-k -1` is refused before the run is loaded)."""
    HeatmapOptions(slide=slide, features=features, patient=patient, clinical=clinical,
                   top_k=top_k, thumbnail_size=thumbnail_size, backend=backend, mpp=mpp,
                   patch_size_level0=patch_size_level0, geojson_out=geojson_out,
                   annotations=annotations)
    run = rundir.load_run(run_path, device="cpu")
    inputs = [("RUN", run_path), ("SLIDE", slide), ("--features", features),
              ("--clinical", clinical), ("--annotations", annotations)]
    check_output(out, inputs, InputError)
    if geojson_out is not None:
        check_output(geojson_out, inputs, InputError)
    if run.model is None:
        raise InputError(f"run {run.path} is a clinical-only model; it has no patches to map")
    bag = _load_bag(run, Path(slide), features, patch_size_level0, allow_store_mismatch,
                    annotations)
    clin = None
    if run.clinical_encoder is not None:
        table = clinical or run.config.get("clinical")
        if table is None:
            raise InputError(f"run {run.path} uses clinical data; pass --clinical TABLE")
        clin = clinical_matrix(run.clinical_encoder, table, [patient or bag.slide_id])
    scores = bag_scores(run.model, bag.features, clin)
    names = run.class_names or [str(c) for c in range(scores.probabilities.size)]
    _draw(run, Path(slide), bag, scores, names, Path(out), top_k, thumbnail_size, backend, mpp)
    written = None
    if geojson_out is not None:
        polygons = _tumour_polygons(bag, annotations)
        written = _write_geojson(Path(geojson_out), bag, scores, polygons, top_k)
    return HeatmapResult(Path(out), bag.slide_id, int(bag.coords.shape[0]),
                         {n: float(v) for n, v in zip(names, scores.probabilities)},
                         scores.mapped, written)


def _draw(run: rundir.Run, slide: Path, bag: _Bag, scores: BagScores, names: list[str],
          out: Path, top_k: int, thumbnail_size: int, backend: str, mpp: float | None) -> None:
    from balnmp_cache.slides.registry import (
        open_slide,  # lazy: the one slide reader use in balnmp_mil
    )
    from balnmp_mil.evaluation.plots import plot_attention_heatmap

    values = scores.values
    top = np.argsort(-values, kind="mergesort")[: int(min(top_k, values.size))]
    with open_slide(slide, backend=backend, mpp=mpp) as reader:
        thumb = reader.thumbnail(thumbnail_size)
        downsample = reader.dimensions[0] / thumb.shape[1]
        level = reader.get_best_level_for_downsample(max(bag.size0 / GALLERY_PX, 1.0))
        side = max(1, int(round(bag.size0 / reader.level_downsamples[level])))
        patches = [reader.read_region((int(bag.coords[i, 0]), int(bag.coords[i, 1])), level,
                                      (side, side)) for i in top]
        slide_mpp = reader.mpp
    label = names[scores.shown]
    p = scores.probabilities[scores.shown]
    title = (f"{bag.slide_id} · {run.model_config.get('name')} {scores.mapped} · "
             f"p({label}) = {p:.2f}")
    value_label = (f"{scores.mapped} (relative)" if scores.attention is not None
                   else f"instance score p({label}) (relative)")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_attention_heatmap(thumb, bag.coords, values, bag.size0,
                           downsample, out, top_k=top_k, patches=patches, mpp=slide_mpp,
                           title=title, value_label=value_label)


def _tumour_polygons(bag: _Bag, annotations: str | Path | None) -> Any:
    """The slide's tumour `Annotations` (lazy `balnmp_cache.tiling` import), or None."""
    from balnmp_cache.tiling.annotations import find_annotation, load_annotations

    source = annotations if annotations is not None else (bag.regions
                                                           or bag.attrs.get("annotations"))
    if not source:
        return None
    path = Path(source)
    if path.is_dir():
        found = find_annotation(path, bag.slide_id)
        if found is None:
            if annotations is not None:
                raise InputError(f"--annotations {path} has no {bag.slide_id}.json or "
                                 f"{bag.slide_id}.geojson")
            return None
        path = found
    elif not path.is_file():
        if annotations is not None:
            raise InputError(f"--annotations {path} does not exist")
        warnings.warn(f"slide {bag.slide_id}: the annotations it was extracted with ({path}) "
                      "are gone; the GeoJSON has no tumour regions (pass --annotations)",
                      stacklevel=3)
        return None
    return load_annotations(path)


def _write_geojson(out: Path, bag: _Bag, scores: BagScores, regions: Any, top_k: int) -> Path:
    values = scores.values
    top = np.argsort(-values, kind="mergesort")[: int(min(top_k, values.size))]
    feats = [geojson.region_feature(f"{bag.slide_id}/tissue",
                                    geojson.tissue_outline(bag.coords, bag.size0),
                                    "tissue (tiled patches)", geojson.TISSUE, locked=True)]
    if regions is not None:
        for polys, cls in ((regions.positive, geojson.TUMOR), (regions.negative, geojson.IGNORE)):
            feats += [geojson.region_feature(f"{bag.slide_id}/{cls['name']}/{i}", [p.rings],
                                             str(p.name or cls["name"]), cls)
                      for i, p in enumerate(polys)]
    top_class = {**geojson.TOP, "name": f"Top {scores.mapped}"}
    feats += geojson.tile_features(bag.slide_id, bag.coords, bag.size0, scores.measurements(),
                                   top=top.tolist(), top_class=top_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    return geojson.write_geojson(out, geojson.feature_collection(feats))
