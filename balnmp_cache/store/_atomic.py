"""Durable, atomic writes and the rule that no output may land on an input.

Every writer in both packages (per-slide HDF5/Zarr, packs, run directories, manifests) builds
its output under a temporary name beside the target, flushes it to disk and then publishes it
with one rename. Replacing an existing target swaps the two in one step where Linux offers
`renameat2(RENAME_EXCHANGE)`, and elsewhere renames the old one aside first and puts it back if
the second rename fails: at every instant the target is either the old or the new output.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "check_output",
    "check_replaceable",
    "create_new",
    "exchange",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "overlap",
    "publish",
    "remove",
    "side_name",
]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = (22, 38, 95)  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem cannot exchange


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush one file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside `path` durable (POSIX); a no-op where directories can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory below `root` (a file: just that file)."""
    root = Path(root)
    if root.is_file():
        fsync_file(root)
        return
    for dirpath, _, files in os.walk(root):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name, use_errno=True), "renameat2", None)


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Atomically swap two existing paths (Linux `renameat2`); False where unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in _UNSUPPORTED:
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def side_name(target: Path, tag: str) -> Path:
    """A hidden, unique name beside `target` (`.<name>.<tag>-<pid>-<hex>`)."""
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def remove(path: Path) -> None:
    """Remove a file or a directory tree; missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(staged: Path, target: Path) -> None:
    """Put the complete, flushed `staged` (file or directory) at `target` in one step.

    An existing `target` is replaced without a half-way state: exchanged where the
    filesystem can, else renamed aside and restored if the second rename fails. The old
    output is deleted only once the new one is in place.
    """
    staged, target = Path(staged), Path(target)
    if not target.exists() and not target.is_symlink():
        os.rename(staged, target)
    elif staged.is_dir() == target.is_dir() and exchange(staged, target):
        remove(staged)  # `staged` now names the old output
    else:
        old = side_name(target, "old")
        os.rename(target, old)
        try:
            os.rename(staged, target)
        except BaseException:  # an error, or a signal between the two renames
            os.rename(old, target)
            raise
        remove(old)
    fsync_dir(target.parent)


def create_new(target: str | os.PathLike[str], data: bytes) -> bool:
    """Create `target` holding `data` only if nothing is there yet: True when this call
    created it, False when it existed. Readers never see it half-written.

    The file is written and fsynced under a temporary name, then hard-linked onto `target`
    (`link(2)` fails when `target` exists, atomically, NFS included). Where a filesystem has
    no hard links, `target` is created with `O_CREAT|O_EXCL` and written in place instead.
    """
    target = Path(target)
    staged = side_name(target, "tmp")
    try:
        staged.write_bytes(data)
        fsync_file(staged)
        try:
            os.link(staged, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            return _create_in_place(target, data)
        fsync_dir(target.parent)
        return True
    finally:
        staged.unlink(missing_ok=True)


_NO_LINKS = (1, 38, 95)  # EPERM, ENOSYS, EOPNOTSUPP: this filesystem has no hard links


def _create_in_place(target: Path, data: bytes) -> bool:
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def overlap(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when `a` and `b` are the same path or one lies inside the other (links followed)."""
    pa, pb = Path(a).resolve(), Path(b).resolve()
    return pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa)


def check_output(
    out: str | os.PathLike[str],
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    error: Callable[[str], Exception],
    flag: str = "--out",
) -> None:
    """Refuse an output that is, holds, or lies inside one of the inputs it is made from.

    `inputs` pairs a name for the message (`"FEATURES"`, `"--labels"`) with a path (None
    skipped). A pack inside the store it packs, a run inside its FEATURES, or predictions
    written over the labels file would each corrupt or delete what the command reads.
    """
    for name, path in inputs:
        if path is None:
            continue
        if overlap(out, path):
            if Path(out).resolve() == Path(path).resolve():
                where = "is"
            elif Path(out).resolve().is_relative_to(Path(path).resolve()):
                where = "lies inside"
            else:
                where = "contains"
            raise error(
                f"{flag} {out} {where} {name} {path}, which this command reads; writing there "
                f"could overwrite or delete it. Choose an {flag} outside {path}"
            )


def check_replaceable(
    out: Path,
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    overwrite: bool,
    error: Callable[[str], Exception],
    ours: Callable[[Path], bool],
    not_ours: str | Callable[[Path], str],
) -> None:
    """Refuse, before any work, an `out` that would destroy an input (`check_output`) or that
    exists and may not be replaced: without `overwrite`, or when it is not this command's own
    kind of output (`ours(out)` false; `not_ours` says what it is not, e.g. "a balnmp pack",
    or is a function of `out` that also says what it holds)."""
    check_output(out, inputs, error)
    if not out.exists():
        return
    if not overwrite:
        raise error(f"{out}: already exists; choose another --out or pass --overwrite")
    if not ours(out):
        what = not_ours(out) if callable(not_ours) else not_ours
        raise error(f"{out}: exists and is not {what}, so --overwrite will not replace it; "
                    "choose another --out")
