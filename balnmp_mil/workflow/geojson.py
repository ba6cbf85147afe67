"""A heatmap as QuPath GeoJSON: one tile per patch with its scores, the tiled tissue outline
and the tumour annotations, in level-0 pixels (QuPath's image coordinates).

The features follow what QuPath 0.4+ writes and reads (`qupath.lib.io.PathObjectTypeAdapters`):
a `FeatureCollection` of `"type": "Feature"` objects, each with a UUID `id`, a `geometry` and
`properties` holding `objectType` (`"tile"` or `"annotation"`), `classification`
(`{"name", "color": [r, g, b]}`), `isLocked` (written only when true) and `measurements` as a
name -> number object (QuPath 0.4+; 0.2/0.3 wrote a list of `{name, value}`). Ids are
UUIDs derived from the slide id and the object, so the same heatmap gives the same file.

The tissue outline is the outline of the union of the patch footprints: the tissue the model
saw (after tissue detection and any annotation filter), traced exactly on the patch grid.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# QuPath's built-in classes and colours (`PathClass.StandardPathClasses`).
TUMOR = {"name": "Tumor", "color": [200, 0, 0]}
IGNORE = {"name": "Ignore*", "color": [180, 180, 180]}
TISSUE = {"name": "Tissue", "color": [20, 160, 60]}
TOP = {"name": "Top attention", "color": [255, 255, 255]}
_NS = uuid.UUID("8a3c5e54-6f0b-4b57-9a43-1b1f0d6c2e11")  # namespace of balnmp heatmap ids

Ring = np.ndarray  # (K, 2) level-0 (x, y), not closed


def _closed(ring: np.ndarray) -> list[list[float]]:
    pts = [[_num(x), _num(y)] for x, y in np.asarray(ring, dtype=np.float64)[:, :2]]
    return [*pts, pts[0]]


def _num(v: float) -> float | int:
    """An integral float as an int (QuPath writes pixel corners as plain numbers)."""
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def _feature(uid: str, geometry: dict, object_type: str, name: str | None = None,
             classification: Mapping | None = None, locked: bool = False,
             measurements: Mapping[str, float] | None = None) -> dict:
    props: dict = {"objectType": object_type}
    if name is not None:
        props["name"] = name
    if classification is not None:
        props["classification"] = dict(classification)
    if locked:
        props["isLocked"] = True
    finite = {k: float(v) for k, v in (measurements or {}).items() if math.isfinite(float(v))}
    if finite:
        props["measurements"] = finite
    return {"type": "Feature", "id": uid, "geometry": geometry, "properties": props}


def tile_features(slide_id: str, coords: np.ndarray, size0: float,
                  measurements: Mapping[str, np.ndarray], top: Sequence[int] = (),
                  top_class: Mapping = TOP) -> list[dict]:
    """One locked `tile` per patch: its level-0 square, its `measurements` (name -> (N,)
    values; NaN ones are left out), the `top` patches classified `top_class`."""
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    ranked = set(int(i) for i in top)
    out = []
    for i, (x, y) in enumerate(coords):
        square = np.array([[x, y], [x + size0, y], [x + size0, y + size0], [x, y + size0]])
        out.append(_feature(
            str(uuid.uuid5(_NS, f"{slide_id}/tile/{i}")),
            {"type": "Polygon", "coordinates": [_closed(square)]}, "tile",
            name=f"patch {i}", classification=top_class if i in ranked else None, locked=True,
            measurements={k: v[i] for k, v in measurements.items()}))
    return out


def region_feature(key: str, polygons: Sequence[Sequence[Ring]], name: str,
                   classification: Mapping, locked: bool = False) -> dict:
    """One `annotation` of `polygons` (each: exterior ring, then holes), a Polygon or, for
    several, a MultiPolygon; `key` (unique in the slide's file) makes its id."""
    parts = [[_closed(r) for r in rings] for rings in polygons]
    geom = ({"type": "Polygon", "coordinates": parts[0]} if len(parts) == 1
            else {"type": "MultiPolygon", "coordinates": parts})
    return _feature(str(uuid.uuid5(_NS, f"annotation/{key}")), geom, "annotation",
                    name=name, classification=classification, locked=locked)


def feature_collection(features: Sequence[dict]) -> dict:
    return {"type": "FeatureCollection", "features": list(features)}


def write_geojson(path: str | Path, collection: Mapping) -> Path:
    """Compact JSON (a slide has tens of thousands of tiles), UTF-8."""
    Path(path).write_text(json.dumps(collection, separators=(",", ":")), encoding="utf-8")
    return Path(path)


# --------------------------------------------------------------------- tissue outline
def _grid_cell(coords: np.ndarray, size0: float) -> float:
    """The largest step that puts every patch corner and side on one grid (>= size0 / 16)."""
    rel = np.rint(coords - coords.min(axis=0)).astype(np.int64)
    exact = np.allclose(coords - coords.min(axis=0), rel) and float(size0).is_integer()
    step = int(np.gcd.reduce(np.r_[rel.ravel(), int(size0)])) if exact else 0
    return float(step) if step >= size0 / 16 else size0 / 16


def _boundary_edges(mask: np.ndarray) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Directed unit edges between filled and empty cells, clockwise around filled ones
    (y down), as start vertex (col, row) -> end vertices."""
    pad = np.pad(mask, 1)
    filled = pad[1:-1, 1:-1]
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    sides = (  # neighbour offset (dr, dc), edge start and end relative to the cell corner
        ((-1, 0), (0, 0), (1, 0)), ((0, 1), (1, 0), (1, 1)),
        ((1, 0), (1, 1), (0, 1)), ((0, -1), (0, 1), (0, 0)),
    )
    h, w = mask.shape
    for (dr, dc), (sx, sy), (ex, ey) in sides:
        open_side = filled & ~pad[1 + dr:h + 1 + dr, 1 + dc:w + 1 + dc]
        for r, c in zip(*np.nonzero(open_side), strict=True):
            edges.setdefault((int(c) + sx, int(r) + sy), []).append((int(c) + ex, int(r) + ey))
    return edges


def _rings(edges: dict[tuple[int, int], list[tuple[int, int]]]) -> list[np.ndarray]:
    """Chain directed edges into closed rings, dropping collinear vertices."""
    rings = []
    while edges:
        start = next(iter(edges))
        ring, at = [start], start
        while True:
            nxt = edges[at].pop()
            if not edges[at]:
                del edges[at]
            if nxt == start:
                break
            ring.append(nxt)
            at = nxt
        pts = np.array(ring, dtype=np.float64)
        prev, after = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        d_in, d_out = pts - prev, after - pts
        turn = d_in[:, 0] * d_out[:, 1] != d_in[:, 1] * d_out[:, 0]
        rings.append(pts[turn])
    return rings


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def tissue_outline(coords: np.ndarray, size0: float) -> list[list[Ring]]:
    """The outline of the union of the level-0 squares at `coords` of side `size0`: polygons
    (exterior ring, then its holes), exact on the patch grid."""
    from matplotlib.path import Path as MplPath

    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if coords.size == 0:
        return []
    cell = _grid_cell(coords, size0)
    origin = coords.min(axis=0)
    start = np.floor((coords - origin) / cell + 1e-9).astype(np.int64)
    span = max(1, int(math.ceil(size0 / cell - 1e-9)))
    shape = start.max(axis=0) + span
    mask = np.zeros((int(shape[1]), int(shape[0])), dtype=bool)
    for c, r in start:
        mask[r:r + span, c:c + span] = True
    rings = [origin + ring * cell for ring in _rings(_boundary_edges(mask))]
    outers = sorted(([r] for r in rings if _signed_area(r) > 0),
                    key=lambda poly: _signed_area(poly[0]))
    for hole in (r for r in rings if _signed_area(r) < 0):
        # the smallest exterior around a vertex of the hole (vertices may touch it)
        owner = next((poly for poly in outers
                      if MplPath(poly[0]).contains_points(hole).any()), None)
        if owner is not None:
            owner.append(hole)
    return outers
