"""Where µm/px comes from, and which values are never trusted."""

from __future__ import annotations

import numpy as np
import pytest
from _slide_helpers import SLIDE_BACKENDS, pattern, require_backend, write_tiff
from PIL import Image

from balnmp_cache.slides import open_slide
from balnmp_cache.slides.mpp import (
    aperio_mpp,
    load_mpp_overrides,
    mpp_from_properties,
    philips_mpp,
    resolution_mpp,
)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return pattern(64, 96, seed=9)


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_aperio_mpp_not_readers_placeholder(tmp_path, image, backend):
    """cuCIM reports spacing 1.0 for this file; the Aperio MPP field wins."""
    path = write_tiff(tmp_path / "a.svs", image, "jpeg", svs=True, mpp=0.2527, levels=2)
    require_backend(path, backend)
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp == pytest.approx(0.2527)
        assert slide.level_mpp(1) == pytest.approx(0.5054)


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_tiff_resolution_tags(tmp_path, image, backend):
    path = write_tiff(tmp_path / "r.tif", image, "lzw", mpp=0.46, levels=2)
    require_backend(path, backend)
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp == pytest.approx(0.46)


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_unknown_resolution_is_none(tmp_path, image, backend):
    path = write_tiff(tmp_path / "n.tif", image, "lzw", mpp=None, levels=2)
    require_backend(path, backend)
    with open_slide(path, backend=backend) as slide:
        assert slide.mpp is None and slide.level_mpp(1) is None


def test_explicit_and_override_win(tmp_path, image):
    path = write_tiff(tmp_path / "slide 7.svs", image, "lzw", svs=True, mpp=0.25, levels=2)
    csv = tmp_path / "mpp.csv"
    csv.write_text("Slide_ID,MPP\nslide 7,0.5\nother,0.3\n")
    assert load_mpp_overrides(csv) == {"slide 7": 0.5, "other": 0.3}
    with open_slide(path, mpp_overrides=csv) as slide:
        assert slide.mpp == 0.5
    with open_slide(path, mpp_overrides={"slide 7.svs": 0.4}) as slide:  # file name works too
        assert slide.mpp == 0.4
    with open_slide(path, mpp=0.9, mpp_overrides=csv) as slide:
        assert slide.mpp == 0.9
    with open_slide(path, mpp_overrides={"other": 0.3}) as slide:
        assert slide.mpp == pytest.approx(0.25)
    with pytest.raises(ValueError, match="positive"):
        open_slide(path, mpp=-1)


def test_override_csv_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,mpp\na,0.5\nb,zero\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 3.*'b'"):
        load_mpp_overrides(bad)
    cols = tmp_path / "cols.csv"
    cols.write_text("id,resolution\na,0.5\n")
    with pytest.raises(ValueError, match="slide_id"):
        load_mpp_overrides(cols)
    dup = tmp_path / "dup.csv"
    dup.write_text("slide_id,mpp\na,0.5\na,0.25\n")
    with pytest.raises(ValueError, match="twice"):
        load_mpp_overrides(dup)


def test_jpeg_dpi_placeholder_ignored(tmp_path, image):
    path = tmp_path / "scan.jpg"
    Image.fromarray(image).save(path, dpi=(72, 72))
    with open_slide(path) as slide:
        assert slide.mpp is None  # 72 dpi = 353 µm/px: an editor default, not a scanner
    Image.fromarray(image).save(path, dpi=(50800, 50800))  # 0.5 µm/px
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5, rel=1e-3)


def test_parsers():
    assert aperio_mpp("Aperio Image Library v12\r\n100x100|AppMag = 40|MPP = 0.2498|x") == 0.2498
    assert aperio_mpp("Aperio Image Library v12|AppMag = 40") is None
    assert aperio_mpp("MPP = 0.25") is None  # not an Aperio description
    assert resolution_mpp((20000.0, 20000.0), 3) == pytest.approx(0.5)
    assert resolution_mpp((50800.0, 50800.0), 2) == pytest.approx(0.5)
    assert resolution_mpp((1.0, 1.0), 3) is None  # 1 px/cm placeholder
    assert resolution_mpp((20000.0, 20000.0), 1) is None  # no unit
    assert mpp_from_properties({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.27"}) == 0.26
    assert mpp_from_properties({"openslide.mpp-x": "1.0e6"}) is None
    assert mpp_from_properties({"dicom.PixelSpacing": "[0.00025, 0.00025]"}) == 0.25
    assert mpp_from_properties(
        {"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}
    ) == pytest.approx(0.25)
    assert mpp_from_properties({"tiff.XResolution": "40000"}) is None
    assert mpp_from_properties({}) is None


def test_philips_pixel_spacing(tmp_path, image):
    xml = (
        '<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
        '<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" '
        'PMSVR="IDoubleArray">&quot;0.00025&quot; &quot;0.00027&quot;</Attribute>'
        '<Attribute Name="DICOM_PIXEL_SPACING" PMSVR="IDoubleArray">&quot;0.0005&quot; '
        '&quot;0.0005&quot;</Attribute></DataObject>'
    )
    assert philips_mpp(xml) == pytest.approx(0.26)
    assert philips_mpp("<DataObject/>") is None
    path = write_tiff(tmp_path / "p.tif", image, "jpeg", mpp=None, levels=2, description=xml)
    with open_slide(path, backend="cucim") as slide:
        assert slide.mpp == pytest.approx(0.26)
