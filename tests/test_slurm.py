"""The project's SLURM example on a real scheduler: a private single-node cluster runs
`examples/slurm/extract_array.sbatch` as an array over a small cohort, then again to resume.

`make test-slurm` (root: it installs slurm-wlm and munge with apt when missing); skipped with
the reason where no cluster can start. The node has no GPU, so this is also the CPU-only
partition case: the script picks the device from what SLURM gave the task.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _extract_helpers import tiny_cohort  # noqa: E402
from _slurm import SlurmCluster  # noqa: E402

pytestmark = pytest.mark.slurm

SCRIPT = Path(__file__).parents[1] / "examples" / "slurm" / "extract_array.sbatch"
ROW = re.compile(r"^(\S+)\s+(done|empty|skipped|failed)\s+\d+\s", re.M)
N_SLIDES, N_TASKS = 5, 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = SlurmCluster.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.h5"))}


def _submit(cluster: SlurmCluster, cohort, out: Path, work: Path) -> tuple[str, list[tuple]]:
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "ENCODER": "resnet18", "WEIGHTS": "none", "MPP": "1.0", "PATCH_SIZE": "32",
        "BATCH_SIZE": "4", "EXTRA_ARGS": "--input-size 32", "OMP_NUM_THREADS": "1",
        "TORCH_HOME": str(work / "torch"),
    }
    options = [f"--array=0-{N_TASKS - 1}", "--cpus-per-task=1", "--mem=1500M",
               "--time=00:10:00"]
    proc = cluster.sbatch(SCRIPT, [str(cohort.slides_dir), str(out)], options, work, env)
    job = proc.stdout.strip().split(";")[0]
    logs = sorted(work.glob(f"extract-{job}_*.out"))
    text = "\n".join(p.read_text() for p in logs)
    assert proc.returncode == 0, (proc.stderr, text, cluster.logs())
    assert len(logs) == N_TASKS, (logs, cluster.logs())
    assert all("device cpu" in p.read_text() for p in logs), text
    return text, ROW.findall(text)


def test_array_extracts_each_slide_once_then_resumes(cluster, tmp_path):
    cohort = tiny_cohort(tmp_path / "cohort", n=N_SLIDES)
    out = tmp_path / "features"
    first = tmp_path / "run1"
    first.mkdir()
    text, rows = _submit(cluster, cohort, out, first)
    done = Counter(sid for sid, status in rows if status in ("done", "empty"))
    assert sorted(done) == [str(i) for i in range(1, N_SLIDES + 1)], text
    assert set(done.values()) == {1}, f"a slide was processed twice: {done}\n{text}"
    assert not [r for r in rows if r[1] == "failed"], text
    assert len(_digest(out)) == N_SLIDES
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert len(manifest) == N_SLIDES + 1 and all(",done," in r for r in manifest[1:]), manifest
    before = _digest(out)

    again = tmp_path / "run2"
    again.mkdir()
    text, rows = _submit(cluster, cohort, out, again)
    assert sorted(sid for sid, _ in rows) == sorted(done), text
    assert {status for _, status in rows} == {"skipped"}, text
    assert _digest(out) == before, "resuming rewrote finished slides"
