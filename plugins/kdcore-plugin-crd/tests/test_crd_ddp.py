"""CRD under DDP: every rank's memory banks follow the whole global batch, so they stay
identical across ranks and equal to a single process's (2 gloo processes on the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")


def run(out, *prefix: str) -> None:
    os.makedirs(out, exist_ok=True)
    proc = subprocess.run([sys.executable, *prefix, WORKER, str(out)], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.e2e
def test_two_ranks_keep_the_banks_of_one_process(tmp_path) -> None:
    run(tmp_path / "one")
    run(tmp_path / "two", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    single = torch.load(tmp_path / "one" / "rank0.pt")
    ranks = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in (0, 1)]
    for name in ("memory_student", "memory_teacher", "labels", "z_student_anchor", "z_teacher_anchor"):
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=name)
    for name in ("memory_student", "memory_teacher", "labels"):
        # the update of a bank row depends only on that sample's embedding: as in one process
        torch.testing.assert_close(ranks[0][name], single[name], rtol=1e-6, atol=1e-6, msg=name)


def test_the_banks_are_left_out_of_ddp_broadcasts() -> None:
    import kdcore
    from kdcore.engine.distributed import synced_buffer_names
    from kdcore_plugin_crd.losses import CRDLoss

    head = kdcore.DistillationHead({"crd": (1.0, CRDLoss((5,), (7,), num_samples=10, feat_dim=4, nce_k=3))})
    assert synced_buffer_names(head) == ["losses.crd.memory_student", "losses.crd.memory_teacher",
                                         "losses.crd.z_student_anchor", "losses.crd.z_teacher_anchor"]
