"""fp16 loss scaling with PyTorch's fused SGD: a step the scaler skips must leave the optimizer as
it was. Fused SGD makes its momentum buffers with ``torch.empty_like`` on its first step and only
fills them when the step is taken, so a skipped first step (the usual first overflow of a fresh
GradScaler) left uninitialised memory as momentum, and the next step wrote it into the weights
(seen on the CPU: NaN weights after 7 steps of ``trainer.amp=fp16`` with the default
``optimizer.fused: true``)."""

from __future__ import annotations

import torch

from kdcore.engine.loop import ENGINE_OPTIMIZER, LoopSettings, TrainingState, Update


def _sgd(params: list[torch.Tensor], fused: bool) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, fused=fused)


def test_a_skipped_first_fp16_step_leaves_no_momentum_and_the_next_step_is_the_first() -> None:
    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = _sgd([weight], fused=True)
    state = TrainingState()
    update = Update(LoopSettings(epochs=1, optimizers={ENGINE_OPTIMIZER: optimizer}, amp="fp16",
                                 scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)), state)
    # scaled by 2**16, a gradient of 1e36 overflows float32: the scaler skips this step
    assert update.apply((weight * 1e36).sum(), ENGINE_OPTIMIZER) is False
    assert state.scaler_skipped == 1
    assert torch.equal(weight.detach(), torch.ones(4))
    assert "momentum_buffer" not in optimizer.state.get(weight, {})  # no garbage kept as momentum
    assert update.apply((weight * torch.arange(4.0)).sum(), ENGINE_OPTIMIZER) is True

    reference = torch.nn.Parameter(torch.ones(4))  # one plain step on the same gradient
    plain = _sgd([reference], fused=False)
    (reference * torch.arange(4.0)).sum().backward()
    plain.step()
    assert torch.equal(weight.detach(), reference.detach())
    assert torch.equal(optimizer.state[weight]["momentum_buffer"], plain.state[reference]["momentum_buffer"])
