"""Fresh `extract-features` runs, many times over: every one must exit 0 (or, with `--sigterm`,
stop cleanly with 143 on SIGTERM and resume).

A crash that shows in one run of four (the cuCIM race of issue 16) or one of twenty passes a
single `make demo`; this runs the demo's extraction (`make demo`'s options: resnet18, random
weights, 0.5 µm/px, 224 px patches inside the tumour annotations, `--skip-errors`) `--runs`
times, each a new process writing a new `--out`, on a generated cohort (8 slides of the demo's
kind by default, so the whole run takes minutes), and prints one line per run: exit status,
seconds, slides stored. Exits 1 when any run did not exit 0 or did not store every slide.

`--sigterm` checks what SLURM's time limit does to a job (issue 18: one Zarr run of the fault
suite's SIGTERM case once exited -11, SIGSEGV, after printing the right message). Each run
starts a fresh job on a small cohort made slow between slides (3 slides of all-tissue 32 px
patches encoded at 224 px, one per batch, one thread), waits until one slide is published and
another's temp entry (`.<id>.h5.tmp-*`, `.<id>.tmp-*`) exists, sends SIGTERM and requires: exit
status 143, the CLI's "interrupted by SIGTERM" message, no traceback or faulthandler dump
(`PYTHONFAULTHANDLER=1` in the child), every slide published before the signal loadable with
finite features; then the same command without a signal must exit 0 with every slide stored and
no `.tmp-` entry left (the rule a rerun follows: it removes a slide's orphaned temp when it
claims that unfinished slide; anything else it leaves). Temps the signalled job left that the
resume removed are counted in the run's line. A state never reached within `--timeout` is a
failure too.

    python benchmarks/repeat_extract.py                    # 20 runs, CPU
    python benchmarks/repeat_extract.py --runs 20 --device cuda --patients 16
    python benchmarks/repeat_extract.py --sigterm --runs 20 --format both
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import balnmp_cache
from balnmp_cache.errors import BalnmpError
from balnmp_cache.slides.ids import slide_id_from_path
from balnmp_cache.store import FeatureStore
from balnmp_cache.synthetic import make_demo_cohort

# `make demo`'s extraction (with the cohort's `--annotations`).
DEMO_OPTIONS = ("--encoder", "resnet18", "--weights", "none", "--mpp", "0.5",
                "--patch-size", "224", "--skip-errors")  # fmt: skip
# Small slides (1024x768), all tissue: ~100 patches a slide, one per batch at 224 px, so a
# slide takes seconds and the signal lands while the next one is being written.
SIGTERM_COHORT: dict[str, Any] = {"width": 1024, "height": 768, "tumour_patches": (4.0, 6.0), "patch_um": 32.0}
SIGTERM_OPTIONS = ("--encoder", "resnet18", "--weights", "none", "--mpp", "1.0",
                   "--patch-size", "32", "--input-size", "224", "--batch-size", "1")  # fmt: skip
SIGTERM_EXIT = 128 + signal.SIGTERM
SIGTERM_MESSAGE = "interrupted by SIGTERM"  # what `extract-features` prints on SIGTERM
CRASH_MARKS = ("Traceback (most recent call last)", "Fatal Python error", "Segmentation fault")
TEMP_MARK = ".tmp-"


def _command(slides: Path, out: Path, device: str, fmt: str, options: tuple[str, ...],
             annotations: Path | None = None) -> list[str]:  # fmt: skip
    script = Path(sys.executable).parent / "extract-features"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "balnmp_cache.cli"]
    extra = ["--annotations", str(annotations)] if annotations is not None else []
    return [*head, str(slides), "--out", str(out), *extra, *options, "--format", fmt,
            "--device", device, "--no-progress"]  # fmt: skip


def _child_env(**extra: str) -> dict[str, str]:
    """This process's environment, the imported `balnmp_cache` first on the path, a
    faulthandler dump on a crash."""
    root = str(Path(balnmp_cache.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONFAULTHANDLER": "1", **extra}


def _store(work: Path, run: int, fmt: str) -> Path:
    return work / f"features-{fmt}-{run}{'.zarr' if fmt == 'zarr' else ''}"


def _stored(out: Path, fmt: str) -> list[str]:
    """Slides published under `out` (none while it does not exist yet)."""
    try:
        return FeatureStore(out, format=fmt).slide_ids
    except (BalnmpError, OSError):
        return []


def _temps(out: Path) -> list[str]:
    """Every `.tmp-` entry under `out`, relative to it."""
    if not out.is_dir():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob(f"*{TEMP_MARK}*"))


def _exit_text(code: int | None) -> str:
    if code is None:
        return "no exit"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def signal_problems(code: int | None, stderr: str) -> list[str]:
    """What is wrong with how the signalled job ended (empty: it stopped as it should)."""
    problems = [] if code == SIGTERM_EXIT else [f"{_exit_text(code)}, not {SIGTERM_EXIT}"]
    if SIGTERM_MESSAGE not in stderr:
        problems.append(f"no {SIGTERM_MESSAGE!r} message in stderr")
    problems += [f"{mark!r} in stderr" for mark in CRASH_MARKS if mark in stderr]
    return problems


def published_problems(out: Path, fmt: str, published: list[str]) -> list[str]:
    """Slides published before the signal that are gone, unreadable or not finite."""
    problems = []
    for sid in published:
        try:
            with FeatureStore(out, format=fmt) as store:
                features = store[sid].features
        except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
            problems.append(f"slide {sid} published before the signal: {type(exc).__name__}: "
                            f"{exc}")  # fmt: skip
            continue
        if not np.isfinite(features).all():
            problems.append(f"slide {sid} published before the signal has non-finite features")
    return problems


def resume_problems(code: int | None, stored: list[str], expected: list[str],
                    temps: list[str]) -> list[str]:  # fmt: skip
    """What is wrong after the unsignalled rerun of the same command."""
    problems = [] if code == 0 else [f"resume: {_exit_text(code)}, not 0"]
    if stored != expected:
        problems.append(f"resume: {len(stored)}/{len(expected)} slides stored")
    if temps:
        problems.append(f"temps no rerun removes: {', '.join(temps)}")
    return problems


def _writing(out: Path, slide_ids: list[str]) -> list[str]:
    """Slides of `slide_ids` with a temp entry (`.<id>.h5.tmp-*`, `.<id>.tmp-*`) in `out`."""
    names = [p.name for p in out.iterdir()] if out.is_dir() else []
    return [sid for sid in slide_ids
            if any(n.startswith(f".{sid}.") and TEMP_MARK in n[len(sid) + 1:] for n in names)]  # fmt: skip


def _wait_for_window(proc: subprocess.Popen, timeout: float, out: Path, fmt: str,
                     slide_ids: list[str]) -> list[str] | None:  # fmt: skip
    """Poll until a slide is published and another is being written: the published slides,
    or None when the job exited or `timeout` passed first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        published = _stored(out, fmt)
        if published and _writing(out, [s for s in slide_ids if s not in published]):
            return published
        time.sleep(0.02)
    return None


class Child(NamedTuple):
    code: int | None  # None: killed after `timeout` (a hang) or before the window
    stderr: str
    published: list[str] | None  # slides published before the signal; None: no window


def _run_child(cmd: list[str], env: dict[str, str], log: Path, timeout: float,
               window: tuple[Path, str, list[str]] | None = None) -> Child:  # fmt: skip
    """Run `cmd` (stderr to `log`). With `window` (`out`, format, the cohort's slide ids),
    SIGTERM it once a slide is published and the next is being written; a job that never
    gets there is killed."""
    published: list[str] | None = []
    with open(log, "w+", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        try:
            if window is not None:
                published = _wait_for_window(proc, timeout, *window)
                if published is None and proc.poll() is None:
                    raise subprocess.TimeoutExpired(cmd, timeout)
                if published is not None:
                    proc.send_signal(signal.SIGTERM)
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        err.seek(0)
        return Child(code, err.read(), published)


class Verdict(NamedTuple):
    ok: bool
    code: int | None  # the signalled job's exit status
    line: str  # one line for the run
    tail: str  # stderr of what failed


def sigterm_run(cmd: list[str], out: Path, fmt: str, expected: list[str],
                timeout: float) -> Verdict:  # fmt: skip
    """One signalled job (writing `out`) and its resume, judged."""
    env = _child_env(OMP_NUM_THREADS="1")
    log = out.with_name(out.name + ".stderr")
    job = _run_child(cmd, env, log, timeout, (out, fmt, expected))
    if job.published is None:
        why = "exited" if job.code is not None else f"no state within {timeout:.0f} s"
        line = (f"{_exit_text(job.code)}  FAILED: never reached the state (a slide published, "
                f"the next being written): {why}")  # fmt: skip
        return Verdict(False, job.code, line, job.stderr[-3000:])
    problems = signal_problems(job.code, job.stderr)
    problems += published_problems(out, fmt, job.published)
    left = _temps(out)
    again = _run_child(cmd, env, log, timeout)
    problems += resume_problems(again.code, _stored(out, fmt), expected, _temps(out))
    line = (f"{_exit_text(job.code)} after {len(job.published)} slide(s), {len(left)} temp(s) "
            f"left; resume {_exit_text(again.code)}")  # fmt: skip
    if problems:
        tail = job.stderr[-3000:] + again.stderr[-3000:]
        return Verdict(False, job.code, f"{line}  FAILED: {'; '.join(problems)}", tail)
    return Verdict(True, job.code, line, "")


def _formats(choice: str | None, sigterm: bool) -> list[str]:
    choice = choice or ("both" if sigterm else "h5")
    return ["h5", "zarr"] if choice == "both" else [choice]


def _plain(args: argparse.Namespace, work: Path) -> int:
    n = args.patients or 8
    cohort = make_demo_cohort(work / "cohort", n_patients=n, seed=0)
    print(f"cohort: {n} slides in {cohort.slides_dir}; {args.runs} fresh runs on {args.device}")
    bad = total = 0
    for fmt in _formats(args.format, sigterm=False):
        for run in range(args.runs):
            out = _store(work, run, fmt)
            cmd = _command(cohort.slides_dir, out, args.device, fmt, DEMO_OPTIONS,
                           cohort.annotations_dir)  # fmt: skip
            t0 = time.perf_counter()
            code, stderr, _ = _run_child(cmd, _child_env(), work / "stderr.log", args.timeout)
            stored = len(_stored(out, fmt))
            ok = code == 0 and stored == n
            bad, total = bad + (not ok), total + 1
            print(f"{fmt:4s} run {run + 1:2d}: {_exit_text(code)}  "
                  f"{time.perf_counter() - t0:6.1f} s  {stored}/{n} slides"
                  f"{'' if ok else '  FAILED'}", flush=True)  # fmt: skip
            if not ok:
                print(stderr[-2000:], file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)
    print(f"{total - bad} of {total} runs exited 0 with every slide stored")
    return 1 if bad else 0


def _sigterm(args: argparse.Namespace, work: Path) -> int:
    n = args.patients or 3
    cohort = make_demo_cohort(work / "cohort-sigterm", n_patients=n, seed=0, **SIGTERM_COHORT)
    expected = sorted(slide_id_from_path(p) for p in cohort.patients["slide_path"])
    print(f"cohort: {n} slides in {cohort.slides_dir}; {args.runs} SIGTERM runs per format on "
          f"{args.device}")  # fmt: skip
    codes: dict[str, collections.Counter] = {}
    bad = 0
    for fmt in _formats(args.format, sigterm=True):
        codes[fmt] = collections.Counter()
        for run in range(args.runs):
            out = _store(work, run, fmt)
            cmd = _command(cohort.slides_dir, out, args.device, fmt, SIGTERM_OPTIONS)
            t0 = time.perf_counter()
            verdict = sigterm_run(cmd, out, fmt, expected, args.timeout)
            codes[fmt][_exit_text(verdict.code)] += 1
            bad += not verdict.ok
            print(f"{fmt:4s} run {run + 1:2d}: {time.perf_counter() - t0:6.1f} s  {verdict.line}",
                  flush=True)  # fmt: skip
            if not verdict.ok:
                print(verdict.tail, file=sys.stderr)
            shutil.rmtree(out, ignore_errors=True)
            out.with_name(out.name + ".stderr").unlink(missing_ok=True)
    for fmt, counts in codes.items():
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        print(f"{fmt}: {summary} ({sum(counts.values())} runs)")
    total = sum(sum(c.values()) for c in codes.values())
    print(f"{total - bad} of {total} SIGTERM runs passed every check")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--runs", type=int, default=20, help="runs per format")
    ap.add_argument("--patients", type=int, default=None,
                    help="slides in the generated cohort (default 8; 3 with --sigterm)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--format", choices=("h5", "zarr", "both"), default=None,
                    help="store format(s) written (default h5; both with --sigterm)")
    ap.add_argument("--sigterm", action="store_true",
                    help="SIGTERM each job between two slides, check it and resume it")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="seconds allowed per job (and, with --sigterm, to reach the window)")
    ap.add_argument("--work", type=Path, default=None, help="keep the cohort and stores here")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="balnmp-repeat-"))
    try:
        return _sigterm(args, work) if args.sigterm else _plain(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
