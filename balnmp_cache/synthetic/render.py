"""H&E-like rendering of a core-needle biopsy, vectorised (numpy/scipy, no per-pixel loops).

Colour follows a Beer-Lambert stain model: per-pixel haematoxylin and eosin concentrations
times stain vectors give an optical density, `rgb = 255 * 10**-OD`. Nuclei are ellipses
stamped into a haematoxylin map all at once (one (n, k, k) array per batch). Sizes are in
µm and converted with the rendering resolution, so tiny test slides keep realistic nuclei.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from balnmp_cache.synthetic.geometry import tissue_core_mask
from balnmp_cache.synthetic.noise import coarse_shape, smooth_noise, upsample_linear

__all__ = [
    "NUCLEUS_STYLES",
    "NucleusStyle",
    "Stain",
    "random_stain",
    "render_tissue",
    "signal_style",
    "stain_lut",
    "stamp_nuclei",
]

# Quantisation of the two per-pixel maps that index the colour look-up table.
TEXTURE_RANGE = 0.6  # texture index 0..255 <-> relative eosin modulation -0.6..+0.6
HAEM_MAX = 2.0  # nucleus index 0..255 <-> haematoxylin concentration 0..2
DECOY_STRENGTH = 0.35  # weakly abnormal nuclei in "decoy" cells of some N0 slides
COARSE = 4  # texture fields are drawn at 1/COARSE resolution and upsampled


@dataclass(frozen=True)
class NucleusStyle:
    """How the nuclei of one compartment look: density (per 1000 µm²), size and staining."""

    density: float
    semi_major_um: tuple[float, float]
    aspect: tuple[float, float]  # minor / major axis
    haematoxylin: tuple[float, float]  # stain concentration inside the nucleus
    aligned: bool = False  # spindle nuclei follow the core axis


NUCLEUS_STYLES: dict[str, NucleusStyle] = {
    "stroma": NucleusStyle(1.6, (4.0, 6.5), (0.25, 0.45), (0.75, 0.95), aligned=True),
    "tumour": NucleusStyle(5.0, (3.6, 4.8), (0.50, 0.80), (0.75, 0.95)),
    # The planted signal (BALNMP: nucleus density, circumference and circularity): denser,
    # larger, rounder, darker nuclei.
    "signal": NucleusStyle(6.0, (4.4, 5.4), (0.85, 1.00), (0.85, 1.05)),
}


def signal_style(strength: float, base: NucleusStyle | None = None) -> NucleusStyle:
    """Interpolate from ordinary tumour nuclei (0) to full signal nuclei (1).

    `base` is this slide's tumour style; its density is scaled by the signal/tumour
    density ratio, so the contrast is relative to the patient's own tumour.
    """
    ref, sig = NUCLEUS_STYLES["tumour"], NUCLEUS_STYLES["signal"]
    base = base or ref

    def mix(
        a: tuple[float, float], b: tuple[float, float], hi: float = np.inf
    ) -> tuple[float, float]:
        return (
            min(hi, a[0] + strength * (b[0] - a[0])),
            min(hi, a[1] + strength * (b[1] - a[1])),
        )

    return NucleusStyle(
        density=base.density * (1 + strength * (sig.density / ref.density - 1)),
        semi_major_um=mix(base.semi_major_um, sig.semi_major_um),
        aspect=mix(base.aspect, sig.aspect, hi=1.0),
        haematoxylin=mix(base.haematoxylin, sig.haematoxylin),
    )


@dataclass(frozen=True)
class Stain:
    """Stain vectors (optical density per unit concentration) and compartment eosin levels."""

    haematoxylin: tuple[float, float, float] = (0.60, 0.75, 0.28)
    eosin: tuple[float, float, float] = (0.15, 0.86, 0.46)
    stroma_eosin: float = 0.26
    tumour_eosin: float = 0.17
    tumour_haematoxylin: float = 0.10  # faint purple cytoplasm of tumour cells
    background_od: float = 0.026  # ~ (240, 240, 240)
    nucleus_scale: float = 1.0  # haematoxylin uptake of nuclei


def random_stain(rng: np.random.Generator) -> Stain:
    """Per-slide stain variation: perturbed vectors and intensities (a realistic confounder)."""

    def jitter(v: tuple[float, float, float]) -> tuple[float, float, float]:
        a = np.asarray(v) * (1 + rng.normal(0, 0.06, 3))
        a = np.abs(a) / np.linalg.norm(a) * np.linalg.norm(v)
        return (float(a[0]), float(a[1]), float(a[2]))

    base = Stain()
    return replace(
        base,
        haematoxylin=jitter(base.haematoxylin),
        eosin=jitter(base.eosin),
        stroma_eosin=base.stroma_eosin * float(rng.uniform(0.8, 1.2)),
        tumour_eosin=base.tumour_eosin * float(rng.uniform(0.8, 1.2)),
        tumour_haematoxylin=base.tumour_haematoxylin * float(rng.uniform(0.8, 1.2)),
        nucleus_scale=float(rng.uniform(0.85, 1.15)),
    )


def _sample_points(rng: np.random.Generator, mask: np.ndarray, per_px: float) -> np.ndarray:
    """Poisson points (y, x) with intensity `per_px` inside `mask` (rejection sampling)."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return np.empty((0, 2))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    n = rng.poisson(per_px * (y1 - y0) * (x1 - x0))
    pts = np.column_stack([rng.uniform(y0, y1, n), rng.uniform(x0, x1, n)])
    return pts[mask[pts[:, 0].astype(np.intp), pts[:, 1].astype(np.intp)]]


def stamp_nuclei(
    hmap: np.ndarray,
    rng: np.random.Generator,
    mask: np.ndarray,
    style: NucleusStyle,
    mpp: float,
    *,
    axis_angle: np.ndarray | None = None,
    modulation: np.ndarray | None = None,
    chromatin: np.ndarray | None = None,
    intensity: float = 1.0,
    batch: int = 2048,
) -> int:
    """Draw nuclei of `style` inside `mask` into the uint8 nucleus map; return the count.

    `hmap` holds haematoxylin quantised to 0..255 (`HAEM_MAX`). Each nucleus is an
    anti-aliased ellipse; where nuclei overlap the darker wins. `axis_angle` (per column)
    orients spindle nuclei, `modulation` (coarse grid, 0..1) thins them out (tumour nests),
    `chromatin` (a square tile, ~1) textures their interior.
    """
    per_px = style.density / 1000.0 * mpp * mpp
    pts = _sample_points(rng, mask, per_px)
    if modulation is not None and len(pts):
        keep = (
            rng.random(len(pts))
            < modulation[(pts[:, 0] / COARSE).astype(np.intp), (pts[:, 1] / COARSE).astype(np.intp)]
        )
        pts = pts[keep]
    if len(pts) == 0:
        return 0
    nuclei = _Nuclei.draw(rng, pts, style, mpp, intensity, axis_angle)
    for s in range(0, len(pts), batch):
        nuclei.stamp(hmap, slice(s, s + batch), chromatin)
    return len(pts)


@dataclass(frozen=True)
class _Nuclei:
    """Centres (y, x), semi-axes `a` >= `b` (px), haematoxylin `conc` (0..255 scale) and
    orientation `theta` of a set of nuclei."""

    pts: np.ndarray
    a: np.ndarray
    b: np.ndarray
    conc: np.ndarray
    theta: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, pts: np.ndarray, style: NucleusStyle, mpp: float,
             intensity: float, axis_angle: np.ndarray | None) -> _Nuclei:  # fmt: skip
        n = len(pts)
        a = rng.uniform(*style.semi_major_um, n) / mpp
        b = a * rng.uniform(*style.aspect, n)
        conc = rng.uniform(*style.haematoxylin, n) * (intensity * 255.0 / HAEM_MAX)
        if style.aligned and axis_angle is not None:
            theta = axis_angle[pts[:, 1].astype(np.intp)] + rng.normal(0, 0.15, n)
        else:
            theta = rng.uniform(0, np.pi, n)
        return cls(pts, a, b, conc, theta)

    def stamp(self, hmap: np.ndarray, sl: slice, chromatin: np.ndarray | None) -> None:
        """Stamp the nuclei `sl` as anti-aliased ellipses (darker wins) into `hmap`."""
        radius = int(np.ceil(self.a.max())) + 1
        off = np.arange(-radius, radius + 1, dtype=np.float32)
        dy, dx = off[:, None], off[None, :]
        ioff = off.astype(np.intp)
        h, w = hmap.shape
        cy, cx = self.pts[sl, 0], self.pts[sl, 1]
        iy, ix = np.floor(cy).astype(np.intp), np.floor(cx).astype(np.intp)
        fy = (iy - cy + 0.5).astype(np.float32)[:, None, None]
        fx = (ix - cx + 0.5).astype(np.float32)[:, None, None]
        cos = np.cos(self.theta[sl]).astype(np.float32)[:, None, None]
        sin = np.sin(self.theta[sl]).astype(np.float32)[:, None, None]
        aa = self.a[sl].astype(np.float32)[:, None, None]
        bb = self.b[sl].astype(np.float32)[:, None, None]
        yy, xx = dy + fy, dx + fx
        u = (xx * cos + yy * sin) / aa
        v = (yy * cos - xx * sin) / bb
        # ~ signed distance to the rim in px -> a 1-px anti-aliased edge
        val = np.clip((1.0 - np.sqrt(u * u + v * v)) * bb + 0.5, 0.0, 1.0)
        val *= self.conc[sl].astype(np.float32)[:, None, None]
        rows, cols = np.broadcast_arrays(
            iy[:, None, None] + ioff[None, :, None], ix[:, None, None] + ioff[None, None, :]
        )
        ok = (val > 0.5) & (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        rows, cols, val = rows[ok], cols[ok], val[ok]
        if chromatin is not None:
            t = chromatin.shape[0]
            val *= chromatin[rows % t, cols % t]
        np.maximum.at(hmap, (rows, cols), np.clip(val, 0, 255).astype(np.uint8))


def stain_lut(stain: Stain) -> np.ndarray:
    """Colour table (3 regions * 256 texture * 256 nucleus levels, 3) uint8.

    Regions: 0 background (texture index = grain only), 1 stroma, 2 tumour (paler eosin,
    faintly purple cytoplasm). Nuclei displace eosin where they stain.
    """
    shape = (256, 256)
    t = np.broadcast_to(
        ((np.arange(256, dtype=np.float32) - 128) / 128 * TEXTURE_RANGE)[:, None], shape
    )
    hn = np.broadcast_to((np.arange(256, dtype=np.float32) / 255 * HAEM_MAX)[None, :], shape)
    zero = np.zeros(shape, np.float32)
    displaced = 1.0 - 0.6 * np.minimum(hn, 1.0)
    # (eosin, haematoxylin, grey OD) per region
    regions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [
        (zero, zero, 0.012 * t),
        (stain.stroma_eosin * (1 + t) * displaced, hn, zero),
        (stain.tumour_eosin * (1 + 0.5 * t) * displaced, stain.tumour_haematoxylin + hn, zero),
    ]
    hv, ev = np.asarray(stain.haematoxylin, np.float32), np.asarray(stain.eosin, np.float32)
    tables = []
    for eosin, haem, grey in regions:
        od = stain.background_od + grey[..., None] + eosin[..., None] * ev + haem[..., None] * hv
        tables.append(255.0 * np.power(10.0, -np.clip(od, 0, None)))
    return np.rint(np.clip(np.stack(tables), 0, 255)).astype(np.uint8).reshape(-1, 3)


def render_tissue(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    tissue_mask: np.ndarray | None = None,
    tumour_mask: np.ndarray | None = None,
    signal_mask: np.ndarray | None = None,
    decoy_mask: np.ndarray | None = None,
    nuclei_density: float = 1.0,
    signal_strength: float = 1.0,
    mpp: float = 0.5,
    stain: Stain | None = None,
    centre_y: np.ndarray | None = None,
) -> np.ndarray:
    """Render an H&E-like RGB image (height, width, 3) uint8.

    White background with slight grain; pink, fibrous stroma with sparse spindle nuclei
    inside `tissue_mask` (a biopsy core from `tissue_core_mask` when None); dense, atypical
    tumour nuclei in tumour nests in `tumour_mask`; larger, rounder, denser, darker nuclei in
    `signal_mask` (`signal_strength` scales the difference) and weakly abnormal ones in
    `decoy_mask`. `nuclei_density` scales the tumour nucleus density. `centre_y` (the core's
    centre line per column) orients the stromal nuclei.
    """
    shape = (height, width)
    if tissue_mask is None:
        tissue_mask = tissue_core_mask(rng, height, width)
    stain = stain or Stain()
    region = tissue_mask.astype(np.uint8)
    empty = np.zeros(shape, dtype=bool)
    tumour = empty if tumour_mask is None else tumour_mask & tissue_mask
    region[tumour] = 2
    signal = empty if signal_mask is None else signal_mask & tumour
    decoy = empty if decoy_mask is None else decoy_mask & tumour & ~signal
    tex_idx = _texture(rng, shape, mpp)
    masks = {"stroma": tissue_mask & ~tumour, "tumour": tumour & ~signal & ~decoy,
             "signal": signal, "decoy": decoy}  # fmt: skip
    nuclei = _nuclei(rng, shape, masks, mpp, stain, nuclei_density, signal_strength, centre_y)
    index = region.astype(np.int32) << 16
    index |= tex_idx.astype(np.int32) << 8
    index |= nuclei
    return stain_lut(stain)[index]


def _texture(rng: np.random.Generator, shape: tuple[int, int], mpp: float) -> np.ndarray:
    """Texture index (uint8): eosin streaks along the core plus patchy intensity, drawn
    coarse and upsampled, plus a tiled grain."""
    height, width = shape
    um = 1.0 / mpp  # px per µm
    coarse = coarse_shape(shape, COARSE)
    texture = 0.22 * smooth_noise(rng, coarse, 6 * um / COARSE, anisotropy=4.0)
    texture += 0.10 * smooth_noise(rng, coarse, 40 * um / COARSE)
    tex = upsample_linear(texture * (128 / TEXTURE_RANGE) + 128, COARSE, shape)
    grain = rng.normal(0.0, 6.0, (256, 256)).astype(np.float32)
    tex += np.tile(grain, (-(-height // 256), -(-width // 256)))[:height, :width]
    return np.clip(tex, 0, 255).astype(np.uint8)


def _nuclei(rng: np.random.Generator, shape: tuple[int, int], masks: dict[str, np.ndarray],
            mpp: float, stain: Stain, nuclei_density: float, signal_strength: float,
            centre_y: np.ndarray | None) -> np.ndarray:  # fmt: skip
    """The uint8 haematoxylin map of every compartment's nuclei (`masks`: stroma, tumour,
    signal, decoy)."""
    um = 1.0 / mpp
    nuclei = np.zeros(shape, dtype=np.uint8)
    chromatin = 1.0 + 0.15 * smooth_noise(rng, (128, 128), 1.5 * um)
    angle = None if centre_y is None else np.arctan(np.gradient(np.asarray(centre_y, float)))
    nests = np.clip(0.55 + 0.35 * smooth_noise(rng, coarse_shape(shape, COARSE),
                                               30 * um / COARSE), 0.0, 1.0)  # fmt: skip
    base = NUCLEUS_STYLES["tumour"]
    tumour_style = replace(base, density=base.density * nuclei_density)
    # nests thin the plain tumour out; compensate so its mean density is tumour_style's
    nested = replace(tumour_style, density=tumour_style.density / max(float(nests.mean()), 0.1))
    stamp = partial(stamp_nuclei, nuclei, rng, chromatin=chromatin,
                    intensity=stain.nucleus_scale)  # fmt: skip
    stamp(masks["stroma"], NUCLEUS_STYLES["stroma"], mpp, axis_angle=angle)
    stamp(masks["tumour"], nested, mpp, modulation=nests)
    stamp(masks["signal"], signal_style(signal_strength, tumour_style), mpp)
    stamp(masks["decoy"], signal_style(DECOY_STRENGTH, tumour_style), mpp)
    return nuclei
