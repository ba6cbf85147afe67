"""Figures for a run: ROC curves with bootstrap bands, attention heatmaps, training curves.

Uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed, safe in
threads). Every function writes a PNG and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from balnmp_mil.errors import EvaluationError
from balnmp_mil.evaluation.bootstrap import resample_counts
from balnmp_mil.evaluation.metrics import evaluate

FPR_LABEL = "1 - Specificity (false positive rate)"
TPR_LABEL = "Sensitivity (true positive rate)"
ATTENTION_LABEL = "attention (relative)"
_NICE_UM = (10, 20, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000)


def _save(fig: Figure, out: str | Path, dpi: int = 150) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=dpi)
    return out


def _binary_scores(label: str, y, s) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y).ravel()
    s = np.asarray(s, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 2:
        s = s[:, 1]
    if s.ndim != 1 or s.size != y.size:
        raise EvaluationError(f"ROC curve {label!r}: need binary labels (n,) and positive-class "
                              f"scores (n,) or (n, 2); got {y.shape} and {s.shape} (for several "
                              "classes pass one one-vs-rest curve per class)")
    return y.astype(np.int64), s


def roc_points(y: np.ndarray, s: np.ndarray, weights: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (fpr, tpr) from (0, 0) to (1, 1), one point per distinct score.

    weights (B, n) give B weighted curves at once (bootstrap counts); then arrays are (B, T).
    """
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    last = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    w = np.ones((1, s.size)) if weights is None else np.asarray(weights, dtype=np.float64)
    pos = (y[order] == 1)
    tp = np.cumsum(w[:, order] * pos, axis=1)[:, last]
    fp = np.cumsum(w[:, order] * ~pos, axis=1)[:, last]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.c_[np.zeros(len(w)), tp / tp[:, -1:]]
        fpr = np.c_[np.zeros(len(w)), fp / fp[:, -1:]]
    return (fpr[0], tpr[0]) if weights is None else (fpr, tpr)


def roc_band(y: np.ndarray, s: np.ndarray, n_bootstrap: int = 500, seed: int = 0,
             grid: np.ndarray | None = None, level: float = 0.95
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise bootstrap band of the TPR on an FPR grid (stratified, seeded)."""
    grid = np.linspace(0, 1, 101) if grid is None else grid
    counts = resample_counts(y, n_bootstrap, np.random.default_rng(seed))
    fpr, tpr = roc_points(y, s, counts)
    # step curve: the TPR reached at each FPR (right-continuous)
    curves = np.stack([np.interp(grid, f, t) for f, t in zip(fpr, tpr)])
    lo, hi = np.percentile(curves, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return grid, lo, hi


def plot_roc(curves: Mapping[str, tuple], out: str | Path, title: str = "ROC",
             ci: bool = True, n_bootstrap: int = 500, seed: int = 0) -> Path:
    """ROC curves (label -> (y, positive-class scores)), each with its 95 % bootstrap band.

    The legend reads 'label: AUC 0.812 [0.741-0.873] (n=...)'. A curve on a single class is
    listed as 'AUC undefined (one class)' and not drawn.
    """
    return _save(roc_figure(curves, title, ci, n_bootstrap, seed), out)


def roc_figure(curves: Mapping[str, tuple], title: str = "ROC", ci: bool = True,
               n_bootstrap: int = 500, seed: int = 0) -> Figure:
    """The figure behind `plot_roc` (for embedding or inspection)."""
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6", label="chance (AUC 0.5)")
    colors = [f"C{i}" for i in range(10)]
    for i, (label, (y, s)) in enumerate(curves.items()):
        y, s = _binary_scores(label, y, s)
        color = colors[i % len(colors)]
        if np.unique(y).size < 2:
            ax.plot([], [], color=color, label=f"{label}: AUC undefined (one class)")
            continue
        rep = evaluate(y, s, ci="bootstrap", n_bootstrap=n_bootstrap if ci else 200, seed=seed)
        fpr, tpr = roc_points(y, s)
        text = f"{label}: AUC {rep.auc:.3f}"
        if ci:
            grid, lo, hi = roc_band(y, s, n_bootstrap=n_bootstrap, seed=seed)
            ax.fill_between(grid, lo, hi, color=color, alpha=0.18, lw=0)
            text += f" [{rep.auc_ci[0]:.3f}-{rep.auc_ci[1]:.3f}]"
        if "n=" not in label:
            text += f" (n={rep.n})"
        ax.plot(fpr, tpr, color=color, lw=1.8, label=text)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(FPR_LABEL)
    ax.set_ylabel(TPR_LABEL)
    ax.set_title(title + (" (shaded: 95% bootstrap CI)" if ci and "CI" not in title else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
    fig.tight_layout()
    return fig


def _nice_length(max_um: float) -> float:
    """Largest 'round' length (µm) not above max_um."""
    fits = [v for v in _NICE_UM if v <= max_um]
    return float(fits[-1]) if fits else max(max_um, 1e-6)


def _scale_bar(ax, width_px: int, height_px: int, um_per_px: float) -> None:
    length_um = _nice_length(0.25 * width_px * um_per_px)
    length_px = length_um / um_per_px
    x0, y0 = 0.04 * width_px, 0.95 * height_px
    ax.plot([x0, x0 + length_px], [y0, y0], color="black", lw=3, solid_capstyle="butt")
    text = f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"
    ax.text(x0 + length_px / 2, y0 - 0.015 * height_px, text, ha="center", va="bottom",
            fontsize=8, bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})


def plot_attention_heatmap(thumbnail: np.ndarray, coords: np.ndarray, attention: np.ndarray,
                           patch_size_level0: float, downsample: float, out: str | Path,
                           top_k: int = 8, patches: Sequence[np.ndarray] | None = None,
                           mpp: float | None = None, title: str | None = None,
                           alpha: float = 0.5, value_label: str = ATTENTION_LABEL) -> Path:
    """Attention over a slide thumbnail, with a colourbar and the top-k patches as a gallery.

    See `attention_figure` for the arguments.
    """
    return _save(attention_figure(thumbnail, coords, attention, patch_size_level0, downsample,
                                  top_k, patches, mpp, title, alpha, value_label), out)


def _colourbar(fig: Figure, im: Any, ax: Any, label: str) -> None:
    """A colourbar for `im` with its colours opaque (the legend of the colours, not the blend)."""
    cbar = fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02)
    cbar.set_label(label)
    if cbar.solids is not None:
        cbar.solids.set_alpha(1.0)  # the legend of the colours, not of the blend


def attention_figure(thumbnail: np.ndarray, coords: np.ndarray, attention: np.ndarray,
                     patch_size_level0: float, downsample: float, top_k: int = 8,
                     patches: Sequence[np.ndarray] | None = None, mpp: float | None = None,
                     title: str | None = None, alpha: float = 0.5,
                     value_label: str = ATTENTION_LABEL) -> Figure:
    """Attention over a slide thumbnail, with a colourbar and the top-k patches as a gallery.

    `value_label` names what the values are (the colourbar's label; its first word heads
    each gallery patch): attention by default, or e.g. instance scores.

    coords are level-0 top-left corners; downsample = level-0 px per thumbnail px. Attention is
    min-max scaled to [0, 1] within the slide ("relative"). With `mpp` (level-0 µm/px) a scale
    bar is drawn. `patches` (the top-k images, highest first) come from the caller, who can
    read them from the slide at full resolution; without them the gallery shows thumbnail
    crops.
    """
    thumb = np.asarray(thumbnail)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    att = np.asarray(attention, dtype=np.float64).ravel()
    if att.size != coords.shape[0]:
        raise EvaluationError(f"{att.size} attention values for {coords.shape[0]} patch coordinates")
    if thumb.ndim != 3 or downsample <= 0:
        raise EvaluationError(f"thumbnail must be (h, w, 3) and downsample > 0; got {thumb.shape}, "
                              f"{downsample}")
    tiles = _AttentionTiles(att, coords, patch_size_level0, downsample, thumb.shape[:2])
    k = int(min(top_k, att.size))
    top = np.argsort(-att, kind="mergesort")[:k]
    h, w = thumb.shape[:2]
    main_h = min(9.0, max(2.5, 6.8 * h / max(w, 1)) + 0.5)  # follow the slide's aspect
    gallery_h = 8.0 / max(k, 4) + 0.4 if k else 0.0
    fig = Figure(figsize=(8, main_h + gallery_h))
    grid = fig.add_gridspec(2 if k else 1, max(k, 1),
                            height_ratios=[main_h, gallery_h] if k else [1])
    ax = fig.add_subplot(grid[0, :])
    ax.imshow(thumb)
    im = ax.imshow(np.ma.masked_invalid(tiles.heat), cmap="jet", alpha=alpha, vmin=0, vmax=1,
                   interpolation="nearest")
    for rank, i in enumerate(top, 1):
        x, y = tiles.corners[i]
        ax.add_patch(Rectangle((x, y), tiles.side, tiles.side, fill=False, ec="white", lw=1.2))
        ax.text(x, y, str(rank), color="white", fontsize=7, va="bottom", fontweight="bold")
    _colourbar(fig, im, ax, value_label)
    if mpp:
        _scale_bar(ax, w, h, mpp * downsample)
    ax.set_axis_off()
    ax.set_title(title or f"{value_label.split(' (')[0].capitalize()} over {att.size} patches "
                 f"(top {k} boxed)", fontsize=10)
    for rank, i in enumerate(top):
        img = (np.asarray(patches[rank]) if patches is not None and rank < len(patches)
               else tiles.crop(thumb, i))
        gax = fig.add_subplot(grid[1, rank])
        gax.imshow(img)
        short = "att" if value_label.startswith("attention") else "score"
        gax.set_title(f"#{rank + 1} {short} {tiles.relative[i]:.2f}", fontsize=7)
        gax.set_xticks([])
        gax.set_yticks([])
    fig.tight_layout()
    return fig


class _AttentionTiles:
    """Patches on the thumbnail: corners and side in thumbnail px, attention min-max scaled
    within the slide, and the heat image (NaN off tissue; overlaps keep the highest)."""

    def __init__(self, att: np.ndarray, coords: np.ndarray, patch_size_level0: float,
                 downsample: float, shape: tuple[int, ...]) -> None:
        span = att.max() - att.min() if att.size else 0.0
        self.relative = (att - att.min()) / span if span > 0 else np.ones_like(att)
        self.side = max(1, int(round(patch_size_level0 / downsample)))
        self.corners = np.floor(coords / downsample).astype(np.int64)
        self.heat = np.full(shape, np.nan)
        for i, v in enumerate(self.relative):
            region = self._region(self.heat, i)
            np.fmax(region, v, out=region)

    def _region(self, image: np.ndarray, i: int) -> np.ndarray:
        x, y = self.corners[i]
        return image[max(y, 0):y + self.side, max(x, 0):x + self.side]

    def crop(self, thumb: np.ndarray, i: int) -> np.ndarray:
        """Patch `i` cut from the thumbnail (the gallery without full-resolution patches)."""
        return self._region(thumb, i)


def plot_training_curves(history: Sequence[Mapping[str, float]], out: str | Path,
                         title: str = "Training") -> Path:
    """Loss (left) and the other numeric metrics (right) against the epoch."""
    return _save(training_figure(history, title), out)


def training_figure(history: Sequence[Mapping[str, float]], title: str = "Training") -> Figure:
    """The figure behind `plot_training_curves`."""
    if not history:
        raise EvaluationError("empty training history: nothing to plot")
    epochs = [row.get("epoch", i) for i, row in enumerate(history)]
    keys = [k for k in dict.fromkeys(k for row in history for k in row)
            if k not in {"epoch", "lr", "time", "seconds", "step"}]
    series = {k: [_num(row.get(k)) for row in history] for k in keys}
    series = {k: v for k, v in series.items() if any(math.isfinite(x) for x in v)}
    losses = {k: v for k, v in series.items() if "loss" in k}
    others = {k: v for k, v in series.items() if "loss" not in k}
    fig = Figure(figsize=(10, 4))
    for idx, (group, ylabel) in enumerate(((losses, "loss"), (others, "metric value"))):
        ax = fig.add_subplot(1, 2, idx + 1)
        for name, values in group.items():
            ax.plot(epochs, values, marker="." if len(epochs) < 40 else None, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no values recorded", ha="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
