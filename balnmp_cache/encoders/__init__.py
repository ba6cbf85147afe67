"""Patch encoders: one registry (`ENCODERS`) of frozen feature extractors, built by name.

`torchvision` registers the CNNs (and reads released BALNMP models, `official`), `zoo` the
pathology foundation models (`foundation` builds them; `ctranspath` adds its Swin), `timm`
any timm model as `timm:<name>`; `checkpoint` loads local weights safely, in the layouts of
`layouts` and `hf_layouts`; `hub` finds weights in the Hugging Face cache. A new encoder is
one `ENCODERS.register` call (or one `register_torchvision` decorator, or one `Preset`).
"""

from __future__ import annotations

from balnmp_cache.encoders import ctranspath as _ctranspath  # noqa: F401 - registers ctranspath
from balnmp_cache.encoders import timm as _timm  # noqa: F401 - registers the timm: prefix
from balnmp_cache.encoders import torchvision as _torchvision  # noqa: F401 - registers CNNs
from balnmp_cache.encoders import zoo as _zoo  # noqa: F401 - registers the foundation models
from balnmp_cache.encoders.base import (
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderCard,
    EncoderEntry,
    build_encoder,
    default_weights,
    list_encoders,
)
from balnmp_cache.encoders.checkpoint import (
    file_sha256,
    init_weights,
    load_checkpoint,
    read_state_dict,
)
from balnmp_cache.encoders.foundation import Preset, register_preset
from balnmp_cache.encoders.listing import encoder_rows, format_encoder_table
from balnmp_cache.encoders.preprocess import Preprocess
from balnmp_cache.encoders.torchvision import register_torchvision
from balnmp_cache.errors import EncoderError

__all__ = [
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Encoder",
    "EncoderCard",
    "EncoderEntry",
    "EncoderError",
    "Preprocess",
    "Preset",
    "build_encoder",
    "default_weights",
    "encoder_rows",
    "file_sha256",
    "format_encoder_table",
    "init_weights",
    "list_encoders",
    "load_checkpoint",
    "read_state_dict",
    "register_preset",
    "register_torchvision",
]
