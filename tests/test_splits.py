"""Patient-level splits: stratified, disjoint, reproducible, reloadable by path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from balnmp_mil.data.splits import (
    Split,
    SplitError,
    kfold_splits,
    load_splits,
    save_splits,
    stratified_split,
)


def cohort(n=100, pos=0.3, seed=0):
    rng = np.random.default_rng(seed)
    pids = [str(i) for i in rng.permutation(np.arange(1, n + 1))]
    labels = (rng.random(n) < pos).astype(int)
    return pids, labels


def frac_pos(ids, pids, labels):
    lab = dict(zip(pids, labels))
    return np.mean([lab[p] for p in ids])


def test_stratified_split_sizes_classes_and_disjointness():
    pids, y = cohort()
    sp = stratified_split(pids, y, val=0.15, test=0.2, seed=0)
    assert len(sp.test) == 20 and len(sp.val) == 15 and len(sp.train) == 65
    assert set(sp.train) | set(sp.val) | set(sp.test) == set(pids)
    assert not (set(sp.train) & set(sp.val) or set(sp.train) & set(sp.test)
                or set(sp.val) & set(sp.test))
    overall = y.mean()
    for part in (sp.train, sp.val, sp.test):
        assert abs(frac_pos(part, pids, y) - overall) <= 1.0 / len(part) + 1e-9


def test_reproducible_and_seed_dependent():
    pids, y = cohort()
    assert stratified_split(pids, y, seed=3) == stratified_split(pids, y, seed=3)
    assert stratified_split(pids, y, seed=3) != stratified_split(pids, y, seed=4)
    assert kfold_splits(pids, y, seed=1) == kfold_splits(pids, y, seed=1)


def test_multiclass_labels_are_stratified():
    rng = np.random.default_rng(0)
    pids = [f"p{i}" for i in range(90)]
    y = rng.integers(0, 3, 90)
    sp = stratified_split(pids, y, val=0.2, test=0.2)
    lab = dict(zip(pids, y))
    for c in range(3):
        n_c = (y == c).sum()
        assert abs(sum(lab[p] == c for p in sp.test) - 0.2 * n_c) <= 1


def test_kfold_test_folds_partition_patients_and_val_is_carved_from_train():
    pids, y = cohort(n=53)
    folds = kfold_splits(pids, y, k=5, val=0.2, seed=0)
    tests = [p for f in folds for p in f.test]
    assert sorted(tests) == sorted(pids)  # every patient tested exactly once
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    pos = [sum(dict(zip(pids, y))[p] for p in f.test) for f in folds]
    assert max(pos) - min(pos) <= 1  # positives spread evenly
    for f in folds:
        assert set(f.train) | set(f.val) == set(pids) - set(f.test)
        assert len(f.val) == round(0.2 * (len(f.train) + len(f.val)))
    assert all(len(f.val) == 0 for f in kfold_splits(pids, y, k=3, val=0.0))


def test_overlap_is_impossible():
    with pytest.raises(SplitError, match="patient 7 is in both train and test"):
        Split(train=["1", "7"], val=["2"], test=["7"])
    with pytest.raises(SplitError, match="patient 1 is twice in train"):
        Split(train=["1", "1"])
    with pytest.raises(SplitError, match="repeated"):
        stratified_split(["1", "1", "2"], [0, 1, 0])


def test_save_and_reload_by_path(tmp_path):
    pids, y = cohort()
    one = stratified_split(pids, y)
    folds = kfold_splits(pids, y, k=4)
    assert load_splits(save_splits(one, tmp_path / "split.json")) == one
    assert load_splits(save_splits(folds, tmp_path / "folds.json")) == folds
    assert not list(tmp_path.glob(".*tmp*"))
    doc = json.loads((tmp_path / "split.json").read_text())
    doc["splits"][0]["test"].append(doc["splits"][0]["train"][0])
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(SplitError, match=r"bad\.json: patient .* in both train and test"):
        load_splits(tmp_path / "bad.json")
    with pytest.raises(SplitError, match="does not exist"):
        load_splits(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SplitError, match="not a balnmp splits file"):
        load_splits(tmp_path / "other.json")


def test_indices_map_to_cohort_order():
    pids, y = cohort(n=20)
    sp = stratified_split(pids, y)
    idx = sp.indices(pids)
    assert [pids[i] for i in idx["test"]] == sp.test
    with pytest.raises(SplitError, match="not in the cohort"):
        sp.indices(pids[:5])


def test_bad_arguments():
    pids, y = cohort(n=10)
    with pytest.raises(SplitError, match="no training"):
        stratified_split(pids, y, val=0.5, test=0.5)
    with pytest.raises(SplitError, match="k must be"):
        kfold_splits(pids, y, k=11)
    with pytest.raises(SplitError, match="labels"):
        stratified_split(pids, y[:3])
