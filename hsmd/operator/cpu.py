"""How many CPUs this process may really use: the container's CPU quota, not the host's count.

A pod limited to 500m on a 64-core node must not start 64 ansible-playbook processes. The quota
comes from cgroup v2 ``cpu.max`` ("max 100000" or "<quota> <period>") or cgroup v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us`` (-1 = unlimited); without a quota, the CPUs this
process may be scheduled on (sched_getaffinity), which also honours cpusets.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_v2_dir(root: Path) -> Path:
    """This process's own cgroup v2 directory (``0::/path`` in /proc/self/cgroup), else the root."""
    text = _read(Path("/proc/self/cgroup")) if root == Path("/sys/fs/cgroup") else None
    for line in (text or "").splitlines():
        if line.startswith("0::"):
            candidate = root / line[3:].lstrip("/")
            if (candidate / "cpu.max").exists():
                return candidate
    return root


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs granted by the cgroup quota (e.g. 1.5), or None when there is no quota."""
    v2 = _read(_cgroup_v2_dir(root) / "cpu.max")
    if v2:
        fields = v2.split()
        if len(fields) >= 1 and fields[0] != "max":
            try:
                quota = int(fields[0])
                period = int(fields[1]) if len(fields) > 1 else 100_000
            except ValueError:
                return None
            if quota > 0 and period > 0:
                return quota / period
        return None
    for cpu_dir in (root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu", root):
        quota_text = _read(cpu_dir / "cpu.cfs_quota_us")
        period_text = _read(cpu_dir / "cpu.cfs_period_us")
        if quota_text is None or period_text is None:
            continue
        try:
            quota, period = int(quota_text), int(period_text)
        except ValueError:
            return None
        if quota > 0 and period > 0:
            return quota / period
        return None
    return None


def available_cpus(root: Path = Path("/sys/fs/cgroup")) -> float:
    """The quota if there is one, capped by the CPUs we may run on; otherwise those CPUs."""
    try:
        schedulable = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        schedulable = float(os.cpu_count() or 1)
    quota = cgroup_cpu_quota(root)
    return min(quota, schedulable) if quota is not None else schedulable


def default_concurrency(root: Path = Path("/sys/fs/cgroup")) -> int:
    """Concurrent ansible runs: one per whole CPU of the quota, at least one."""
    return max(1, math.floor(available_cpus(root) + 1e-9))
