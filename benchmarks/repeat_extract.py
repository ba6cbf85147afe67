"""Fresh `extract-features` runs on the demo cohort, many times over: every one must exit 0.

A crash that shows in one run of four (the cuCIM race of issue 16) or one of twenty passes a
single `make demo`; this runs the demo's extraction (`make demo`'s options: resnet18, random
weights, 0.5 µm/px, 224 px patches inside the tumour annotations, `--skip-errors`) `--runs`
times, each a new process writing a new `--out`, on a generated cohort (8 slides of the demo's
kind by default, so the whole run takes minutes), and prints one line per run: exit status,
seconds, slides stored. Exits 1 when any run did not exit 0 or did not store every slide.

    python benchmarks/repeat_extract.py                    # 20 runs, CPU
    python benchmarks/repeat_extract.py --runs 20 --device cuda --patients 16
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from balnmp_cache.store import FeatureStore
from balnmp_cache.synthetic import make_demo_cohort


def _command(slides: Path, annotations: Path, out: Path, device: str) -> list[str]:
    script = Path(sys.executable).parent / "extract-features"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "balnmp_cache.cli"]
    return [*head, str(slides), "--out", str(out), "--annotations", str(annotations),
            "--encoder", "resnet18", "--weights", "none", "--mpp", "0.5", "--patch-size", "224",
            "--device", device, "--skip-errors", "--no-progress"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--patients", type=int, default=8, help="slides in the generated cohort")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per run")
    ap.add_argument("--work", type=Path, default=None, help="keep the cohort and stores here")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="balnmp-repeat-"))
    cohort = make_demo_cohort(work / "cohort", n_patients=args.patients, seed=0)
    print(f"cohort: {args.patients} slides in {cohort.slides_dir}; {args.runs} fresh runs on "
          f"{args.device}")  # fmt: skip
    bad = 0
    for run in range(args.runs):
        out = work / f"features-{run}"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(_command(cohort.slides_dir, cohort.annotations_dir, out,
                                           args.device),
                                  capture_output=True, text=True, timeout=args.timeout)  # fmt: skip
            code, tail = proc.returncode, proc.stderr[-2000:]
        except subprocess.TimeoutExpired:
            code, tail = None, f"no exit after {args.timeout:.0f} s (a hang)"
        stored = len(FeatureStore(out).slide_ids) if out.is_dir() else 0
        ok = code == 0 and stored == args.patients
        bad += not ok
        print(f"run {run + 1:2d}: exit {code}  {time.perf_counter() - t0:6.1f} s  "
              f"{stored}/{args.patients} slides{'' if ok else '  FAILED'}", flush=True)
        if not ok:
            print(tail, file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
    print(f"{args.runs - bad} of {args.runs} runs exited 0 with every slide stored")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
