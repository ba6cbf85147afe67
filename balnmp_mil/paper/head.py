"""A released BALNMP model's MIL head as our `balnmp` model (`head_from_checkpoint`).

The official training script saves the whole `MILNetImageOnly` / `MILNetWithClinicalData`
state dict (`code/models/mil_net.py`): the fine-tuned backbone under
`image_feature_extractor.extractor.*` (read by `extract-features --weights CHECKPOINT`,
`balnmp_cache/encoders/official.py`) and the head under `attention_aggregator.*` and
`classifier.*`, read here. The head's shapes say everything about it: the input width (the
backbone's flattened map), the attention width (1), the classes, and whether the classifier
takes the clinical vector tiled `clinical_repeat` (10) times.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from balnmp_mil.errors import ModelError
from balnmp_mil.models import MILModel, build_model

__all__ = ["HEAD_KEYS", "head_from_checkpoint", "head_state", "read_checkpoint", "weights_id"]

# Official key (without `.weight` / `.bias`) -> our `balnmp` module.
HEAD_KEYS = {
    "attention_aggregator.fc1.0": "embed.0",
    "attention_aggregator.attention.0": "scorer.net.0",
    "attention_aggregator.attention.3": "scorer.net.3",
    "classifier.0": "head.net.0",
    "classifier.2": "head.net.3",
}


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint file, read as extraction reads it (`weights_only`,
    `.safetensors` too, "module." prefixes stripped)."""
    from balnmp_cache.encoders.checkpoint import read_state_dict  # the one checkpoint reader

    return read_state_dict(path)


def weights_id(path: str | Path) -> str:
    """The `weights` attribute extraction records for this checkpoint: "sha256:<hex>"."""
    from balnmp_cache.encoders.checkpoint import file_sha256

    return f"sha256:{file_sha256(path)}"


def _strip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def head_state(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The head's tensors renamed to our `balnmp` modules; a checkpoint without the whole
    head is a `ModelError` naming the keys it lacks."""
    state = _strip(state)
    want = [f"{k}.{p}" for k in HEAD_KEYS for p in ("weight", "bias")]
    missing = [k for k in want if k not in state]
    if missing:
        raise ModelError(f"{source} is not a released BALNMP model (MILNetImageOnly / "
                         f"MILNetWithClinicalData state dict): it lacks {', '.join(missing)}")
    return {f"{HEAD_KEYS[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": state[k].float()
            for k in want}


def head_from_checkpoint(checkpoint: str | Path | Mapping[str, torch.Tensor],
                         clinical_repeat: int = 10) -> MILModel:
    """The head of a released BALNMP model (a checkpoint file or its state dict) as a
    `balnmp` model in eval mode: `forward_bag(features, clinical)` on the flattened backbone
    features of one bag returns the official logits (`clinical`: the K values the official
    code reads from `preprocessed-type-K.xlsx`)."""
    is_file = isinstance(checkpoint, (str, Path))
    source = f"checkpoint {checkpoint}" if is_file else "the state dict"
    raw = read_checkpoint(checkpoint) if is_file else checkpoint  # type: ignore[arg-type]
    state = head_state(raw, source)  # type: ignore[arg-type]
    embed_dim, in_dim = state["embed.0.weight"].shape
    mlp_dim, fused = state["head.net.0.weight"].shape
    extra = fused - embed_dim
    if extra < 0 or extra % clinical_repeat:
        raise ModelError(f"{source}: the classifier takes {fused} values, not the {embed_dim} "
                         f"pooled ones plus the clinical vector tiled {clinical_repeat} times")
    model = build_model(
        "balnmp", in_dim=int(in_dim), n_classes=int(state["head.net.3.weight"].shape[0]),
        clinical_dim=extra // clinical_repeat, embed_dim=int(embed_dim),
        attention_dim=int(state["scorer.net.0.weight"].shape[0]), mlp_dim=int(mlp_dim),
        clinical_repeat=clinical_repeat)
    try:
        model.load_state_dict({**model.state_dict(), **state}, strict=True)
    except RuntimeError as exc:  # shapes that do not fit together
        raise ModelError(f"{source}: the head's shapes do not fit together "
                         f"({' '.join(str(exc).split())[:300]})") from exc
    return model.eval()
