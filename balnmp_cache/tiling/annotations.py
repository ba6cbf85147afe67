"""Tumour annotations: BALNMP JSON and QuPath GeoJSON polygons in level-0 pixels.

The BALNMP paper extracted patches only inside pathologist-drawn cancer regions; `contains`
and `rasterize` answer "is this inside the tumour?" for patch centres and for masks.

Every polygon (exterior + holes) is filled with the even-odd rule, the same rule in
`contains` and `rasterize`. That also repairs self-intersecting polygons: both lobes of a
figure-eight are kept; a region wound twice over (the centre of a pentagram) is left out. A
warning names the polygon, or `on_invalid="error"` rejects the file instead.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from balnmp_cache.errors import AnnotationError, OptionError
from balnmp_cache.tiling.polygons import even_odd_contains, even_odd_raster, ring_self_intersects

__all__ = [
    "AnnotationError",
    "AnnotationWarning",
    "Annotations",
    "Polygon",
    "find_annotation",
    "load_annotations",
]

ANNOTATION_SUFFIXES = (".json", ".geojson")


class AnnotationWarning(UserWarning):
    """An annotation was repaired or skipped (self-intersection, degenerate polygon)."""


@dataclass
class Polygon:
    """One region: exterior ring and holes, (K, 2) float64 (x, y) level-0 px, not closed."""

    exterior: np.ndarray
    holes: list[np.ndarray] = field(default_factory=list)
    name: str = ""

    @property
    def rings(self) -> list[np.ndarray]:
        return [self.exterior, *self.holes]

    def bounds(self) -> tuple[float, float, float, float]:
        x, y = self.exterior[:, 0], self.exterior[:, 1]
        return float(x.min()), float(y.min()), float(x.max()), float(y.max())


@dataclass
class Annotations:
    """Tumour regions of one slide: `positive` minus `negative` (level-0 px)."""

    positive: list[Polygon] = field(default_factory=list)
    negative: list[Polygon] = field(default_factory=list)
    source: Path | None = None
    sha256: str | None = None  # of the bytes parsed from `source` (what a store records)

    @property
    def is_empty(self) -> bool:
        """No positive region: nothing would be kept."""
        return not self.positive

    def bounds(self) -> tuple[float, float, float, float] | None:
        """(xmin, ymin, xmax, ymax) of the positive regions, None when empty."""
        if self.is_empty:
            return None
        b = np.array([p.bounds() for p in self.positive])
        return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(
            b[:, 3].max()
        )

    def contains(self, points: Any) -> np.ndarray:
        """Bool (N,): which level-0 (x, y) points lie inside a positive and no negative region."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        inside = np.zeros(len(pts), dtype=bool)
        for poly in self.positive:
            inside |= even_odd_contains(poly.rings, pts)
        for poly in self.negative:
            if inside.any():
                inside &= ~even_odd_contains(poly.rings, pts)
        return inside

    def rasterize(self, shape: tuple[int, int], downsample: float) -> np.ndarray:
        """Bool mask (h, w): pixel (r, c) covers level-0 [c*ds, (c+1)*ds) x [r*ds, (r+1)*ds)
        and is inside when its centre is (the `contains` rule)."""
        h, w = int(shape[0]), int(shape[1])
        mask = np.zeros((h, w), dtype=bool)
        for poly in self.positive:
            mask |= even_odd_raster(poly.rings, (h, w), float(downsample))
        for poly in self.negative:
            mask &= ~even_odd_raster(poly.rings, (h, w), float(downsample))
        return mask

    def describe(self) -> str:
        """What gets recorded in stores/QC: the source file, or a count for in-memory ones."""
        if self.source is not None:
            return str(self.source)
        return f"<{len(self.positive)} positive, {len(self.negative)} negative polygons>"


# --------------------------------------------------------------------------- loading


def find_annotation(annotations_dir: str | Path, slide_id: str) -> Path | None:
    """`<dir>/<slide_id>.json` or `.geojson` if present, else None."""
    root = Path(annotations_dir)
    for suffix in ANNOTATION_SUFFIXES:
        candidate = root / f"{slide_id}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_annotations(path: str | Path, *, on_invalid: str = "repair") -> Annotations:
    """Read BALNMP JSON (`{"positive": [{"name", "vertices"}], "negative": [...]}`) or
    QuPath GeoJSON (Polygon/MultiPolygon with holes, Feature, FeatureCollection, or a list of
    Features). A blank file gives empty Annotations. `on_invalid`: "repair" (warn, fill
    self-intersecting polygons even-odd, drop degenerate ones) or "error"."""
    if on_invalid not in ("repair", "error"):
        raise OptionError(f"on_invalid must be 'repair' or 'error', not {on_invalid!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"cannot read annotation file {path}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    text = data.decode("utf-8-sig")
    if not text.strip():
        return Annotations(source=path, sha256=digest)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"annotation file {path} is not valid JSON ({exc}); expected BALNMP JSON or "
            "QuPath GeoJSON"
        ) from exc
    for sniff, parse in _FORMATS.values():
        if sniff(doc):
            raw_pos, raw_neg = parse(doc, path)
            break
    else:
        raise AnnotationError(
            f"annotation file {path} is neither BALNMP JSON (keys 'positive'/'negative') nor "
            "GeoJSON (a Feature, FeatureCollection, geometry or list of Features)"
        )
    checker = _Checker(path, on_invalid)
    return Annotations(positive=checker.polygons(raw_pos), negative=checker.polygons(raw_neg),
                       source=path, sha256=digest)  # fmt: skip


# A raw polygon: (name, [ring coordinates as nested lists]).
_Raw = tuple[str, list[Any]]


def _is_balnmp(doc: Any) -> bool:
    return isinstance(doc, dict) and ("positive" in doc or "negative" in doc)


def _parse_balnmp(doc: dict, path: Path) -> tuple[list[_Raw], list[_Raw]]:
    out: dict[str, list[_Raw]] = {}
    for key in ("positive", "negative"):
        items = doc.get(key) or []
        if not isinstance(items, list):
            raise AnnotationError(f"{path}: '{key}' must be a list of {{name, vertices}} objects")
        raws = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "vertices" not in item:
                raise AnnotationError(
                    f"{path}: {key}[{i}] has no 'vertices' (expected {{'name': ..., "
                    "'vertices': [[x, y], ...]}} in level-0 pixels)"
                )
            raws.append((str(item.get("name") or f"{key}[{i}]"), [item["vertices"]]))
        out[key] = raws
    return out["positive"], out["negative"]


_GEOJSON_TYPES = {
    "FeatureCollection", "Feature", "Polygon", "MultiPolygon", "GeometryCollection",
}
# QuPath classes whose regions are cut out of the tumour rather than kept.
NEGATIVE_CLASSES = ("ignore", "exclude", "negative", "background", "artifact", "artefact")
POSITIVE_CLASSES = ("tumo", "cancer", "carcinoma", "positive", "invasive", "metasta", "malignan")


# QuPath < 0.3 marks object kinds in the feature "id" instead of properties.objectType.
_QUPATH_OLD_NON_REGIONS = {"PathDetectionObject", "PathCellObject", "PathTileObject"}


def _is_geojson(doc: Any) -> bool:
    if isinstance(doc, list):
        return all(isinstance(f, dict) and f.get("type") in _GEOJSON_TYPES for f in doc)
    return isinstance(doc, dict) and doc.get("type") in _GEOJSON_TYPES


def _class_name(props: dict) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    return str(cls).strip().lower().rstrip("*") if cls else None


def _geometry_polygons(geom: Any, name: str, path: Path) -> list[_Raw]:
    if not isinstance(geom, dict):
        return []
    kind = geom.get("type")
    if kind == "Polygon":
        return [(name, geom.get("coordinates") or [])]
    if kind == "MultiPolygon":
        parts = geom.get("coordinates") or []
        return [(f"{name}[{i}]" if len(parts) > 1 else name, p) for i, p in enumerate(parts)]
    if kind == "GeometryCollection":
        return [r for g in geom.get("geometries") or [] for r in _geometry_polygons(g, name, path)]
    warnings.warn(
        f"{path}: ignoring {kind} geometry '{name}' (only Polygon/MultiPolygon are regions)",
        AnnotationWarning,
        stacklevel=4,
    )
    return []


def _parse_geojson(doc: Any, path: Path) -> tuple[list[_Raw], list[_Raw]]:
    if isinstance(doc, list):
        features = doc
    elif doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif doc.get("type") == "Feature":
        features = [doc]
    else:
        features = [{"type": "Feature", "geometry": doc, "properties": {}}]
    tagged: list[tuple[str | None, list[_Raw]]] = []
    for i, feat in enumerate(features):
        props = feat.get("properties") or {}
        kind = str(props.get("objectType", "annotation")).lower()
        if kind not in ("annotation", "roi") or feat.get("id") in _QUPATH_OLD_NON_REGIONS:
            continue  # QuPath detections/cells/tiles are not regions
        cls = _class_name(props)
        name = str(props.get("name") or cls or f"feature[{i}]")
        tagged.append((cls, _geometry_polygons(feat.get("geometry"), name, path)))
    is_neg = [c is not None and c.startswith(NEGATIVE_CLASSES) for c, _ in tagged]
    is_pos = [c is not None and any(k in c for k in POSITIVE_CLASSES) for c, _ in tagged]
    any_pos = any(is_pos)
    positive: list[_Raw] = []
    negative: list[_Raw] = []
    for (cls, raws), neg, pos in zip(tagged, is_neg, is_pos, strict=True):
        if neg:
            negative += raws
        elif pos or cls is None or not any_pos:
            positive += raws
    return positive, negative


_FORMATS = {"balnmp": (_is_balnmp, _parse_balnmp), "geojson": (_is_geojson, _parse_geojson)}


@dataclass
class _Checker:
    """Turns raw rings into validated Polygons; repairs or rejects per `on_invalid`."""

    path: Path
    on_invalid: str

    def polygons(self, raws: list[_Raw]) -> list[Polygon]:
        out = []
        for name, rings in raws:
            arrays = []
            for ring in rings:  # a loop, not a comprehension: keeps warning stacklevels exact
                arrays.append(self._ring(ring, name))
            if not arrays or arrays[0] is None:
                continue
            out.append(Polygon(arrays[0], [a for a in arrays[1:] if a is not None], name))
        return out

    def _problem(self, msg: str) -> None:
        if self.on_invalid == "error":
            raise AnnotationError(f"{self.path}: {msg}; fix the polygon in the annotation tool")
        warnings.warn(f"{self.path}: {msg}", AnnotationWarning, stacklevel=5)

    def _ring(self, coords: Any, name: str) -> np.ndarray | None:
        try:
            ring = np.asarray(coords, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise AnnotationError(
                f"{self.path}: polygon '{name}' has malformed vertices ({exc}); expected "
                "[[x, y], ...]"
            ) from exc
        if ring.ndim != 2 or ring.shape[1] < 2:
            raise AnnotationError(
                f"{self.path}: polygon '{name}' vertices have shape {ring.shape}; expected "
                "[[x, y], ...] in level-0 pixels"
            )
        ring = ring[:, :2]
        if not np.isfinite(ring).all():
            raise AnnotationError(f"{self.path}: polygon '{name}' has NaN/infinite vertices")
        if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
            ring = ring[:-1]  # GeoJSON rings repeat the first vertex
        keep = np.r_[True, np.any(np.diff(ring, axis=0) != 0, axis=1)] if len(ring) else []
        ring = ring[keep]
        # Collinear vertices enclose nothing (a figure-eight may have zero signed area).
        if len(ring) < 3 or np.linalg.matrix_rank(ring - ring.mean(axis=0)) < 2:
            self._problem(f"polygon '{name}' has no area ({len(ring)} distinct vertices); "
                          "dropped")
            return None
        if ring_self_intersects(ring):
            self._problem(
                f"polygon '{name}' is self-intersecting; filled with the even-odd rule "
                "(crossing lobes kept, doubly wound parts left out)"
            )
        return ring
