"""Concurrency from the container's CPU quota (cgroup v2 and v1), not the host's CPU count."""

from __future__ import annotations

import os
from pathlib import Path

from hsmd.operator.cpu import available_cpus, cgroup_cpu_quota, default_concurrency


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    assert default_concurrency(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("50000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 0.5
    assert default_concurrency(tmp_path) == 1  # never below one
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_quota_is_capped_by_schedulable_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("6400000 100000\n")  # 64 CPUs of quota
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_no_cgroup_files_means_schedulable_cpus(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    assert default_concurrency(tmp_path) == len(os.sched_getaffinity(0))
