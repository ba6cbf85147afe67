"""Every shell command in README.md and docs/*.md runs on the tiny demo cohort.

Commands come from fenced ```bash / sh / shell / console blocks (a console block: only the
`$ ` lines). They run in order, in one working directory holding a copy of the session's tiny
`demo/` (cohort + features) and links to the repo's `examples/`, `docs/`, `benchmarks/`, so a
doc that says `balnmp-mil train demo/features ...` runs exactly that. A command that cannot run
here is skipped ONLY through ALLOWED below, each with its reason; a new command that fails (or
an untagged block that looks like a command) fails this test, naming file and line.
examples/bcnb/README.md is covered by tests/test_bcnb_recipe.py: its ```bash stand-in block runs
there, and run_recipe.py runs the command lines shown on the real BCNB paths (```text).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _docs_helpers import ROOT, doc_commands, run_command, workdir_with_demo

# Commands that are documented but not run here: regex (matched at the start) -> why.
ALLOWED: dict[str, str] = {
    # `make demo` runs the full 60-patient pipeline (minutes); its stages are the same
    # extract-features / balnmp-mil commands this test runs on the tiny cohort.
    r"make demo": "the full-size demo; its commands are exercised individually",
    # `make test` is the test suite this test belongs to.
    r"make test": "recursion: this is the test suite",
    # Creating/installing an environment needs a package index (no network in tests).
    r"python -m venv": "creates the environment the tests already run in",
    r"(\.venv/bin/)?pip install": "installs from a package index (network)",
    # Cluster / multi-GPU commands.
    r"sbatch ": "needs a SLURM cluster (tests/test_slurm.py runs it on one: make test-slurm)",
    r"srun ": "needs a SLURM cluster",
    r"extract-features .*--devices": "one worker per GPU: needs several GPUs",
}
# Appended to documented commands (unless the command sets them) to keep the test quick on
# 10 patients; the command line is otherwise run as written.
QUICK: dict[str, list[str]] = {
    "balnmp-mil train": ["--epochs", "2", "--n-bootstrap", "50", "--device", "cpu"],
    "balnmp-mil cv": ["--epochs", "2", "--n-bootstrap", "50", "--device", "cpu"],
    "extract-features": ["--input-size", "32", "--device", "cpu"],
}
# Replaced in documented commands before they run: ImageNet weights need a download (no
# network in tests); seeded random weights go through the same code path.
OFFLINE: dict[str, str] = {"--weights imagenet": "--weights none"}
# Pages whose commands others depend on (the demo run directory) go first.
FIRST = ("README.md", "docs/getting-started.md", "docs/workflow.md")


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages = [p for p in pages if p.is_file()]
    first = [p for name in FIRST for p in pages if str(p.relative_to(ROOT)) == name]
    return first + [p for p in pages if p not in first]


def _allowed(command: str) -> str | None:
    return next((why for pattern, why in ALLOWED.items() if re.match(pattern, command)), None)


def test_command_blocks_are_tagged() -> None:
    """An untagged block starting with a program name must say ```bash (run) or ```text."""
    _, untagged = doc_commands(_pages())
    assert not untagged, ("untagged code blocks that look like commands (tag them ```bash to "
                          "be run, or ```text for synopses/output):\n" + "\n".join(untagged))


def test_allow_list_entries_are_used() -> None:
    """Every ALLOWED prefix still matches a documented command (no stale exemptions)."""
    commands, _ = doc_commands(_pages())
    unused = [p for p in ALLOWED if p != "srun "
              and not any(re.match(p, c.text) for c in commands)]
    assert not unused, f"ALLOWED entries that match no documented command: {unused}"


def test_every_documented_command_runs(tiny_demo: Path, tmp_path: Path) -> None:
    commands, _ = doc_commands(_pages())
    assert commands, "no ```bash commands found in README.md and docs/"
    work = workdir_with_demo(tiny_demo, tmp_path)
    failures, ran = [], 0
    for cmd in commands:
        if _allowed(cmd.text):
            continue
        text = cmd.text
        for old, new in OFFLINE.items():
            text = text.replace(old, new)
        status = run_command(text, work, QUICK)
        ran += 1
        if status != 0:
            failures.append(f"{cmd}  -> exit status {status}")
    assert ran > 0
    assert not failures, ("documented commands that fail on the demo cohort (fix the doc or "
                          "the code; add to ALLOWED only what cannot run offline):\n"
                          + "\n".join(failures))


@pytest.mark.parametrize("text,expected", [
    ("```bash\nbalnmp-mil train a \\\n  --out b   # comment\n```\n", ["balnmp-mil train a --out b"]),
    ("```console\n$ extract-features x --out y\n8 slides done\n```\n", ["extract-features x --out y"]),
    ("```text\nbalnmp-mil train FEATURES\n```\n", []),
])
def test_command_extraction(tmp_path: Path, text: str, expected: list[str]) -> None:
    page = tmp_path / "page.md"
    page.write_text(text)
    commands, _ = doc_commands([page])
    assert [shlex_norm(c.text) for c in commands] == expected


def shlex_norm(text: str) -> str:
    import shlex

    return shlex.join(shlex.split(text, comments=True))


def test_failing_command_is_reported(tiny_demo: Path, tmp_path: Path) -> None:
    """The runner returns the real exit status (2 for bad input), so broken docs fail."""
    work = workdir_with_demo(tiny_demo, tmp_path)
    assert run_command("balnmp-mil train demo/features --labels demo/missing.csv --out r",
                       work) == 2
    assert run_command("balnmp-mil inspect demo/features", work) == 0


@pytest.mark.parametrize("name,min_blocks", [("README.md", 1), ("docs/library.md", 8)])
def test_python_snippets_run(tiny_demo: Path, tmp_path: Path, name: str, min_blocks: int) -> None:
    """A page's ```python blocks run in order, in one namespace, on the demo paths."""
    import os

    from _docs_helpers import _fences

    page = ROOT / name
    blocks = [(line, "\n".join(body)) for lang, line, body in _fences(page.read_text())
              if lang == "python"]
    assert len(blocks) >= min_blocks
    work = workdir_with_demo(tiny_demo, tmp_path)
    namespace: dict = {"__name__": "__main__"}
    old = os.getcwd()
    os.chdir(work)
    try:
        for line, code in blocks:
            try:
                exec(compile(code, f"{name}:{line}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{name}:{line}: snippet fails: {exc!r}") from exc
    finally:
        os.chdir(old)
