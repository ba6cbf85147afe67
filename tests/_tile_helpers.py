"""Test helpers for tissue/annotations/tiling/QC: slides with known tissue geometry.

`FakeSlide` subclasses `balnmp_cache.slides.base.Slide` over an in-memory image (levels are
block means), so the grid logic is tested without any reader backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from balnmp_cache.slides.base import Slide
from balnmp_cache.slides.tiffprobe import SourceInfo

GLASS = np.array([238, 236, 240], np.float32)
EOSIN = np.array([225, 140, 185], np.float32)
HAEMATOXYLIN = np.array([95, 65, 150], np.float32)
PENS = {
    "green": np.array([40, 160, 80], np.float32),
    "blue": np.array([30, 60, 170], np.float32),
    "black": np.array([25, 25, 35], np.float32),
}


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    view = image[: h * factor, : w * factor].reshape(h, factor, w, factor, -1)
    return view.mean(axis=(1, 3)).round().astype(np.uint8)


class FakeSlide(Slide):
    """In-memory slide: level i is the image block-averaged by 2**i.

    A real `Slide` subclass: bounds checks, white padding, batched reads, thumbnails and the
    lifetime are the base class's, only `_read_level` is its own. `open` serves a saved `.npy`
    image, so it also stands for a newly registered backend.
    """

    backend = "fake"
    auto = False  # never chosen by `open_slide(backend="auto")`

    def __init__(
        self,
        image: np.ndarray,
        mpp: float | None = 0.5,
        levels: int = 3,
        slide_id: str = "fake",
        fixed_coords: np.ndarray | None = None,
        fixed_patch_size: int | None = None,
        path: Path | None = None,
    ) -> None:
        self.image = image
        self._levels = [image] + [block_mean(image, 2**i) for i in range(1, levels)]
        super().__init__(
            path or Path(f"{slide_id}.tif"),
            tuple((lv.shape[1], lv.shape[0]) for lv in self._levels),
            tuple(image.shape[1] / lv.shape[1] for lv in self._levels),
            {},
            mpp,
        )
        self.fixed_coords = fixed_coords
        self.fixed_patch_size = fixed_patch_size

    @classmethod
    def can_open(cls, info: SourceInfo) -> str | None:
        if info.is_dir or info.path.suffix != ".npy":
            return "not a .npy image"
        return None

    @classmethod
    def open(cls, info: SourceInfo, mpp: float | None) -> FakeSlide:
        return cls(np.load(info.path), mpp=mpp, path=info.path)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._levels[level][y : y + h, x : x + w]


def _capsule(h: int, w: int, p0, p1, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of the segment p0-p1 (a biopsy core; a disc when p0 == p1)."""
    (x0, y0), (x1, y1) = p0, p1
    out = np.zeros((h, w), bool)
    c0, c1 = max(int(min(x0, x1) - radius), 0), min(int(max(x0, x1) + radius) + 2, w)
    r0, r1 = max(int(min(y0, y1) - radius), 0), min(int(max(y0, y1) + radius) + 2, h)
    if c1 <= c0 or r1 <= r0:
        return out
    yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    out[r0:r1, c0:c1] = (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2 <= radius * radius
    return out


def _texture(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Blobby field in [0, 1]: nuclei-like dark spots at ~``cell`` px scale."""
    small = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    big = np.asarray(Image.fromarray(small).resize((w + 2 * cell, h + 2 * cell), Image.BICUBIC))
    return np.clip(big[cell : cell + h, cell : cell + w], 0, 1)


@dataclass
class TissueScene:
    image: np.ndarray  # (H, W, 3) uint8
    tissue: np.ndarray  # bool, true tissue
    pen: np.ndarray  # bool, pen ink (on glass)
    mpp: float  # µm/px at which the geometry is biopsy-sized


def make_scene(
    size: int = 1536,
    seed: int = 0,
    *,
    pens: bool = True,
    faint: bool = True,
    black_border: bool = False,
    scale: float = 1.0,
) -> TissueScene:
    """Biopsy-like scene (sized for 1536 / ``size`` µm/px): two cores, one faint core, round
    fragments, optional green/blue/black pen strokes on the glass and a black scanner border.
    ``scale`` shrinks the nuclei texture (for scenes rendered at a finer µm/px)."""
    rng = np.random.default_rng(seed)
    h = w = size
    s = size / 1536.0
    cores = [
        (_capsule(h, w, (250 * s, 200 * s), (1300 * s, 420 * s), 130 * s), 1.0),
        (_capsule(h, w, (200 * s, 700 * s), (1250 * s, 900 * s), 100 * s), 1.0),
    ]
    if faint:
        cores.append((_capsule(h, w, (300 * s, 1150 * s), (900 * s, 1250 * s), 90 * s), 0.25))
    for cx, cy, r in [(1320, 1180, 60), (1180, 1320, 45), (1420, 1000, 50)]:
        cores.append((_capsule(h, w, (cx * s, cy * s), (cx * s, cy * s), r * s), 1.0))

    nuclei = _texture(rng, h, w, max(2, int(6 * s / scale)))[..., None]
    he = EOSIN * (1 - nuclei) + HAEMATOXYLIN * nuclei
    img = np.broadcast_to(GLASS, (h, w, 3)).copy()
    tissue = np.zeros((h, w), bool)
    for mask, strength in cores:
        img[mask] = GLASS * (1 - strength) + he[mask] * strength
        tissue |= mask

    pen = np.zeros((h, w), bool)
    if pens:
        strokes = [
            ("green", (60 * s, 1450 * s), (700 * s, 1480 * s)),
            ("blue", (1450 * s, 80 * s), (1480 * s, 700 * s)),
            ("black", (900 * s, 1440 * s), (1350 * s, 1470 * s)),
        ]
        for colour, p0, p1 in strokes:
            stroke = _capsule(h, w, p0, p1, 25 * s) & ~tissue
            img[stroke] = PENS[colour]
            pen |= stroke
    if black_border:
        border = int(60 * s)
        img[:, :border] = 5
        img[:border, :] = 5
        tissue[:, :border] = False
        tissue[:border, :] = False
    img += rng.standard_normal(img.shape, dtype=np.float32) * 2.0
    image = np.clip(img, 0, 255).round().astype(np.uint8)
    return TissueScene(image, tissue, pen, 1536.0 / size)
