"""examples/bcnb/check_data.py on small hand-made BCNB layouts: macOS archive litter, spellings."""

from __future__ import annotations

import pandas as pd
import pytest
from _docs_helpers import ROOT, import_script

check_data = import_script(ROOT / "examples" / "bcnb" / "check_data.py")


def _bcnb(root, statuses=("N0", "N+(1-2)", "N+(\uff1e2)")):
    ids = [str(i + 1) for i in range(len(statuses))]
    root.mkdir()
    pd.DataFrame({"Patient ID": [int(i) for i in ids], "ALN status": list(statuses)}).to_excel(
        root / "patient-clinical-data.xlsx", index=False)
    patches = root / "paper_patches" / "patches"
    for pid in ids:
        (patches / pid).mkdir(parents=True)
        (patches / pid / f"{pid}_0_0_0.jpg").write_bytes(b"\xff\xd8")
    return root, patches


def test_macos_archive_litter_is_ignored(tmp_path):
    root, patches = _bcnb(tmp_path / "BCNB")
    (patches / "__MACOSX" / "1").mkdir(parents=True)  # macOS Archive Utility's resource forks
    (patches / "__MACOSX" / "1" / "._1_0_0_0.jpg").write_bytes(b"\x00\x05")
    (patches / "1" / "._1_0_0_0.jpg").write_bytes(b"\x00\x05")
    (root / "WSIs").mkdir()
    (root / "WSIs" / "1.jpg").write_bytes(b"\xff\xd8")
    (root / "WSIs" / "._1.jpg").write_bytes(b"\x00\x05")
    (root / "WSIs" / "__MACOSX").mkdir()
    layout = check_data.check_layout(root)
    assert layout.patch_patients == ["1", "2", "3"] and layout.n_patches == 3
    assert layout.wsis == ["1"]


def test_full_width_status_is_read_by_the_train_rule(tmp_path):
    layout = check_data.check_layout(_bcnb(tmp_path / "BCNB")[0])
    assert layout.aln_counts == {"N+(1-2)": 1, "N+(>2)": 1, "N0": 1}
    root, _ = _bcnb(tmp_path / "bad", statuses=("N0", "N1"))
    with pytest.raises(check_data.BCNBLayoutError, match=r"'ALN status' has values \['N1'\]"):
        check_data.check_layout(root)
