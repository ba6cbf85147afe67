"""Plots are written as non-empty PNGs with the promised labels, legends and scale bars."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from balnmp_mil.evaluation.plots import (
    ATTENTION_LABEL,
    FPR_LABEL,
    TPR_LABEL,
    attention_figure,
    plot_attention_heatmap,
    plot_roc,
    plot_training_curves,
    roc_band,
    roc_figure,
    roc_points,
    training_figure,
)


def scores(n=80, seed=0, signal=0.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, rng.random(n) + signal * y


def check_png(path, min_size=(400, 400)):
    assert path.exists() and path.stat().st_size > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        arr = np.asarray(im.convert("L"))
    assert arr.std() > 10  # not a blank canvas


def test_roc_png_axes_and_legend(tmp_path):
    curves = {"image-only": scores(), "clinical-only": scores(seed=1, signal=0.2)}
    check_png(plot_roc(curves, tmp_path / "sub" / "roc.png", title="Test split"))
    fig = roc_figure(curves, title="Test split", n_bootstrap=100)
    ax = fig.axes[0]
    assert ax.get_xlabel() == FPR_LABEL == "1 - Specificity (false positive rate)"
    assert ax.get_ylabel() == TPR_LABEL == "Sensitivity (true positive rate)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("image-only: AUC 0.") and "[" in t for t in legend)
    assert len(ax.collections) == 2  # one CI band per curve


def test_roc_single_class_curve_listed_not_drawn():
    fig = roc_figure({"all negative": (np.zeros(5, int), np.linspace(0, 1, 5))}, ci=False)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "all negative: AUC undefined (one class)" in legend
    with pytest.raises(ValueError, match="one-vs-rest"):
        roc_figure({"3 classes": (np.array([0, 1, 2]), np.eye(3))})


def test_roc_points_and_band():
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    fpr, tpr = roc_points(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    y, s = scores()
    grid, lo, hi = roc_band(y, s, n_bootstrap=200)
    f, t = roc_points(y, s)
    mid = np.interp(grid, f, t)
    assert (lo <= hi + 1e-12).all() and ((lo <= mid + 1e-9) & (mid <= hi + 1e-9)).mean() > 0.9


def test_attention_heatmap_colourbar_scale_bar_gallery(tmp_path):
    rng = np.random.default_rng(0)
    thumb = (rng.random((200, 300, 3)) * 60 + 180).astype(np.uint8)
    coords = np.array([(x, y) for x in range(0, 6000, 512) for y in range(0, 4000, 512)])
    att = rng.random(len(coords))
    patches = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(4)]
    out = plot_attention_heatmap(thumb, coords, att, 512, 20, tmp_path / "heat.png", top_k=4,
                                 patches=patches, mpp=0.5)
    check_png(out)
    fig = attention_figure(thumb, coords, att, 512, 20, top_k=4, mpp=0.5)
    labels = [a.get_ylabel() for a in fig.axes]
    assert ATTENTION_LABEL in labels
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any(t.endswith(("µm", "mm")) for t in texts)  # scale bar with a unit
    assert {"1", "2", "3", "4"} <= set(texts)  # top-k boxes numbered
    gallery = [a.get_title() for a in fig.axes if a.get_title().startswith("#")]
    assert gallery[0] == "#1 att 1.00" and len(gallery) == 4
    no_mpp = attention_figure(thumb, coords, att, 512, 20, top_k=0)
    assert not any(t.get_text().endswith(("µm", "mm")) for t in no_mpp.axes[0].texts)
    with pytest.raises(ValueError, match="attention values"):
        attention_figure(thumb, coords, att[:-1], 512, 20)


def test_training_curves(tmp_path):
    hist = [{"epoch": i, "train_loss": 1 / (i + 1), "val_loss": 1.1 / (i + 1),
             "val_auc": 0.5 + i / 50, "lr": 1e-4} for i in range(10)]
    check_png(plot_training_curves(hist, tmp_path / "curves.png"), (600, 300))
    fig = training_figure(hist)
    assert [a.get_xlabel() for a in fig.axes] == ["epoch", "epoch"]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["val_auc"]
    with pytest.raises(ValueError, match="empty"):
        training_figure([])
