"""CPU settings applied at the start of a run (``trainer.cpu_tuning``, on by default).

Intra-op threads are set to the physical cores this process may use; more threads than cores
only adds contention on small convolutions.
"""

from __future__ import annotations

import os

import torch


def physical_cores() -> int:
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        siblings = set()
        for cpu in (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(allowed)):
            path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
            with open(path) as f:
                siblings.add(f.read().strip())
        return max(1, min(allowed, len(siblings)))
    except OSError:
        return max(1, allowed)


def tune_cpu(threads: int | None = None) -> int:
    n = threads or physical_cores()
    torch.set_num_threads(n)
    return n
