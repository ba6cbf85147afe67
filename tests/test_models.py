"""Every model: packed forward/backward == per-bag reference, attention sums to 1 per bag,
bag order does not matter, clinical fusion, registry round trip."""

from __future__ import annotations

import pytest
import torch

from balnmp_mil.models import MILModel, MILOutput, build_model, list_models
from balnmp_mil.segment import segment_sum

D, C, K = 12, 3, 4
MODELS = list_models()  # every registered model: a new one is tested without editing a list
BUILTIN = ["abmil", "balnmp", "clam_sb", "transmil", "dsmil", "mean", "max"]
SMALL = {"transmil": {"dim": 32, "heads": 4}, "clam_sb": {"k_sample": 2, "subtyping": True}}


def _bags(seed=0, sizes=(5, 1, 9, 3, 17, 2)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), D, generator=g, dtype=torch.float64).float()
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor(sizes), 0).tolist()])
    clinical = torch.randn(len(sizes), K, generator=g)
    labels = torch.arange(len(sizes)) % C
    return x, offsets, clinical, labels


def _model(name, clinical_dim=0, **kw) -> MILModel:
    m = build_model(name, D, C, clinical_dim=clinical_dim, seed=0, **{**SMALL.get(name, {}), **kw})
    # Non-trivial input standardisation, so packed and per-bag paths must both apply it.
    g = torch.Generator().manual_seed(7)
    m.set_input_stats(torch.randn(50, D, generator=g) * 3 + 2)
    return m.eval()


def _coef(n: int, seed: int) -> torch.Tensor:
    """Fixed weights in [-1, 1] so the test loss has O(1) gradients."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _loss(out):
    loss = (out.logits.flatten() * _coef(out.logits.numel(), 1)).sum()
    if out.attention is not None:
        loss = loss + (out.attention * _coef(out.attention.numel(), 2)).sum()
    return loss if out.aux_loss is None else loss + out.aux_loss


def test_registry_lists_every_model():
    assert set(BUILTIN) <= set(MODELS)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", D, C)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("clinical_dim", [0, K])
def test_packed_matches_per_bag_reference(name, clinical_dim):
    x, offsets, clinical, labels = _bags()
    model = _model(name, clinical_dim)
    clin = clinical if clinical_dim else None
    packed = model(x, offsets, clin, labels)
    assert packed.logits.shape == (len(offsets) - 1, C)
    refs = [model.forward_bag(x[a:b], None if clin is None else clin[i], labels[i : i + 1])
            for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))]
    ref_logits = torch.cat([r.logits for r in refs])
    assert (packed.logits - ref_logits).abs().max() <= 1e-5
    if packed.attention is not None:
        ref_att = torch.cat([r.attention for r in refs])
        assert (packed.attention - ref_att).abs().max() <= 1e-5
        sums = segment_sum(packed.attention, offsets)
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
        assert (packed.attention >= 0).all()
    if packed.aux_loss is not None:
        ref_aux = torch.stack([r.aux_loss for r in refs]).mean()
        assert abs(float(packed.aux_loss.detach() - ref_aux.detach())) <= 1e-5
    # backward: gradients of the same scalar function agree
    model.zero_grad()
    total = _loss(packed)
    total.backward()
    g_packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref_total = _loss_from_refs(refs)
    ref_total.backward()
    for n, p in model.named_parameters():
        if n in g_packed:
            assert (g_packed[n] - p.grad).abs().max() <= 1e-5, n
    assert g_packed, "no gradients reached the parameters"


def _loss_from_refs(refs):
    att = None if refs[0].attention is None else torch.cat([r.attention for r in refs])
    aux = None if refs[0].aux_loss is None else torch.stack([r.aux_loss for r in refs]).mean()
    return _loss(MILOutput(torch.cat([r.logits for r in refs]), att, aux))


@pytest.mark.parametrize("name", MODELS)
def test_bag_order_does_not_matter(name):
    x, offsets, clinical, _ = _bags(seed=1)
    model = _model(name)
    out = model(x, offsets).logits
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    bags = [x[offsets[i] : offsets[i + 1]] for i in perm.tolist()]
    sizes = torch.tensor([len(b) for b in bags])
    offs2 = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes, 0)])
    out2 = model(torch.cat(bags), offs2).logits
    assert (out[perm] - out2).abs().max() <= 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_config_rebuilds_same_architecture(name):
    model = _model(name, K)
    clone = build_model(**model.config)
    clone.load_state_dict(model.state_dict())
    x, offsets, clinical, _ = _bags()
    assert torch.equal(clone.eval()(x, offsets, clinical).logits, model(x, offsets, clinical).logits)


def test_clinical_required_when_configured():
    x, offsets, _, _ = _bags()
    with pytest.raises(ValueError, match="clinical_dim=4"):
        _model("balnmp", K)(x, offsets)
    with pytest.raises(ValueError, match="expects 4"):
        _model("abmil", K)(x, offsets, torch.zeros(6, 2))


def test_abmil_gated_and_plain_differ_and_softmax_is_stable():
    gated, plain = _model("abmil", gated=True), _model("abmil", gated=False)
    assert plain.scorer.u is None and gated.scorer.u is not None
    x, offsets, _, _ = _bags()
    out = gated(x * 1e4, offsets)  # huge scores must not overflow
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.attention).all()


def test_segment_ops_on_empty_bags_ties_and_ranks():
    from balnmp_mil.segment import (
        gather_ranges,
        segment_argmax,
        segment_max,
        segment_rank,
        segment_softmax,
    )

    offsets = torch.tensor([0, 3, 3, 5])  # bag 1 is empty
    s = torch.tensor([1.0, 3.0, 3.0, -2.0, 1000.0])
    a = segment_softmax(s, offsets)
    assert torch.allclose(segment_sum(a, offsets), torch.tensor([1.0, 0.0, 1.0]))
    assert segment_max(s, offsets).tolist() == [3.0, 0.0, 1000.0]
    assert segment_argmax(s, offsets).tolist() == [1, 0, 4]  # first of the tied maxima
    assert segment_rank(s, offsets).tolist() == [2, 0, 1, 1, 0]
    assert gather_ranges(torch.tensor([5, 0]), torch.tensor([2, 3])).tolist() == [5, 6, 0, 1, 2]


def test_dropout_keeps_expected_fraction_and_mean_and_reproduces():
    from balnmp_mil.models import Dropout

    x = torch.ones(400, 1000)
    for p in (0.1, 0.25, 0.5):
        d = Dropout(p).train()
        torch.manual_seed(0)
        y = d(x)
        kept = (y != 0).float().mean().item()
        assert abs(kept - (1 - p)) < 0.005, (p, kept)  # 400k draws: sd ~ 0.0008
        assert abs(y.mean().item() - 1.0) < 0.01  # inverted dropout keeps the expectation
        torch.manual_seed(0)
        assert torch.equal(d(x), y)  # seeded: the same mask again
        assert not torch.equal(d(x), y)  # the stream moves on
    # Each of the four 16-bit lanes of a draw is used: no lane is stuck kept or dropped.
    torch.manual_seed(1)
    lanes = (Dropout(0.5).train()(torch.ones(4 * 50_000)) != 0).float().view(-1, 4).mean(0)
    assert torch.all((lanes - 0.5).abs() < 0.01), lanes
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_dropout_gradient_is_the_scaled_mask():
    from balnmp_mil.models import Dropout

    x = torch.randn(37, 11, requires_grad=True)
    torch.manual_seed(3)
    y = Dropout(0.3).train()(x)
    y.sum().backward()
    mask = (y != 0).float()
    assert torch.allclose(x.grad, mask * (65536 / (65536 - round(0.3 * 65536))))
    assert torch.allclose(y, x.detach() * x.grad)


def test_input_stats_chunked_merge_matches_float64_reference():
    # Large offsets, small spreads, float16 storage, a row count that is not a multiple of the
    # chunk, and a row selection: all must give the float64 mean/std of the chosen rows.
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(1003, D, generator=g, dtype=torch.float64) * 0.05 + 40).half()
    rows = torch.randperm(1003, generator=g)[:517]
    ref = x.double()
    m = build_model("abmil", D, C, seed=0)
    m.set_input_stats(x, chunk=64)
    assert torch.allclose(m.input_mean.double(), ref.mean(0), rtol=0, atol=1e-5)
    assert torch.allclose(m.input_std.double(), ref.std(0, correction=0), rtol=1e-4, atol=0)
    m.set_input_stats(x, rows, chunk=100)
    assert torch.allclose(m.input_mean.double(), ref[rows].mean(0), rtol=0, atol=1e-5)
    assert torch.allclose(m.input_std.double(), ref[rows].std(0, correction=0), rtol=1e-4,
                          atol=0)
    with pytest.raises(ValueError, match="at least one"):
        m.set_input_stats(x[:0])
