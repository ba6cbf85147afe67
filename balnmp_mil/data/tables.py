"""Reading one table from a file (CSV, TSV or XLSX): the labels and clinical tables.

Every way a file can fail to be one table is a `LabelError` naming the file and what to do:
a folder, an empty file, a header without rows, text that is not UTF-8 (a UTF-8 byte-order
mark is fine), a workbook named `.csv`, a damaged workbook, or a workbook with several sheets
that hold data (which one is meant is not guessed; empty sheets beside one are ignored).
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import pandas as pd

from balnmp_mil.errors import LabelError

__all__ = ["EXCEL_SUFFIXES", "TABLE_SUFFIXES", "read_table"]

EXCEL_SUFFIXES = (".xlsx", ".xlsm", ".xls")
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", *EXCEL_SUFFIXES)
ZIP_MAGIC = b"PK\x03\x04"  # an XLSX workbook is a zip archive


def read_table(path: str | os.PathLike[str], what: str = "table") -> pd.DataFrame:
    """The one table in a CSV/TSV/XLSX file; `what` names it in errors ("labels file")."""
    path = Path(path)
    if path.is_dir():
        raise LabelError(f"{what} {path} is a folder; pass a CSV or XLSX file")
    if not path.is_file():
        raise LabelError(f"{what} {path} does not exist; pass a CSV or XLSX file")
    if path.stat().st_size == 0:
        raise LabelError(f"{what} {path} is empty; it needs a header row (patient_id, ...) "
                         "and one row per patient")
    if path.suffix.lower() in EXCEL_SUFFIXES:
        frame = _read_workbook(path, what)
    else:
        frame = _read_text(path, what)
    if frame.empty:
        raise LabelError(f"{what} {path} has no rows (columns {list(map(str, frame.columns))}, "
                         "nothing below them); add one row per patient")
    return frame


def _read_text(path: Path, what: str) -> pd.DataFrame:
    data = path.read_bytes()
    if data.startswith(ZIP_MAGIC):
        raise LabelError(f"{what} {path} is an Excel workbook (a zip file) named "
                         f"{path.suffix or 'without a suffix'}; rename it to .xlsx")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise LabelError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
            "save it as UTF-8 (in Excel: Save As 'CSV UTF-8'), or as an XLSX workbook"
        ) from exc
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else None
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, engine="python")
    except (ValueError, csv.Error) as exc:  # pandas' ParserError and EmptyDataError included
        raise LabelError(f"cannot read {what} {path} as CSV ({exc}); expected comma-, "
                         "semicolon- or tab-separated columns with one header row") from exc


def _read_workbook(path: Path, what: str) -> pd.DataFrame:
    try:
        sheets = pd.read_excel(path, sheet_name=None)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise LabelError(f"cannot read {what} {path} as an Excel workbook ({exc}); save it "
                         "again from Excel, or as CSV") from exc
    full = {name: frame for name, frame in sheets.items()
            if not (frame.empty and len(frame.columns) == 0)}
    if len(full) > 1:
        names = ", ".join(repr(n) for n in full)
        raise LabelError(f"{what} {path} has {len(full)} sheets with data ({names}); one "
                         "file holds one table here: save the sheet you mean as its own XLSX "
                         "or CSV file and pass that")
    return next(iter(full.values())) if full else next(iter(sheets.values()))
