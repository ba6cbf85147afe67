"""A private single-node SLURM cluster for tests: munged, slurmctld and slurmd in a temp folder.

Needs Debian's `slurm-wlm` and `munge` (`make test-slurm` installs them when run as root) and
root, since slurmd launches jobs as their user. Nothing outside the folder is touched: its own
munge key and socket, its own ports, spool and state; clients find it through `SLURM_CONF`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "scancel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    """`with SlurmCluster(folder) as c: c.sbatch(...)`; daemons stop (and jobs end) on exit."""

    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int = 4000) -> None:
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.conf = self.root / "slurm.conf"
        self._procs: list[str] = []

    @staticmethod
    def unavailable() -> str | None:
        """Why no cluster can start here (None: it can)."""
        missing = [d for d in DAEMONS if shutil.which(d) is None
                   and not Path("/usr/sbin", d).exists()]
        if missing:
            return (f"SLURM/munge not installed ({', '.join(missing)} missing): "
                    "run `make test-slurm` as root to install slurm-wlm and munge")
        if os.geteuid() != 0:
            return "a private slurmd must run as root to launch jobs; run the test as root"
        return None

    # -- lifetime ---------------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.socket = self.root / "munge" / "munge.socket"
        self._run("munged", f"--key-file={key}", f"--socket={self.socket}",
                  f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                  f"--log-file={self.root / 'log' / 'munged.log'}",
                  f"--seed-file={self.root / 'munge' / 'seed'}", "-f")
        self.conf.write_text(self._config())
        self._run("slurmctld", "-f", str(self.conf))
        self._run("slurmd", "-f", str(self.conf))
        self._wait_idle()
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["scancel", "--full", "--quiet", "-u", "root"], env=self.env(),
                       capture_output=True, check=False)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.root / pid_file
            if path.is_file():
                try:
                    os.kill(int(path.read_text().split()[0]), 15)
                except (ValueError, ProcessLookupError):
                    pass
        time.sleep(1)

    def _run(self, name: str, *args: str) -> None:
        exe = shutil.which(name) or str(Path("/usr/sbin", name))
        proc = subprocess.run([exe, *args], capture_output=True, text=True, env=self.env())
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed to start: {proc.stderr or proc.stdout}\n"
                               + self.logs())
        self._procs.append(name)

    def _config(self) -> str:
        r = self.root
        return "\n".join([
            "ClusterName=balnmptest", f"SlurmctldHost={self.host}",
            "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", "CryptoType=crypto/munge",
            f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill", "ReturnToService=2",
            f"NodeName={self.host} CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName=cpu Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def _wait_idle(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                  env=self.env())
            if proc.returncode == 0 and proc.stdout.strip() in ("idle", "mixed"):
                return
            time.sleep(0.5)
        raise RuntimeError("the test cluster's node never became idle\n" + self.logs())

    # -- use ---------------------------------------------------------------------------
    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        env.update(extra or {})
        return env

    def sbatch(self, script: Path, args: list[str], options: list[str], cwd: Path,
               env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Submit and wait (`sbatch --wait`: its exit status is the job's worst task)."""
        return subprocess.run(["sbatch", "--wait", "--parsable", *options, str(script), *args],
                              cwd=cwd, env=self.env(env), capture_output=True, text=True,
                              timeout=timeout)

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / "log" / name
            if path.is_file():
                out.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-15:]))
        return "\n".join(out)
