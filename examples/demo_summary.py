"""Print what `make demo` produced: the test AUC with its CI and where everything is.

    python examples/demo_summary.py demo

Exit status 1 when a stage left nothing behind (the message names the missing file).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summarise(root: Path) -> str:
    """Build the summary text from `<root>/cohort`, `<root>/features` and `<root>/run`."""
    manifest = root / "features" / "manifest.csv"
    metrics_path = root / "run" / "metrics.json"
    for path in (root / "cohort" / "clinical.csv", manifest, metrics_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: did every stage of `make demo` run?")
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    done = [r for r in rows if r["status"] in ("done", "skipped")]
    n_patches = sum(int(r["n_patches"] or 0) for r in done)
    failed = [r["id"] for r in rows if r["status"] == "failed"]
    metrics = json.loads(metrics_path.read_text())
    test = metrics["test"]
    lo, hi = test["auc_ci"]
    lines = [
        "",
        "== balnmp demo ==",
        f"slides:    {len(rows)} in {root / 'cohort' / 'slides'}"
        + (f" ({len(failed)} failed: {', '.join(failed)})" if failed else ""),
        f"features:  {n_patches} patch embeddings in {root / 'features'} (one .h5 per slide)",
        f"model:     {metrics.get('model', '?')} on task {metrics.get('task', '?')}, "
        f"run directory {root / 'run'}",
        f"test AUC:  {_fmt(test['auc'])} [95% CI {_fmt(lo)}, {_fmt(hi)}] "
        f"on {test['n']} patients ({test['n_pos']} N+)",
        f"report:    {root / 'run' / 'report.md'}; ROC curve {root / 'run' / 'roc.png'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "demo")
    try:
        print(summarise(root))
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
