"""CPU settings applied at the start of a run (``trainer.cpu_tuning``, on by default).

- Intra-op threads = the physical cores this process may use: more threads than cores only add
  contention on small convolutions. ``OMP_NUM_THREADS``, when set, wins: torchrun sets it to 1
  for several processes on a machine (its own choice, which it announces), and users set it to
  share a machine between jobs. A launcher that sets ``LOCAL_WORLD_SIZE`` but not
  ``OMP_NUM_THREADS`` gets the cores shared. ``trainer.threads`` overrides all of these.
- glibc's malloc returns freed blocks above ``M_MMAP_THRESHOLD`` (and the heap top above
  ``M_TRIM_THRESHOLD``) to the kernel, so every training step maps fresh pages and takes
  thousands of page faults for the same activation sizes. Raising both thresholds keeps that
  memory in the process for reuse. Only where glibc is the allocator; results are unchanged
  (the allocator never touches the numbers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 1 << 30


def physical_cores() -> int:
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    siblings = set()
    try:
        for cpu in allowed:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                siblings.add(f.read().strip())
    except OSError:
        return max(1, len(allowed))
    return max(1, min(len(allowed), len(siblings)))


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; ``False`` where the allocator is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else this process's share of the physical cores."""
    try:
        wanted = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        wanted = 0
    if wanted >= 1:
        return wanted
    sharing = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, physical_cores() // sharing)


def tune_cpu(threads: int | None = None) -> int:
    """Apply the CPU settings; returns the thread count."""
    n = threads or default_threads()
    torch.set_num_threads(n)
    keep_freed_memory()
    return n
