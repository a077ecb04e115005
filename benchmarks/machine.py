"""What every benchmark prints beside its figures: the CPU model, the flags that decide the precision and the
kernels (AVX2, AVX-512, AVX-512 BF16, AMX), and the core count (figures compare only within one run); and
this process's memory as the kernel counts it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_line() -> str:
    """'MODEL, N cores, flags: avx2 avx512f ...' read from /proc/cpuinfo (the platform's name elsewhere)."""
    model, flags = platform.processor() or platform.machine() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = " ".join(flag for flag in FLAGS if flag in flags) or "none of " + ", ".join(FLAGS)
    return f"{model}, {os.cpu_count()} cores, flags: {have}"


def status_mb(field: str) -> float:
    """A memory field of this process's /proc/self/status in MB: VmHWM (peak resident), RssAnon (resident heap,
    not the pages of mapped files), ...; NaN where the kernel does not report it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
