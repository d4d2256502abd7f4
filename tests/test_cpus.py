"""The CPUs a process may use: affinity capped by the cgroup quota, read from real
cgroup files laid out in a temporary directory given as the cgroup root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from servekit.cpus import affinity_cpus, cgroup_quota, cpu_budget


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_v2_quota_of_a_container_limited_to_2_cpus(tmp_path: Path) -> None:
    proc = write(tmp_path / "proc_self_cgroup", "0::/kubepods/pod1/ctr\n")
    write(tmp_path / "cg" / "kubepods" / "pod1" / "ctr" / "cpu.max", "200000 100000\n")
    write(tmp_path / "cg" / "kubepods" / "cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path / "cg", proc) == 2.0


def test_v2_tightest_ancestor_wins_and_namespaced_root(tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", "0::/a/b\n")
    write(tmp_path / "cg" / "a" / "b" / "cpu.max", "max 100000\n")
    write(tmp_path / "cg" / "a" / "cpu.max", "150000 100000\n")
    assert cgroup_quota(tmp_path / "cg", proc) == 1.5
    # A container with its own cgroup namespace sees '/' and its limit at the root.
    write(tmp_path / "proc", "0::/\n")
    write(tmp_path / "ns" / "cpu.max", "50000 100000\n")
    assert cgroup_quota(tmp_path / "ns", tmp_path / "proc") == 0.5


def test_v2_unlimited_and_missing_files(tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", "0::/x\n")
    write(tmp_path / "cg" / "x" / "cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path / "cg", proc) is None
    assert cgroup_quota(tmp_path / "nothing", tmp_path / "no-proc-file") is None
    write(tmp_path / "cg" / "x" / "cpu.max", "garbage\n")
    assert cgroup_quota(tmp_path / "cg", proc) is None


def test_v1_cfs_quota(tmp_path: Path) -> None:
    proc = write(
        tmp_path / "proc",
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
    )
    folder = tmp_path / "cg" / "cpu,cpuacct" / "docker" / "abc"
    write(folder / "cpu.cfs_quota_us", "300000\n")
    write(folder / "cpu.cfs_period_us", "100000\n")
    assert cgroup_quota(tmp_path / "cg", proc) == 3.0
    write(folder / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_quota(tmp_path / "cg", proc) is None


def test_v1_container_sees_its_own_cgroup_at_the_mount_root(tmp_path: Path) -> None:
    # Docker without a cgroup namespace: /proc/self/cgroup names the host's path, the
    # mount holds only the container's own folder.
    proc = write(tmp_path / "proc", "4:cpu,cpuacct:/docker/abc\n")
    write(tmp_path / "cg" / "cpu" / "cpu.cfs_quota_us", "100000\n")
    write(tmp_path / "cg" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_quota(tmp_path / "cg", proc) == 1.0


def test_budget_caps_affinity_by_quota(tmp_path: Path) -> None:
    proc = write(tmp_path / "proc", "0::/c\n")
    write(tmp_path / "cg" / "c" / "cpu.max", "100000 100000\n")
    budget = cpu_budget(tmp_path / "cg", proc)
    assert budget.cpus == 1 and budget.quota == 1.0
    assert budget.affinity == affinity_cpus()
    assert "cgroup quota 1" in budget.reason
    # A fraction of a CPU still gets one thread.
    write(tmp_path / "cg" / "c" / "cpu.max", "20000 100000\n")
    assert cpu_budget(tmp_path / "cg", proc).cpus == 1
    # A quota above the affinity changes nothing.
    write(tmp_path / "cg" / "c" / "cpu.max", "6400000 100000\n")
    assert cpu_budget(tmp_path / "cg", proc).cpus == affinity_cpus()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux only")
def test_affinity_is_the_process_mask() -> None:
    assert affinity_cpus() == len(os.sched_getaffinity(0))
    assert 1 <= cpu_budget().cpus <= affinity_cpus()
