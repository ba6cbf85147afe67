"""`--bags`: the paper's fixed bags resolved to store rows by patch file name, one training
sample per bag and epoch, patients scored by the mean (or max) of their bags' probabilities.

The stores here record their rows' names themselves (`write_store(..., patch_files=...)`,
read back as `PackedBags.patch_files` by `load_bags`); the tests on `fixed_bag_cohort` alone
build `PackedBags` with names directly. Real patch folders extracted into HDF5, Zarr and a
pack, then trained on: test_fixed_bags_e2e.py.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from _data import DIM, STORE_ATTRS, fast_args, make_tiny_cohort

import balnmp_cache.store
from balnmp_cache.store import PackedBags
from balnmp_mil import build_model, fit
from balnmp_mil.cli import main
from balnmp_mil.data.cohort import load_cohort
from balnmp_mil.data.fixed_bags import fixed_bag_cohort, read_fixed_bags
from balnmp_mil.data.splits import Split, save_splits
from balnmp_mil.errors import CohortError, InputError, LabelError, MILError
from balnmp_mil.training.inference import MERGES, bag_logits, predict
from balnmp_mil.workflow.config import TrainConfig


def names_of(slide_id: str, n: int) -> list[str]:
    """BCNB-style patch file names for a slide's rows."""
    return [f"{slide_id}_0_{256 * i}_0.jpg" for i in range(n)]


def bags_doc(names: dict[str, list[str]], labels: dict[str, int], size: int, seed: int = 0,
             task: str | None = None, class_names: tuple[str, ...] = ("0", "1"),
             parts: dict[str, str] | None = None) -> dict:
    """A balnmp-bags document: each patient's names shuffled once and cut into bags of
    `size`, leftovers dropped (as the official code cut them)."""
    rng = np.random.default_rng(seed)
    order = list(names)
    parts = parts or {p: ("train", "train", "val", "test")[i % 4] for i, p in enumerate(order)}
    bags = []
    for pid in order:
        shuffled = [names[pid][i] for i in rng.permutation(len(names[pid]))]
        for b in range(len(shuffled) // size):
            bags.append({"patient_id": pid, "label": labels[pid], "split": parts[pid],
                         "patches": shuffled[b * size : (b + 1) * size]})
    return {"format": "balnmp-bags", "version": 1, "task": task,
            "class_names": list(class_names), "source": "test", "bags": bags}


def packed(n_patients: int = 8, seed: int = 0, names: bool = True
           ) -> tuple[PackedBags, pd.DataFrame, dict[str, list[str]]]:
    """A PackedBags of one slide per patient (id = patient id) with names, and its labels."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(9, 15, n_patients)
    ids = [str(p) for p in range(1, n_patients + 1)]
    feats = rng.normal(size=(int(sizes.sum()), DIM)).astype(np.float32)
    files = {sid: names_of(sid, int(n)) for sid, n in zip(ids, sizes, strict=True)}
    return (PackedBags(
        features=feats, coords=np.zeros((len(feats), 2), np.int64),
        offsets=np.r_[0, np.cumsum(sizes)].astype(np.int64), slide_ids=ids,
        attrs=[dict(STORE_ATTRS, slide_id=s, feature_dim=DIM) for s in ids],
        patch_files=np.concatenate([files[s] for s in ids]) if names else None),
        pd.DataFrame({"patient_id": ids, "label": [i % 2 for i in range(n_patients)]}), files)


def fixed_cohort(tmp_path, size: int = 4, **doc_kw):
    bags, labels, files = packed()
    path = tmp_path / "x.bags.json"
    path.write_text(json.dumps(bags_doc(files, dict(zip(labels.patient_id, labels.label,
                                                        strict=True)), size, **doc_kw)))
    cohort = load_cohort(bags, labels)
    return cohort, read_fixed_bags(path), bags, files


def test_each_fixed_bag_is_its_named_rows_and_the_leftovers_are_dropped(tmp_path) -> None:
    cohort, fixed, bags, _ = fixed_cohort(tmp_path)
    fc = fixed_bag_cohort(cohort, fixed)
    assert fc.n_bags == len(fixed.bags) and fc.bag_level == "fixed"
    assert fc.bag_sizes.tolist() == [4] * len(fixed.bags)
    row_of = {n: i for i, n in enumerate(bags.patch_files.tolist())}
    for b, bag in enumerate(fixed.bags):
        a, e = int(fc.offsets[b]), int(fc.offsets[b + 1])
        assert fc.patch_files[a:e].tolist() == bag.patches
        want = bags.features[[row_of[n] for n in bag.patches]]
        assert torch.equal(fc.features[a:e], torch.from_numpy(want))
        assert fc.patient_ids[int(fc.bag_patient[b])] == bag.patient_id
    used = sum(len(b.patches) for b in fixed.bags)
    assert fc.meta["fixed_bags"]["n_rows_unused"] == len(bags.features) - used > 0
    # a patient subset keeps whole fixed bags and their slides' bookkeeping
    sub = fc.subset([1, 0])
    assert sub.patient_ids == [fc.patient_ids[1], fc.patient_ids[0]]
    assert sub.slides == [fc.patient_ids[1], fc.patient_ids[0]]
    assert sub.slide_offsets[-1] == sub.n_instances


def test_a_store_without_names_says_a_new_extraction_is_needed(tmp_path) -> None:
    bags, labels, files = packed(names=False)
    path = tmp_path / "x.bags.json"
    path.write_text(json.dumps(bags_doc(files, dict.fromkeys(files, 1), 4)))
    cohort = load_cohort(bags, labels)
    with pytest.raises(CohortError, match="records no patch file names") as err:
        fixed_bag_cohort(cohort, read_fixed_bags(path))
    assert "new --out" in str(err.value) and "resume" in str(err.value)


def test_patch_names_not_in_the_store_are_counted_and_shown(tmp_path) -> None:
    bags, labels, files = packed()
    files = dict(files)
    files["3"] = [n.replace("_0_", "_9_") for n in files["3"]]  # another region: not there
    doc = bags_doc(files, dict(zip(labels.patient_id, labels.label, strict=True)), 4)
    path = tmp_path / "x.bags.json"
    path.write_text(json.dumps(doc))
    n_lost = sum(len(b["patches"]) for b in doc["bags"] if b["patient_id"] == "3")
    with pytest.raises(CohortError) as err:
        fixed_bag_cohort(load_cohort(bags, labels), read_fixed_bags(path))
    msg = str(err.value)
    assert f"{n_lost} patch files of bags file {path} (1 patients)" in msg
    assert "patient 3: 3_9_" in msg


def test_labels_table_and_bags_file_must_agree_and_the_task_must_match(tmp_path) -> None:
    bags, labels, files = packed()
    flipped = {p: 1 - int(y) for p, y in zip(labels.patient_id, labels.label, strict=True)}
    path = tmp_path / "x.bags.json"
    path.write_text(json.dumps(bags_doc(files, flipped, 4)))
    cohort = load_cohort(bags, labels)
    with pytest.raises(LabelError, match="labels come from --labels only"):
        fixed_bag_cohort(cohort, read_fixed_bags(path))
    path.write_text(json.dumps(bags_doc(files, flipped, 4, task="n0_vs_n+")))
    with pytest.raises(InputError, match="task n0_vs_n\\+, but --task is not given"):
        fixed_bag_cohort(cohort, read_fixed_bags(path))


@pytest.mark.parametrize(("text", "match"), [
    ("{", "is not JSON"),
    ('{"format": "balnmp-splits"}', "is not a balnmp-bags file"),
    ('{"format": "balnmp-bags", "version": 2}', "version 2"),
    ('{"format": "balnmp-bags", "version": 1, "class_names": ["0", "1"], "bags": '
     '[{"patient_id": "1", "label": 2, "split": "train", "patches": ["a.jpg"]}]}',
     "label 2"),
    ('{"format": "balnmp-bags", "version": 1, "class_names": ["0", "1"], "bags": '
     '[{"patient_id": "1", "label": 0, "split": "train", "patches": ["a.jpg"]}, '
     '{"patient_id": "1", "label": 0, "split": "test", "patches": ["b.jpg"]}]}',
     "two labels or split parts"),
])
def test_malformed_bags_files_are_refused_by_name(tmp_path, text, match) -> None:
    path = tmp_path / "x.bags.json"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        read_fixed_bags(path)
    assert str(path) in str(err.value) and "paper splits" in str(err.value)


def test_one_sample_per_fixed_bag_per_epoch_whole(tmp_path) -> None:
    cohort, fixed, _, _ = fixed_cohort(tmp_path)
    fc = fixed_bag_cohort(cohort, fixed)
    model = build_model("abmil", DIM, 2, seed=0, embed_dim=8, attention_dim=4)
    seen: list[torch.Tensor] = []
    forward = model.forward
    model.forward = lambda x, *a, **k: (seen.append(x.detach().clone()), forward(x, *a, **k))[1]
    fit(model, fc, epochs=2, bags_per_step=1, seed=0, progress=False)
    assert len(seen) == 2 * fc.n_bags and {len(x) for x in seen} == {4}
    epoch = torch.cat(seen[: fc.n_bags])
    key = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731  # rows in a canonical order
    assert torch.equal(key(epoch), key(fc.features))  # every bag once, none subsampled


@pytest.mark.parametrize("merge", ["mean", "max"])
def test_patient_score_is_the_merge_of_its_bags_probabilities(tmp_path, merge) -> None:
    cohort, fixed, _, _ = fixed_cohort(tmp_path)
    fc = fixed_bag_cohort(cohort, fixed)
    model = build_model("abmil", DIM, 2, seed=1, embed_dim=8, attention_dim=4).eval()
    merged = predict(model, fc, merge)
    by_patient: dict[int, list[np.ndarray]] = {}
    with torch.no_grad():
        for b in range(fc.n_bags):
            x = fc.features[int(fc.offsets[b]) : int(fc.offsets[b + 1])]
            p = torch.softmax(model(x, torch.tensor([0, len(x)]), None).logits, 1)
            by_patient.setdefault(int(fc.bag_patient[b]), []).append(p[0].numpy())
    for i, probs in by_patient.items():
        stack = np.stack(probs)
        want = stack.mean(0) if merge == "mean" else stack.max(0) / stack.max(0).sum()
        np.testing.assert_allclose(merged[i], want, rtol=1e-5, atol=1e-6)
    assert len(merged) == len(fc) < fc.n_bags and merge in MERGES
    assert bag_logits(model, fc)[0].shape[0] == fc.n_bags


def test_bags_conflicts_with_other_ways_of_making_bags() -> None:
    with pytest.raises(MILError, match="--bag-level"):
        TrainConfig(features="f", labels="l", bags="b.json", bag_level="slide")
    with pytest.raises(MILError, match="--instances-per-bag 10"):
        TrainConfig(features="f", labels="l", bags="b.json", instances_per_bag=10)


@pytest.fixture
def named_store(tmp_path):
    """A tiny BCNB-like store that records each row's patch file name, and the paper's bags
    for it, made from the names the store reads back."""
    tiny = make_tiny_cohort(tmp_path, n_patients=24, patch_files=names_of)
    table = tiny.table
    status = table["ALN status"].astype(str)
    labels = {str(p): int(s != "N0") for p, s in zip(table["Patient ID"], status, strict=True)}
    with balnmp_cache.store.FeatureStore(tiny.features) as store:
        files = {s: store[s].patch_files.tolist() for s in sorted(store.slide_ids)}
    assert files == {s: names_of(s, len(n)) for s, n in files.items()}
    parts = {p: ("train", "train", "val", "test")[i % 4] for i, p in enumerate(labels)}
    doc = bags_doc(files, labels, 3, task="n0_vs_n+", class_names=("N0", "N+"), parts=parts)
    path = tmp_path / "n0_vs_n+.bags.json"
    path.write_text(json.dumps(doc))
    return tiny, path, doc


def _train(tiny, bags, out, *extra):
    from click.testing import CliRunner

    return CliRunner().invoke(main, [
        "train", str(tiny.features), "--labels", str(tiny.labels), "--task", "n0_vs_n+",
        "--bags", str(bags), "--out", str(out), *fast_args(2), *extra])


def test_paper_bags_train_end_to_end(named_store, tmp_path) -> None:
    tiny, path, doc = named_store
    out = tmp_path / "run"
    res = _train(tiny, path, out, "--protocol", "paper", "--model", "balnmp",
                 "--clinical", str(tiny.labels))
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["bags"] == str(path.resolve()) and saved["protocol"] == "paper"
    assert saved["meta"]["n_bags"] == len(doc["bags"])
    assert saved["meta"]["bags_per_step"] == 1
    assert str(path.resolve()) in (out / "report.html").read_text()  # the run says its bags
    splits = json.loads((out / "splits.json").read_text())["splits"][0]
    for part in ("train", "val", "test"):  # the bags file's parts are the run's split
        want = list(dict.fromkeys(b["patient_id"] for b in doc["bags"] if b["split"] == part))
        assert splits[part] == want
    pred = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert sorted(pred.patient_id) == sorted({b["patient_id"] for b in doc["bags"]})


def test_bags_and_splits_must_agree_and_cv_folds_over_the_bags(named_store, tmp_path) -> None:
    from click.testing import CliRunner

    tiny, path, doc = named_store
    parts = {b["patient_id"]: b["split"] for b in doc["bags"]}
    swapped = {"train": [p for p, s in parts.items() if s == "val"],
               "val": [p for p, s in parts.items() if s == "train"],
               "test": [p for p, s in parts.items() if s == "test"]}
    splits = save_splits(Split(**swapped), tmp_path / "other.json")
    res = _train(tiny, path, tmp_path / "run", "--splits", str(splits))
    assert res.exit_code == 2 and "leave --splits out" in res.output, res.output
    res = CliRunner().invoke(main, [
        "cv", str(tiny.features), "--labels", str(tiny.labels), "--task", "n0_vs_n+",
        "--bags", str(path), "--folds", "2", "--out", str(tmp_path / "cv"), *fast_args(1)])
    assert res.exit_code == 0, res.output


def test_recipe_passes_the_bags_file_for_features_from_paper_patches(tmp_path) -> None:
    """run_recipe.py --official-splits: the image models get `--bags <task>.bags.json` (not
    `--instances-per-bag`) when the bags file exists and the features are paper_patches'."""
    from _docs_helpers import ROOT, import_script

    recipe = import_script(ROOT / "examples" / "bcnb" / "run_recipe.py")
    bags = tmp_path / "n0_vs_n+.bags.json"
    assert recipe.fixed_bags(tmp_path, "n0_vs_n+", "patches") is None  # not written
    bags.write_text("{}")
    assert recipe.fixed_bags(tmp_path, "n0_vs_n+", "patches") == bags
    assert recipe.fixed_bags(tmp_path, "n0_vs_n+", "wsi") is None
    assert recipe.fixed_bags(None, "n0_vs_n+", "patches") is None
    settings = recipe._settings("clin.xlsx", 10, "paper", bags)
    for name in ("image", "image+clinical"):
        assert settings[name][settings[name].index("--bags") + 1] == str(bags)
        assert "--instances-per-bag" not in settings[name]
    assert "--bags" not in settings["clinical"]
    assert "--instances-per-bag" in recipe._settings("clin.xlsx", 10, "paper")["image"]


def test_chunked_loading_keeps_each_rows_name_aligned(tmp_path, monkeypatch) -> None:
    """`load_chunked` (one `load_bags` call per chunk) carries `PackedBags.patch_files` in row
    order, "" for the rows of slides without names; None when no slide has any."""
    from _data import write_store

    import balnmp_mil.data.load as load

    sizes = {"a": 3, "b": 4, "c": 2}
    write_store(tmp_path / "s", sizes, dim=DIM, batch=3, patch_files={"b": names_of("b", 4)})
    write_store(tmp_path / "bare", sizes, dim=DIM)
    monkeypatch.setattr(load, "CHUNK_ELEMENTS", 1)  # one slide per chunk
    for path, want in [(tmp_path / "s", [""] * 3 + names_of("b", 4) + [""] * 2),
                       (tmp_path / "bare", None)]:
        with balnmp_cache.store.FeatureStore(path) as store:
            out = load.load_chunked(store, ["a", "b", "c"], "error", False, torch.float32,
                                    torch.device("cpu"))
        assert (out.patch_files if want is None else out.patch_files.tolist()) == want


def test_command_line_bags_errors_exit_2_naming_the_file(named_store, tmp_path) -> None:
    tiny, path, _ = named_store
    res = _train(tiny, tmp_path / "nope.bags.json", tmp_path / "r1")
    assert res.exit_code == 2 and "bags file" in res.output and "does not exist" in res.output
    res = _train(tiny, path, tmp_path / "r2", "--task", "three_class")
    assert res.exit_code == 2 and "--task n0_vs_n+" in res.output, res.output
    bad = tmp_path / "bad.bags.json"
    bad.write_text("[]")
    res = _train(tiny, bad, tmp_path / "r3")
    assert res.exit_code == 2 and f"bags file {bad} is not a balnmp-bags file" in res.output
    assert not (tmp_path / "r3").exists()
