"""Run by tests/test_crd_ddp.py under torchrun (gloo, CPU): CRD steps on this rank's slice of
each global batch; writes the loss's buffers to OUT/rank<r>.pt."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

from kdcore_plugin_crd.losses import CRDLoss

NUM, FEAT, BATCH, STEPS = 40, 6, 8, 4


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        indices = torch.randperm(NUM, generator=generator)[:BATCH]
        out.append((torch.randn(BATCH, 5, generator=generator), torch.randn(BATCH, 7, generator=generator),
                    indices, indices % 4))
    return out


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same embeddings and banks on every rank, as kdcore run seeds them
    loss = CRDLoss((5,), (7,), num_samples=NUM, feat_dim=FEAT, nce_k=5, negatives="other_classes").train()
    per = BATCH // world
    with torch.no_grad():
        for s, t, indices, targets in global_batches():
            rows = slice(rank * per, (rank + 1) * per)
            loss(s[rows], t[rows], indices=indices[rows], targets=targets[rows])
    torch.save({k: v.clone() for k, v in loss.state_dict().items() if not k.startswith("embed")},
               os.path.join(out, f"rank{rank}.pt"))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
