"""Optimizers from the config: the fused kernel where PyTorch has one, the same update."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.config import OptimizerConfig
from kdcore.engine.optim import make_optimizer


def trained(cfg: OptimizerConfig, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    optimizer = make_optimizer(model.parameters(), cfg)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fused_is_used_where_available_and_matches_the_standard_update() -> None:
    for kind in ("sgd", "adam", "adamw"):
        fused_cfg, plain_cfg = OptimizerConfig(type=kind, lr=0.05), OptimizerConfig(type=kind, lr=0.05, fused=False)
        probe = make_optimizer([nn.Parameter(torch.zeros(2))], fused_cfg)
        assert probe.defaults.get("fused") is True, kind
        assert not make_optimizer([nn.Parameter(torch.zeros(2))], plain_cfg).defaults.get("fused")
        torch.testing.assert_close(trained(fused_cfg), trained(plain_cfg), rtol=1e-5, atol=1e-6)


def test_no_fused_kernel_falls_back_to_the_standard_one(monkeypatch) -> None:
    class NoFusedSGD(torch.optim.SGD):  # as on a device without fused kernels (torch raises)
        def __init__(self, params, **options) -> None:
            if options.get("fused"):
                raise RuntimeError("`fused=True` requires all the params to be on a supported device")
            super().__init__(params, **options)

    monkeypatch.setattr(torch.optim, "SGD", NoFusedSGD)
    optimizer = make_optimizer([nn.Parameter(torch.zeros(2))], OptimizerConfig())
    assert isinstance(optimizer, NoFusedSGD) and not optimizer.defaults.get("fused")
