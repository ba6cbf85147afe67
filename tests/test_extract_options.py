"""One declaration per option: `ExtractOptions` is the keyword list of `extract_features`, the
option list of `extract-features` and the one table of allowed values; choices follow the
registries."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from balnmp_cache._options import AnyOf, InstanceOf, Interval, OneOf, PathTo
from balnmp_cache.cli import main
from balnmp_cache.encoders import ENCODERS, EncoderEntry, EncoderError
from balnmp_cache.errors import OptionError
from balnmp_cache.extract import ExtractOptions, extract_features
from balnmp_cache.extract.options import PRECISIONS
from balnmp_cache.slides.base import Slide
from balnmp_cache.slides.registry import BACKENDS as SLIDE_BACKENDS
from balnmp_cache.store.backend import BACKENDS as STORE_BACKENDS
from balnmp_cache.store.h5 import H5Backend
from balnmp_cache.tiling.tissue import PRESETS

FIELDS = [f.name for f in dataclasses.fields(ExtractOptions)]


def _help() -> str:
    res = CliRunner().invoke(main, ["--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def _option(name: str):  # noqa: ANN202
    return next(p for p in main.params if p.name == name)


def test_extract_features_keywords_are_the_option_fields() -> None:
    """The DESIGN signature: slides, out, then encoder="resnet50", weights=None, mpp=0.5, ..."""
    params = inspect.signature(extract_features).parameters
    assert list(params) == ["slides", "out", *FIELDS]
    defaults = {n: p.default for n, p in params.items() if n not in ("slides", "out")}
    assert defaults == {f.name: f.default for f in dataclasses.fields(ExtractOptions)}
    assert list(defaults.items())[:8] == [
        ("encoder", "resnet50"), ("weights", None), ("mpp", 0.5), ("patch_size", 256),
        ("format", "h5"), ("device", None), ("batch_size", 256), ("annotations", None),
    ]  # fmt: skip
    with pytest.raises(TypeError, match="unexpected keyword argument 'patchsize'"):
        extract_features("x", "y", patchsize=3)


def test_every_field_is_a_command_line_option_with_the_same_default() -> None:
    names = {p.name for p in main.params} - {"slides", "out", "version", "help",
                                              "list_encoders"}
    assert names == set(FIELDS)
    for f in dataclasses.fields(ExtractOptions):
        # weights None: the encoder's default source (ImageNet for the CNNs)
        assert _option(f.name).default == f.default, f.name


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("mpp", 0, "mpp 0 (--mpp): must be a number > 0"),
        ("mpp", -0.5, "mpp -0.5 (--mpp): must be a number > 0"),
        ("batch_size", 0, "batch_size 0 (--batch-size): must be an integer >= 1"),
        ("batch_size", 2.5, "must be an integer >= 1"),
        ("patch_size", 4, "must be an integer >= 8"),
        ("min_tissue", 1.5, "must be a number in [0, 1]"),
        ("num_workers", -1, "must be an integer >= 0"),
        ("format", "parquet", "unknown format 'parquet' (--format); choose one of h5, zarr"),
        ("precision", "fp8", "choose one of bf16, fp16, fp32"),
        ("tissue", "brain", "choose one of biopsy, resection"),
        ("backend", "pillow", "choose one of auto, cucim, openslide, image, patches"),
        ("dtype", "int8", "choose one of float16, float32"),
        ("skip_errors", "yes", "must be true or false"),
        ("shard", "3/2", "out of range"),
        ("devices", "0,0", "twice"),
        ("annotations", "/no/such/folder", "not a folder of <slide_id>.json files"),
        ("mpp_overrides", 3, "must be a path"),
    ],
)
def test_a_value_outside_its_table_is_refused_when_the_options_are_built(
    field: str, value: object, needle: str
) -> None:
    with pytest.raises(OptionError) as err:
        ExtractOptions(**{field: value})
    assert needle in str(err.value)


def test_encoder_and_weights_are_checked_against_the_registry() -> None:
    with pytest.raises(EncoderError, match="unknown encoder 'resnet5000'.*timm:<model name>"):
        ExtractOptions(encoder="resnet5000")
    with pytest.raises(EncoderError, match="neither 'imagenet', 'none'"):
        ExtractOptions(weights="missing.pt")
    assert ExtractOptions(encoder="timm:vit_small_patch16_224").encoder.startswith("timm:")
    assert ExtractOptions(mpp=None).mpp is None  # Python only: native level-0 resolution
    assert ExtractOptions(mpp_overrides={"a": 0.25}).mpp_overrides == {"a": 0.25}


def test_bad_options_fail_before_any_slide_or_output_is_touched(tmp_path: Path) -> None:
    """`--mpp 0` is a usage error (exit 2), not a per-slide failure (exit 1)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "bad.svs").write_bytes(b"never opened")
    out = tmp_path / "out"
    for extra in (["--mpp", "0"], ["--batch-size", "-3"], ["--shard", "2/2"],
                  ["--precision", "fp8"]):  # fmt: skip
        res = CliRunner().invoke(main, [str(slides), "--out", str(out), *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert not out.exists()
    with pytest.raises(OptionError, match=r"mpp 0 \(--mpp\)"):
        extract_features(slides, out, mpp=0)
    assert not out.exists()


def test_choices_come_from_the_tables() -> None:
    text = _help()
    assert f"[{'|'.join(PRECISIONS)}]" in text
    assert f"[{'|'.join(PRESETS)}]" in text
    assert f"[auto|{'|'.join(SLIDE_BACKENDS.names())}]" in text
    writable = [n for n, cls in STORE_BACKENDS.items() if cls.writable]
    assert writable == ["h5", "zarr"] and "[h5|zarr]" in text  # read-only formats are not


class _DummySlide(Slide):
    backend = "dummy"
    auto = False

    @classmethod
    def can_open(cls, info):  # noqa: ANN001, ANN206
        return "a stand-in"

    @classmethod
    def open(cls, info, mpp):  # noqa: ANN001, ANN206
        raise NotImplementedError

    def _read_level(self, level, x, y, w, h):  # noqa: ANN001, ANN202
        return np.zeros((h, w, 3), np.uint8)


class _DummyStore(H5Backend):
    writable = True


def test_a_newly_registered_plugin_is_a_choice_with_no_other_edit() -> None:
    SLIDE_BACKENDS.register("dummyslides", _DummySlide)
    STORE_BACKENDS.register("dummystore", _DummyStore)
    ENCODERS.register("dummyenc", EncoderEntry("dummyenc", lambda w, s, f: None))  # type: ignore[arg-type, return-value]
    try:
        text = _help()
        assert "|patches|dummyslides]" in text and "[h5|zarr|dummystore]" in text
        opts = ExtractOptions(backend="dummyslides", format="dummystore", encoder="dummyenc")
        assert (opts.backend, opts.format, opts.encoder) == ("dummyslides", "dummystore",
                                                             "dummyenc")  # fmt: skip
        assert _option("backend").type.convert("dummyslides", None, None) == "dummyslides"
    finally:
        SLIDE_BACKENDS.unregister("dummyslides")
        STORE_BACKENDS.unregister("dummystore")
        ENCODERS.unregister("dummyenc")
    assert "dummyslides" not in _help()
    with pytest.raises(OptionError, match="unknown backend 'dummyslides'"):
        ExtractOptions(backend="dummyslides")


def _refusal(constraint, value) -> str | None:  # noqa: ANN001
    """None when `constraint` allows `value`, else its message."""
    try:
        constraint.convert(value, "x", "--x")
    except OptionError as exc:
        return str(exc)
    return None


def test_interval_edges_follow_closed() -> None:
    both, neither = Interval(float, 0, 1), Interval(float, 0, 1, closed="neither")
    assert [_refusal(both, v) is None for v in (0, 0.5, 1, -1e-9, 1.0001)] == [1, 1, 1, 0, 0]
    assert [_refusal(neither, v) is None for v in (0, 0.5, 1)] == [0, 1, 0]
    assert "must be a number >= 0" in _refusal(Interval(float, 0), float("nan"))
    assert "must be an integer >= 1" in _refusal(Interval(int, 1), True)  # a bool is no count
    assert Interval(int).convert(np.int64(3), "x", "--x") == 3
    assert Interval(float).convert(2, "x", "--x") == 2.0 and Interval(int).convert("8", "x",
                                                                                   "--x") == 8


def test_path_and_alternatives(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("slide_id,mpp\n")
    assert _refusal(PathTo("file"), f) is None
    assert _refusal(PathTo("dir"), f).endswith("no such folder")
    assert _refusal(PathTo("dir", exists=False), tmp_path / "new") is None
    assert _refusal(PathTo("dir", exists=False), f).endswith("exists and is not a folder")
    either = AnyOf(PathTo("file"), InstanceOf((dict,), "a dict"))
    assert _refusal(either, {}) is None and _refusal(either, tmp_path / "x").endswith("no such file")
    names = ["a"]
    live = OneOf(lambda: names)
    names.append("b")
    assert _refusal(live, "b") is None and "choose one of a, b" in _refusal(live, "c")


def test_help_builds_its_choices_without_torch_or_matplotlib() -> None:
    """The options and their registry choices are read without loading the encoder stack."""
    code = ("import sys; from click.testing import CliRunner; from balnmp_cache.cli import main;"
            "assert CliRunner().invoke(main, ['--help']).exit_code == 0;"
            "bad = [m for m in ('torch', 'matplotlib', 'balnmp_cache.extract.job') "
            "if m in sys.modules]; assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
