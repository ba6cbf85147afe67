"""Collect the recipe's run directories into a table laid out like Table 2 of Xu et al. (2021).

    python examples/bcnb/table2.py OUT/runs [--out OUT/table2.md]

Reads `<runs>/<task>/<setting>/metrics.json` (written by `balnmp-mil train`) and prints one
Markdown table: per experiment and model, AUC [95 % CI], ACC, SENS, SPEC, PPV and NPV on the
training, validation and test patients (at the 0.5 threshold, as `metrics.json` stores them at
top level), next to the test AUC the paper published. Exit status 2 when no run is found.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

# (task, --task value, title in the paper)
EXPERIMENTS: tuple[tuple[str, str], ...] = (
    ("n0_vs_n+", "N0 vs N+"),
    ("n12_vs_n3", "N+(1-2) vs N+(>2)"),
    ("three_class", "N0 vs N+(1-2) vs N+(>2)"),
    ("n0_vs_n12", "N0 vs N+(1-2)"),
    ("n0_vs_n3", "N0 vs N+(>2)"),
)
# setting directory name -> the paper's model name
SETTINGS: tuple[tuple[str, str], ...] = (
    ("clinical", "Clinical data only"),
    ("image", "DL-CNB"),
    ("image+clinical", "DL-CNB+C"),
)
SPLITS: tuple[tuple[str, str], ...] = (("train", "Training"), ("val", "Validation"),
                                       ("test", "Test"))
SEE_PAPER = "see paper"
# Published test-cohort AUCs (Xu et al. 2021, Table 2, as listed in the BALNMP repository).
# The N+(1-2) vs N+(>2) and three-class rows are not transcribed here: read them in the paper.
PAPER_TEST_AUC: dict[tuple[str, str], str] = {
    ("n0_vs_n+", "clinical"): "0.613",
    ("n0_vs_n+", "image"): "0.816 [0.758, 0.865]",
    ("n0_vs_n+", "image+clinical"): "0.831 [0.775, 0.878]",
    ("n0_vs_n12", "clinical"): "0.627",
    ("n0_vs_n12", "image"): "0.845",
    ("n0_vs_n12", "image+clinical"): "0.878",
    ("n0_vs_n3", "clinical"): "0.629",
    ("n0_vs_n3", "image"): "0.837",
    ("n0_vs_n3", "image+clinical"): "0.838",
}
COLUMNS = ("Experiment", "Model", "Cohort", "AUC [95% CI]", "ACC", "SENS", "SPEC", "PPV", "NPV",
           "Paper test AUC")


@dataclass
class Row:
    """One line of the table (one experiment, model and patient split)."""

    experiment: str
    model: str
    split: str
    metrics: dict
    paper: str

    def cells(self) -> list[str]:
        m = self.metrics
        ci = m.get("auc_ci") or (None, None)
        auc = f"{_num(m.get('auc'))} [{_num(ci[0])}, {_num(ci[1])}]"
        return [self.experiment, self.model, self.split, auc,
                *(_num(m.get(k)) for k in ("accuracy", "sensitivity", "specificity", "ppv",
                                           "npv")),
                self.paper]


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def collect(runs: str | Path) -> list[Row]:
    """Rows for every `<runs>/<task>/<setting>/metrics.json` found, in the paper's order."""
    runs = Path(runs)
    rows: list[Row] = []
    for task, title in EXPERIMENTS:
        for setting, model in SETTINGS:
            path = runs / task / setting / "metrics.json"
            if not path.is_file():
                continue
            try:
                metrics = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc}); rerun that experiment") from exc
            paper = PAPER_TEST_AUC.get((task, setting), SEE_PAPER)
            for split, split_title in SPLITS:
                if split in metrics:
                    rows.append(Row(title, model, split_title, metrics[split],
                                    paper if split == "test" else ""))
    return rows


def markdown(rows: list[Row]) -> str:
    """The Markdown table (experiment and model are written once per block)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    previous: tuple[str, str] | None = None
    for row in rows:
        cells = row.cells()
        if (row.experiment, row.model) == previous:
            cells[0] = cells[1] = ""
        previous = (row.experiment, row.model)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Table-2-style summary of the BCNB runs.")
    parser.add_argument("runs", help="folder holding <task>/<setting>/metrics.json")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    rows = collect(args.runs)
    if not rows:
        print(f"error: no <task>/<setting>/metrics.json under {args.runs}; run "
              "examples/bcnb/run_recipe.py first", file=sys.stderr)
        return 2
    table = markdown(rows)
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
