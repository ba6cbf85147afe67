"""`benchmarks/gpu_session.sh` runs once, in one call of a lent GPU's 15 minutes: its steps
must fit the call and every benchmark flag it passes must exist (a typo would cost the run)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
BUDGET_S = 560  # the call's 590 s less the install (the script's header)


def _steps() -> list[tuple[str, int, list[str]]]:
    text = SCRIPT.read_text().replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        found = re.match(r"step (\w+) (\d+) (.*)$", line.strip())
        if found:  # a bash -c '...' step spans lines: only python steps are split into words
            rest = found.group(3)
            words = shlex.split(rest) if rest.startswith("python3 ") else [rest]
            steps.append((found.group(1), int(found.group(2)), words))
    return steps


def test_the_steps_fit_the_one_call():
    steps = _steps()
    assert len(steps) >= 8
    assert sum(limit for _, limit, _ in steps) <= BUDGET_S
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0


@pytest.mark.parametrize("name, command", [(n, c) for n, _, c in _steps()
                                           if c[:1] == ["python3"] and c[1].endswith(".py")])  # fmt: skip
def test_every_benchmark_flag_the_script_passes_exists(name, command):
    script = ROOT / command[1]
    assert script.is_file(), name
    usage = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                           text=True, cwd=ROOT, check=True, timeout=120).stdout  # fmt: skip
    for flag in (a for a in command[2:] if a.startswith("--")):
        assert re.search(rf"{re.escape(flag)}\b", usage), f"{name}: {flag} not in {script.name}"
