"""Facts about the machine this process runs on, needing nothing but the standard library."""

from __future__ import annotations

import math
import os


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole CPUs allowed by a cgroup quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), or None without one.

    A fractional quota rounds down (at least 1): more threads than the quota buys get throttled
    mid-kernel, which costs latency far more than an idle fraction of a core.
    """
    candidates = [(os.path.join(root, "cpu.max"), None),
                  (os.path.join(root, "cpu", "cpu.cfs_quota_us"), os.path.join(root, "cpu", "cpu.cfs_period_us")),
                  (os.path.join(root, "cpu.cfs_quota_us"), os.path.join(root, "cpu.cfs_period_us"))]
    for quota_file, period_file in candidates:
        try:
            with open(quota_file) as f:
                fields = f.read().split()
            if period_file is not None:
                with open(period_file) as f:
                    fields = fields[:1] + f.read().split()[:1]
        except (OSError, IndexError):
            continue
        if len(fields) < 2 or fields[0] in ("max", "-1"):
            return None
        try:
            quota, period = int(fields[0]), int(fields[1])
        except ValueError:
            return None
        if quota <= 0 or period <= 0:
            return None
        return max(1, math.floor(quota / period))
    return None


def available_cores() -> int:
    """Cores this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


def cpu_flags() -> list[str] | None:
    """This CPU's feature flags as Linux names them (``avx512f``, ``avx512_bf16``, ...), or None when
    they cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None


def last_level_cache_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Size of the largest (last-level) cache CPU 0 sees, from sysfs, or None when unknown."""
    best = None
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return None
    for entry in entries:
        if not entry.startswith("index"):
            continue
        try:
            with open(os.path.join(root, entry, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        try:
            size = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text)
        except ValueError:
            continue
        best = size if best is None else max(best, size)
    return best
