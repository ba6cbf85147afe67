"""What every fault test asserts about a refusal, and the one way they call `balnmp-mil`."""

from __future__ import annotations

import re
from pathlib import Path

from _data import fast_args
from click.testing import CliRunner, Result

from balnmp_mil.cli.group import main

# A sentence that tells the user to delete or remove something (a description such as "could
# overwrite or delete it" is fine).
ADVICE_TO_DELETE = re.compile(r"(^|[.;:!] |\bthen )(delete|remove|rm) ", re.I)


def mil(*args: object) -> Result:
    """`balnmp-mil ARGS` in-process, exceptions caught so that a traceback fails the test."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_refused(res: Result, *needles: str) -> None:
    """Exit 2 through click (a message, not a traceback) naming what the needles say, and never
    advising to delete anything: the file may be the user's only copy."""
    assert res.exit_code == 2, (res.output, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    text = " ".join(res.output.split())  # click wraps long messages
    for needle in needles:
        assert needle in res.output or needle in text, res.output
    assert not ADVICE_TO_DELETE.search(text), res.output


def train_tiny_run(features: Path, labels: Path, out: Path) -> Path:
    """A one-epoch `n0_vs_n+` run to apply, damage or reuse."""
    res = mil("train", features, "--labels", labels, "--task", "n0_vs_n+", "--out", out,
              *fast_args(1))
    assert res.exit_code == 0, res.output
    return out
