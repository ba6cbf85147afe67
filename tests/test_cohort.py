"""load_cohort: labels joined to a real feature store, packing, subsets, missing slides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _data import bcnb_table

from balnmp_cache.store import FeatureStore, StoreError, load_bags
from balnmp_mil.data.cohort import CohortError, cohort_from_bags, load_cohort

D = 6
SIZES = {"1": 3, "2": 5, "3": 2, "4": 4, "5a": 2, "5b": 3}


def slide_features(sid: str) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(sid)) % 2**32)
    return rng.normal(size=(SIZES[sid], D)).astype(np.float16)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("feats")
    attrs = {"encoder": "resnet18", "weights": "none", "target_mpp": 0.5}
    with FeatureStore(path, mode="a", format="h5") as fs:
        for sid, n in SIZES.items():
            with fs.writer(sid, D, "float16", dict(attrs), {}) as w:
                coords = np.arange(2 * n, dtype=np.int64).reshape(n, 2)
                w.append(slide_features(sid), coords)
    return path


def test_bcnb_task_packs_patient_bags(store):
    table = bcnb_table(["N0", "N+(>2)", "N+(1-2)", "N0"])
    c = load_cohort(store, table, task="n12_vs_n3", clinical=True)
    assert c.patient_ids == ["2", "3"] and c.labels.tolist() == [1, 0]
    assert c.meta["n_dropped"] == 2 and c.meta["dropped"] == ["1", "4"]
    assert c.meta["encoder"] == "resnet18"
    assert c.offsets.tolist() == [0, 5, 7] and c.features.dtype == torch.float32
    np.testing.assert_array_equal(c.features[:5].numpy(), slide_features("2").astype(np.float32))
    assert c.clinical_table["Age(years)"].tolist() == table["Age(years)"][1:3].tolist()
    assert c.coords.shape == (7, 2) and len(c) == 2 and c.feature_dim == D


def test_slide_level_and_multi_slide_patients(store):
    labels = pd.DataFrame({"slide_id": ["5b", "1", "5a"], "patient_id": ["p5", "p1", "p5"],
                           "label": [1, 0, 1]})
    pat = load_cohort(store, labels)
    assert pat.patient_ids == ["p5", "p1"] and pat.n_bags == 2
    assert pat.bag_sizes.tolist() == [5, 3] and pat.slides == ["5b", "5a", "1"]
    expect = np.concatenate([slide_features("5b"), slide_features("5a")]).astype(np.float32)
    np.testing.assert_array_equal(pat.features[:5].numpy(), expect)
    sl = load_cohort(store, labels, bag_level="slide", dtype=torch.float16)
    assert sl.n_bags == 3 and sl.bag_patient.tolist() == [0, 0, 1]
    assert sl.features.dtype == torch.float16 and sl.bag_labels.tolist() == [1, 1, 0]


def test_missing_slides_error_or_warn(store):
    labels = pd.DataFrame({"patient_id": ["1", "2", "zz9"], "label": [0, 1, 1]})
    with pytest.raises(CohortError, match="zz9.*--on-missing warn"):
        load_cohort(store, labels)
    with pytest.warns(UserWarning, match="zz9"):
        c = load_cohort(store, labels, on_missing="warn")
    assert c.patient_ids == ["1", "2"] and c.meta["missing_slides"] == ["zz9"]


def test_loads_from_pack_arrays(store):
    packed = load_bags(store)
    c = load_cohort(packed, pd.DataFrame({"slide_id": ["4", "2"], "label": [1, 0]}))
    assert c.patient_ids == ["4", "2"]
    np.testing.assert_array_equal(c.features[:4].numpy(), slide_features("4").astype(np.float32))


def test_subset_repacks_bags_in_order():
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(n, 3)).astype(np.float32) for n in (2, 4, 1, 3)]
    c = cohort_from_bags(bags, [0, 1, 0, 1]).with_clinical(np.arange(8).reshape(4, 2))
    s = c.subset([3, 1])
    assert s.patient_ids == ["3", "1"] and s.labels.tolist() == [1, 1]
    assert s.offsets.tolist() == [0, 3, 7] and s.slides == ["3", "1"]
    np.testing.assert_array_equal(s.features.numpy(), np.concatenate([bags[3], bags[1]]))
    assert s.clinical.tolist() == [[6, 7], [2, 3]]
    with pytest.raises(CohortError, match="repeat"):
        c.subset([1, 1])
    with pytest.raises(CohortError, match="n_patients=4"):
        c.with_clinical(np.zeros((3, 2)))


def test_chunked_loading_equals_one_shot_and_checks_encoders(store, monkeypatch, tmp_path):
    import balnmp_mil.data.load as cl

    labels = pd.DataFrame({"patient_id": list(SIZES), "label": [0, 1] * 3})
    whole = load_cohort(store, labels)
    monkeypatch.setattr(cl, "CHUNK_ELEMENTS", 3 * D)  # a chunk per slide or two
    chunked = load_cohort(store, labels)
    assert torch.equal(whole.features, chunked.features)
    assert whole.offsets.tolist() == chunked.offsets.tolist()
    np.testing.assert_array_equal(whole.coords, chunked.coords)
    with FeatureStore(tmp_path, mode="a", format="h5") as fs:
        for sid, enc in (("a", "resnet18"), ("b", "uni")):
            with fs.writer(sid, D, "float16", {"encoder": enc}, {}) as w:
                w.append(np.ones((2, D), np.float16), np.zeros((2, 2), np.int64))
    with pytest.raises(StoreError, match="mixed encoder.*allow_mixed"):
        load_cohort(tmp_path, pd.DataFrame({"slide_id": ["a", "b"], "label": [0, 1]}))


def test_one_cohort_rule_is_the_stores_for_both_loaders(tmp_path, monkeypatch):
    """`target_mpp` 0.5 and 0.50000001 are one resolution for `load_bags` and, chunked or not,
    for `load_cohort` (the two used to apply different rules)."""
    import balnmp_mil.data.load as cl

    with FeatureStore(tmp_path, mode="a", format="h5") as fs:
        for sid, mpp in (("a", 0.5), ("b", 0.50000001), ("c", 0.5)):
            with fs.writer(sid, D, "float16", {"encoder": "r18", "target_mpp": mpp}, {}) as w:
                w.append(np.ones((2, D), np.float16), np.zeros((2, 2), np.int64))
    labels = pd.DataFrame({"slide_id": ["a", "b", "c"], "label": [0, 1, 0]})
    assert len(load_bags(tmp_path)) == 3
    assert len(load_cohort(tmp_path, labels, device="cpu")) == 3
    monkeypatch.setattr(cl, "CHUNK_ELEMENTS", 2 * D)  # one slide per chunk
    assert len(load_cohort(tmp_path, labels, device="cpu")) == 3
