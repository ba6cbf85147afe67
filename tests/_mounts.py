"""A small tmpfs mounted for a test: a full disk (`size=16k`) or a read-only file system
(`ro,size=64k`; permissions do not stop root, a read-only mount does). Mounting needs root
(CAP_SYS_ADMIN); elsewhere the test is skipped, saying why."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with `options` (e.g. "size=96k", "ro,size=1m") on the new folder `mount`
    for the block; unmounted after it (lazily: a test's open file does not keep it)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
