"""The `balnmp` model is the paper's head: official-format weights give the official logits
(against a re-statement of `code/models/attention_aggregator.py` and `mil_net.py` written
here), in the official module order, and old `balnmp` runs still rebuild their own head."""

from __future__ import annotations

import json

import pytest
import torch
from _paper_helpers import official_forward, official_head

from balnmp_mil.models import build_model
from balnmp_mil.paper import head_from_checkpoint
from balnmp_mil.training import FitConfig

D, N = 40, 7


@pytest.mark.parametrize("clinical", [False, True])
def test_official_weights_give_the_official_logits(clinical: bool) -> None:
    state = official_head(D, n_classes=3, clinical=clinical)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, D, generator=g) * 2 + 1
    c = torch.randn(5, generator=g) if clinical else None
    model = head_from_checkpoint(state)
    assert model.config["name"] == "balnmp" and model.clinical_dim == (5 if clinical else 0)
    want, want_att = official_forward(state, x, c)
    with torch.no_grad():
        out = model.forward_bag(x, c)
        packed = model(x, torch.tensor([0, N]), None if c is None else c.reshape(1, -1))
    torch.testing.assert_close(out.logits, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.attention, want_att, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(packed.logits, want, rtol=1e-5, atol=1e-5)


def test_head_defaults_are_the_official_modules_in_their_order() -> None:
    model = build_model("balnmp", D, 2, clinical_dim=5)
    kinds = lambda seq: [(type(m).__name__, getattr(m, "p", None)) for m in seq]  # noqa: E731
    assert kinds(model.embed) == [("Linear", None), ("Dropout", 0.5), ("ReLU", None)]
    assert kinds(model.scorer.net) == [("Linear", None), ("Dropout", 0.5), ("Tanh", None),
                                       ("Linear", None), ("Dropout", 0.5)]
    assert model.scorer.net[0].out_features == 1
    assert kinds(model.head.net) == [("Linear", None), ("ReLU", None), ("Dropout", 0.0),
                                     ("Linear", None)]
    assert model.head.net[0].in_features == 256 + 5 * 10
    # Dropout acts on the attention logits too: in training mode they vary between calls.
    x = torch.randn(N, D)
    model.train()
    draws = {tuple(model.forward_bag(x, torch.zeros(5)).attention.detach().tolist())
             for _ in range(8)}
    assert len(draws) > 1


def test_balnmp_takes_raw_features_unless_asked() -> None:
    assert FitConfig().standardizes(build_model("balnmp", D, 2)) is False
    assert FitConfig().standardizes(build_model("abmil", D, 2)) is True
    assert FitConfig(standardize=True).standardizes(build_model("balnmp", D, 2)) is True


def test_a_checkpoint_without_the_head_is_refused_naming_the_keys() -> None:
    state = official_head(D)
    del state["classifier.2.weight"]
    with pytest.raises(ValueError, match="not a released BALNMP model.*classifier.2.weight"):
        head_from_checkpoint(state)


def test_old_balnmp_runs_rebuild_their_own_head(tmp_path) -> None:
    """A model.json written by balnmp 0.1 for `balnmp` (dropout 0.25, attention width 128)
    loads into `balnmp_v0`, the architecture it was trained as, with its weights."""
    from balnmp_mil.workflow import rundir

    old = build_model("balnmp_v0", D, 2, clinical_dim=3, seed=0)
    rundir.save_model(tmp_path, old)
    saved = json.loads((tmp_path / "model.json").read_text())
    saved["name"] = "balnmp"  # what 0.1 wrote
    (tmp_path / "model.json").write_text(json.dumps(saved))
    loaded = rundir.load_model(tmp_path)
    assert loaded.config["name"] == "balnmp_v0"
    x, c = torch.randn(N, D), torch.randn(3)
    with torch.no_grad():
        assert torch.equal(loaded.forward_bag(x, c).logits, old.eval().forward_bag(x, c).logits)
