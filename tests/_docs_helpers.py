"""Shared helpers for the docs / examples / BCNB-recipe tests (helper DOCS).

One session-scoped tiny demo (10 patients, small slides, ResNet-18 features with random weights
at a 32 px encoder input) laid out like `make demo`'s `demo/`: `demo/cohort/...`,
`demo/features`. Commands from the Markdown run IN this process (click's `main(args)`, runpy for
`python` scripts and modules) so torch is imported once; shell plumbing goes to bash.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
DEMO_PATIENTS = 10  # seed 0: 6 N0, 2 N+(1-2), 2 N+(>2): every task has both classes
COMMAND_LANGS = {"bash", "sh", "shell", "console"}
KNOWN_PROGRAMS = ("balnmp-mil", "extract-features", "python", "python3", "make", "pip",
                  ".venv/bin/", "sbatch", "srun")


def make_tiny_demo(root: Path) -> Path:
    """`root/demo` with `cohort/` (slides, annotations, clinical.csv) and `features/` (the
    session fixture `tiny_demo` in conftest.py)."""
    from balnmp_cache import extract_features
    from balnmp_cache.synthetic import make_demo_cohort

    demo = root / "demo"
    cohort = make_demo_cohort(demo / "cohort", n_patients=DEMO_PATIENTS, seed=0, width=1024,
                              height=512, tumour_patches=(4, 6))
    # The settings of `make demo` and of the docs' snippets (resnet18, random weights, 0.5 µm/px,
    # 224 px patches), so that a snippet resumes this store instead of being refused.
    summary = extract_features([cohort.slides_dir], demo / "features", encoder="resnet18",
                               weights="none", mpp=0.5, patch_size=224,
                               annotations=cohort.annotations_dir, device="cpu", progress=False)
    assert summary.n_failed == 0, summary.format()
    return demo


def import_script(path: Path) -> ModuleType:
    """Import a script of examples/ or docs/ by its path, as the module named by its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def workdir_with_demo(demo: Path, workdir: Path) -> Path:
    """A fresh working directory: a copy of `demo/` plus links to the repo's examples/docs."""
    shutil.copytree(demo, workdir / "demo", symlinks=True)
    for name in ("examples", "docs", "benchmarks"):
        if (ROOT / name).exists():
            (workdir / name).symlink_to(ROOT / name)
    return workdir


@dataclass(frozen=True)
class DocCommand:
    """One shell command found in a fenced block of a Markdown file."""

    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def _fences(text: str) -> Iterator[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced code block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i + 2
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        yield lang, start, body
        i += 1


def _commands_of(body: list[str], lang: str) -> Iterator[tuple[int, str]]:
    """(offset, command) pairs; continuation lines joined, comments and prompts dropped."""
    current, first = "", 0
    for k, raw in enumerate(body):
        line = raw.rstrip()
        if lang == "console":
            if not current and not line.startswith("$ "):
                continue  # output lines of a console transcript
            line = line[2:] if not current else line
        if not current:
            first = k
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        yield first, current.strip()
        current = ""


def doc_commands(paths: list[Path]) -> tuple[list[DocCommand], list[str]]:
    """Commands of ```bash/sh/shell/console blocks, and untagged blocks that look like commands.

    An untagged block whose first line starts with a program name is ambiguous (a command or
    its output?): it is returned in the second list so the test can ask for a language tag.
    """
    commands: list[DocCommand] = []
    untagged: list[str] = []
    for path in paths:
        rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        for lang, start, body in _fences(path.read_text(encoding="utf-8")):
            if lang in COMMAND_LANGS:
                commands += [DocCommand(rel, start + k, cmd) for k, cmd in _commands_of(body, lang)]
            elif not lang:
                first = next((b.strip() for b in body if b.strip()), "")
                if first.startswith(KNOWN_PROGRAMS):
                    untagged.append(f"{rel}:{start}: {first}")
    return commands, untagged


@contextlib.contextmanager
def _argv_cwd(argv: list[str], cwd: Path) -> Iterator[None]:
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = argv
    os.chdir(cwd)
    try:
        yield
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _click_main(program: str):  # noqa: ANN202 - a click command
    if program == "balnmp-mil":
        from balnmp_mil.cli.group import main
    else:
        from balnmp_cache.cli import main
    return main


def run_command(command: str, cwd: Path, extra_args: dict[str, list[str]] | None = None) -> int:
    """Run one documented command in `cwd`; return its exit status.

    `balnmp-mil` / `extract-features` run through their click commands in this process,
    `python -m MOD`, `python SCRIPT` and `python -c CODE` through runpy/exec; a command with
    pipes, redirections or `&&` goes to bash with the venv's bin first on PATH.
    `extra_args` maps "balnmp-mil train"-style prefixes to options appended to keep it quick.
    """
    if re.search(r"[|;&<>`$]", command):
        env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
        return subprocess.run(["bash", "-c", command], cwd=cwd, env=env).returncode
    argv = shlex.split(command, comments=True)
    program = argv[0].rsplit("/", 1)[-1]
    for prefix, extra in (extra_args or {}).items():
        words = prefix.split()
        if [program, *argv[1:len(words)]] == words:
            argv += [opt for i, opt in enumerate(extra) if not (
                opt.startswith("--") and opt in argv) and not (
                i > 0 and extra[i - 1].startswith("--") and extra[i - 1] in argv)]
    with _argv_cwd(argv, cwd):
        try:
            if program in ("balnmp-mil", "extract-features"):
                _click_main(program).main(args=argv[1:], prog_name=program,
                                          standalone_mode=True)
            elif program in ("python", "python3"):
                if argv[1] == "-m":
                    sys.argv = argv[2:]
                    runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
                elif argv[1] == "-c":
                    exec(compile(argv[2], "<doc -c>", "exec"), {"__name__": "__main__"})
                else:
                    sys.argv = argv[1:]
                    runpy.run_path(argv[1], run_name="__main__")
            else:
                env = {**os.environ,
                       "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
                return subprocess.run(argv, cwd=cwd, env=env).returncode
        except SystemExit as exc:
            return _exit_code(exc)
        except Exception:  # a script crashed: report it like a shell would (status 1)
            traceback.print_exc()
            return 1
    return 0
