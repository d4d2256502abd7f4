"""How many CPUs this process may really use: its CPU affinity, capped by the cgroup's
CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``).

``os.cpu_count()`` counts the host's CPUs: a container limited to 2 CPUs on a 16-core
host sees 16 there, and 16 threads on a 2-CPU quota spend their time throttled. A
fractional quota rounds down (1.5 CPUs: 1), never below one, as Go's automaxprocs does:
a thread beyond the quota waits for the next period.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True, slots=True)
class CpuBudget:
    """The CPUs usable, and where that number came from (for logs and metadata)."""

    cpus: int
    affinity: int  # CPUs in the scheduler affinity mask
    quota: float | None  # the cgroup's CPU quota in CPUs, None when unlimited

    @property
    def reason(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else f"cgroup quota {self.quota:g}"
        return f"{self.cpus} usable CPU(s): affinity {self.affinity}, {quota}"


def affinity_cpus() -> int:
    """CPUs the scheduler may run this process on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _ancestors(root: Path, relative: str) -> list[Path]:
    """``root/relative`` and each of its parents up to ``root``, the existing ones. In a
    container with its own cgroup namespace the path is '/' and ``root`` is the
    container's cgroup; a limit set on any ancestor applies too."""
    parts = [p for p in relative.split("/") if p]
    out = [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [p for p in out if p.is_dir()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(folder: Path) -> float | None:
    """``cpu.max`` is '<quota> <period>' in microseconds, or 'max <period>'."""
    text = _read(folder / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        q, p = int(quota), int(period or 100_000)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v1_quota(folder: Path) -> float | None:
    """``cpu.cfs_quota_us`` is -1 when unlimited."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_quota(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors,
    cgroup v2 or v1; None when there is none (or no cgroup file system)."""
    lines = (_read(proc_self_cgroup) or "").splitlines()
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: one unified hierarchy
            quotas += [q for f in _ancestors(root, path) if (q := _v2_quota(f)) is not None]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            for mount in (root / controllers, root / "cpu,cpuacct", root / "cpu"):
                if mount.is_dir():
                    folders = _ancestors(mount, path)
                    quotas += [q for f in folders if (q := _v1_quota(f)) is not None]
                    break
    return min(quotas, default=None)


def cpu_budget(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> CpuBudget:
    """The CPUs this process may use: its affinity, capped by its cgroup's quota."""
    affinity = affinity_cpus()
    quota = cgroup_quota(root, proc_self_cgroup)
    cpus = affinity if quota is None else max(1, min(affinity, math.floor(quota)))
    return CpuBudget(cpus, affinity, quota)


def usable_cpus() -> int:
    return cpu_budget().cpus


# Set by ``servekit serve --workers N`` for its worker processes: each sizes its models
# for its share of the CPUs.
WORKERS_ENV = "SERVEKIT_WORKERS"


def worker_processes() -> int:
    """How many server processes share this machine's CPUs (1 unless ``--workers``)."""
    try:
        return max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        return 1
