"""The layout of a released BALNMP model (github.com/bupt-ai-cz/BALNMP), read as a backbone.

The official training script saves the whole `MILNetImageOnly` / `MILNetWithClinicalData`
state dict (`torch.save(model.state_dict(), ...)`, `code/utils/utils.py`). Its backbone is
`image_feature_extractor.extractor`, an `nn.Sequential` of the torchvision model's children
but the last (`code/models/backbones/backbone_builder.py`), so its keys are indexed:

| family | official `image_feature_extractor.extractor.` | torchvision |
| --- | --- | --- |
| VGG, AlexNet | `0.<i>` (then `1` = the adaptive average pool) | `features.<i>` |
| ResNet | `0`, `1`, `4`, `5`, `6`, `7` (`2` ReLU, `3` max pool, `8` pool) | `conv1`, `bn1`, `layer1` ... `layer4` |
| DenseNet | `0.<name>` (`features` only: no final ReLU, no pool) | `features.<name>` |

The MIL head (`attention_aggregator.*`, `classifier.*`) is ignored here (`balnmp-mil paper
import` reads it). GoogLeNet and Inception-v3 come from the repository's own modules and are
not read.
"""

from __future__ import annotations

from balnmp_cache.encoders.layouts import Renames

__all__ = ["OFFICIAL_PREFIX", "official_layout"]

OFFICIAL_PREFIX = "image_feature_extractor.extractor."
_HEAD = ("attention_aggregator.", "classifier.")
_RESNET = (("0.", "conv1."), ("1.", "bn1."), ("4.", "layer1."), ("5.", "layer2."),
           ("6.", "layer3."), ("7.", "layer4."))  # fmt: skip


def official_layout(arch: str) -> Renames | None:
    """The released-BALNMP layout for torchvision architecture `arch` (None: the official
    code has no such backbone)."""
    if arch.startswith(("vgg", "alexnet", "densenet")):
        pairs: tuple[tuple[str, str], ...] = (("0.", "features."),)
    elif arch.startswith("resnet"):
        pairs = _RESNET
    else:
        return None
    return Renames(name="released BALNMP model", marker=OFFICIAL_PREFIX, head=_HEAD,
                   renames=tuple((OFFICIAL_PREFIX + a, b) for a, b in pairs))
