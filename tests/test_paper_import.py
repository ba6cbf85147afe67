"""A released BALNMP checkpoint in both stages: its backbone through `extract-features
--flatten --weights CHECKPOINT`, its head through `balnmp-mil paper import`; `predict` then
gives the probabilities of the official pipeline (backbone + head, eval mode), and `heatmap`
draws its attention."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _encoder_helpers import official_checkpoint
from _extract_helpers import tiny_cohort
from _paper_helpers import official_forward, official_head
from click.testing import CliRunner
from torchvision import transforms as T

from balnmp_cache import FeatureStore, extract_features, open_slide
from balnmp_mil.cli import main

IMAGENET = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A MILNetImageOnly-shaped checkpoint (VGG16-BN backbone, N0 vs N+ head), one slide and
    the features its backbone gives the slide's patches."""
    root = tmp_path_factory.mktemp("paper")
    state, backbone = official_checkpoint("vgg16_bn", 512 * 7 * 7)
    head = official_head(512 * 7 * 7, seed=3)
    head["attention_aggregator.fc1.0.weight"] *= 1e-4  # the features are O(100): O(1) logits
    head["classifier.0.weight"] *= 0.1
    state |= head
    torch.save(state, root / "best.pth")
    slide = sorted(tiny_cohort(root / "cohort", n=1).slides_dir.iterdir())[0]
    extract_features([slide], root / "feats", encoder="vgg16_bn", weights=root / "best.pth",
                     flatten=True, mpp=0.5, patch_size=224, min_tissue=0.0, device="cpu",
                     dtype="float32", progress=False)
    return root, state, backbone, slide


def _official_probs(state, backbone, slide, bag, clinical=None) -> np.ndarray:
    """The official pipeline on the stored patches: backbone(x).flatten() -> head."""
    with open_slide(slide) as s:
        patches = [s.read_region(tuple(int(v) for v in xy), int(bag.attrs["level"]),
                                 (224, 224)) for xy in bag.coords]
    x = torch.stack([IMAGENET(T.functional.to_tensor(p)) for p in patches])
    with torch.inference_mode():
        logits, _ = official_forward(state, backbone(x).flatten(1), clinical)
    return torch.softmax(logits, 1).numpy()[0]


def _invoke(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_imported_checkpoint_predicts_the_official_probabilities(released) -> None:
    root, state, backbone, slide = released
    res = _invoke("paper", "import", root / "best.pth", "--out", root / "run",
                  "--task", "n0_vs_n+")
    assert res.exit_code == 0, res.output
    res = _invoke("predict", root / "run", root / "feats", "--out", root / "pred.csv")
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(root / "pred.csv", dtype={"patient_id": str})
    bag = FeatureStore(root / "feats")[slide.stem]
    want = _official_probs(state, backbone, slide, bag)
    assert 0.02 < want[0] < 0.98  # not saturated: the comparison means something
    got = pred.loc[pred["patient_id"] == slide.stem, ["prob_N0", "prob_N+"]].to_numpy()[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    res = _invoke("heatmap", root / "run", slide, "--features", root / "feats",
                  "--out", root / "heat.png")
    assert res.exit_code == 0, res.output
    assert (root / "heat.png").stat().st_size > 0


def test_features_of_other_weights_are_refused(released, tmp_path) -> None:
    """The run records the checkpoint's sha256: features of the ImageNet or another
    checkpoint's backbone are a mismatch naming the weights (exit 2)."""
    root, state, _, slide = released
    other = dict(state)
    other["classifier.2.bias"] = other["classifier.2.bias"] + 1
    torch.save(other, tmp_path / "other.pth")
    assert _invoke("paper", "import", tmp_path / "other.pth", "--out",
                   tmp_path / "run").exit_code == 0
    res = _invoke("predict", tmp_path / "run", root / "feats", "--out", tmp_path / "p.csv")
    assert res.exit_code == 2 and "weights" in res.output


def test_a_task_of_another_class_count_and_a_clinical_checkpoint_are_refused(
        tmp_path) -> None:
    state = official_head(64, n_classes=2)
    torch.save(state, tmp_path / "two.pth")
    res = _invoke("paper", "import", tmp_path / "two.pth", "--out", tmp_path / "r",
                  "--task", "three_class")
    assert res.exit_code == 2 and "has 2 classes but --task three_class has 3" in res.output
    torch.save(official_head(64, clinical=True), tmp_path / "clin.pth")
    res = _invoke("paper", "import", tmp_path / "clin.pth", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "MILNetWithClinicalData" in res.output
    assert "import it with --clinical" in res.output
    res = _invoke("paper", "import", tmp_path / "two.pth", "--out", tmp_path / "r",
                  "--clinical")
    assert res.exit_code == 2 and "without --clinical" in res.output
    assert not (tmp_path / "r").exists()


def test_a_clinical_checkpoint_predicts_from_the_official_preprocessed_table(
        released, tmp_path) -> None:
    """MILNetWithClinicalData: the run reads preprocessed-type-K.xlsx's five values as they
    are (columns and p_id as the official file has them) and gives the official logits."""
    root, state, backbone, slide = released
    clin_state = {k: v for k, v in state.items() if k.startswith("image_feature_extractor")}
    head = official_head(512 * 7 * 7, clinical=True, seed=4)
    head["attention_aggregator.fc1.0.weight"] *= 1e-4
    head["classifier.0.weight"] *= 0.1
    clin_state |= head
    torch.save(clin_state, tmp_path / "clin.pth")
    res = _invoke("paper", "import", tmp_path / "clin.pth", "--out", tmp_path / "run",
                  "--task", "n0_vs_n+", "--clinical")
    assert res.exit_code == 0, res.output
    values = [1.539847, 0.909377, 0, 0, 1]  # patient 1 of the official preprocessed-type-0
    table = pd.DataFrame([[int(slide.stem), *values], [999, -1.5, 1.5, 1, 1, 1]],
                         columns=["p_id", "age", "tumor_size", "is_er_negative",
                                  "is_pr_negative", "is_her2_negative"])
    table.to_excel(tmp_path / "preprocessed-type-0.xlsx", index=False)
    # Same backbone tensors, another checkpoint file: the features are the same, the
    # recorded weights (the file's sha256) are not, hence the override.
    res = _invoke("predict", tmp_path / "run", root / "feats", "--out", tmp_path / "p.csv",
                  "--clinical", tmp_path / "preprocessed-type-0.xlsx", "--allow-store-mismatch")
    assert res.exit_code == 0, res.output
    pred = pd.read_csv(tmp_path / "p.csv", dtype={"patient_id": str})
    bag = FeatureStore(root / "feats")[slide.stem]
    want = _official_probs(clin_state, backbone, slide, bag, torch.tensor([values],
                                                                          dtype=torch.float32))
    no_clinical = _official_probs(clin_state, backbone, slide, bag,
                                  torch.zeros(1, 5))
    assert abs(want[1] - no_clinical[1]) > 1e-3  # the clinical values matter here
    got = pred.loc[pred["patient_id"] == slide.stem, ["prob_N0", "prob_N+"]].to_numpy()[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    res = _invoke("predict", tmp_path / "run", root / "feats", "--out", tmp_path / "q.csv",
                  "--allow-store-mismatch")
    assert res.exit_code == 2 and "--clinical" in res.output
