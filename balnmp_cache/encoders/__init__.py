"""Patch encoders: one registry (`ENCODERS`) of frozen feature extractors, built by name.

`torchvision` registers the CNNs, `timm` adds any timm model as `timm:<name>`; `checkpoint`
loads local weights safely. A new encoder is one `ENCODERS.register` call (or one
`register_torchvision` decorator for a torchvision architecture).
"""

from __future__ import annotations

from balnmp_cache.encoders import timm as _timm  # noqa: F401 - registers the timm: prefix
from balnmp_cache.encoders import torchvision as _torchvision  # noqa: F401 - registers CNNs
from balnmp_cache.encoders.base import (
    ENCODERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Encoder,
    EncoderEntry,
    build_encoder,
    list_encoders,
)
from balnmp_cache.encoders.checkpoint import file_sha256, init_weights, load_checkpoint
from balnmp_cache.encoders.torchvision import register_torchvision
from balnmp_cache.errors import EncoderError

__all__ = [
    "ENCODERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Encoder",
    "EncoderEntry",
    "EncoderError",
    "build_encoder",
    "file_sha256",
    "init_weights",
    "list_encoders",
    "load_checkpoint",
    "register_torchvision",
]
