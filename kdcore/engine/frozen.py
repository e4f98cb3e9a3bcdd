"""Frozen teachers, made cheaper to run: the same outputs within float rounding, less work.

A teacher is frozen (no gradients, BatchNorm in eval mode) for the whole distillation, so two
inference-only rewrites are safe:

- **Layout** (``trainer.teacher_memory_format``): ``auto`` runs teachers in channels_last on the
  CPU, where oneDNN's inference convolutions and pooling are 1.0-2.5x faster in it
  (benchmarks/README.md, "Frozen-teacher rewrites"), and in the rest of the algorithm's layout elsewhere.
- **BatchNorm folding** (``trainer.teacher_fold_bn``): an eval-mode ``BatchNorm2d`` that directly
  follows a ``Conv2d`` in an ``nn.Sequential`` is a per-channel affine map, so it is folded into
  the convolution's weight and bias and replaced by ``nn.Identity``: one pass over the feature
  map less per pair. Module paths stay, and the Identity's output is the BatchNorm's, so paths
  address the same values. A pair is left alone when either module carries a hook (a tap on
  either, or a plugin's), or when the teacher has trainable parameters. Run it after the taps
  are installed; the teacher's checkpoint and checksum are those of the unfolded weights.

And the autograd mode of a frozen teacher's pass whose outputs never meet autograd
(:func:`frozen_pass`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def frozen_pass(model: nn.Module) -> contextlib.AbstractContextManager:
    """The autograd mode for a frozen teacher's pass whose outputs never meet autograd:
    ``inference_mode``, cheaper than ``no_grad``; but ``no_grad`` for a compiled teacher
    (``trainer.compile``), whose graph compiled for the step's ``no_grad`` would be compiled
    again for inference tensors."""
    compiled = getattr(model, "_compiled_call_impl", None) is not None
    return torch.no_grad() if compiled else torch.inference_mode()


def teacher_memory_format(setting: str, device: torch.device, channels_last: bool) -> torch.memory_format:
    """The layout frozen teachers run in (see the module docstring)."""
    if setting == "channels_last" or (setting == "auto" and (device.type == "cpu" or channels_last)):
        return torch.channels_last
    return torch.contiguous_format


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and not bn.training
            and bn.running_mean is not None and bn.running_var is not None
            and conv.out_channels == bn.num_features and not _hooked(conv) and not _hooked(bn))


def fold_batchnorm(model: nn.Module) -> list[str]:
    """Fold every eligible (Conv2d, BatchNorm2d) pair of a frozen ``model`` in place; returns
    the paths of the BatchNorms folded (see the module docstring for what is eligible)."""
    if any(p.requires_grad for p in model.parameters()):
        return []
    folded = []
    for parent_path, parent in list(model.named_modules()):
        if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
            continue  # only a plain chain: a subclass's own forward may use the conv's output
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = parent._modules[first], parent._modules[second]
            if conv is None or bn is None or not _foldable(conv, bn):
                continue
            # torch's own fusion, in place: the convolution module stays, so its path and hooks do
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                bn.eps, bn.weight, bn.bias)
            conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
            conv.bias = nn.Parameter(bias.detach(), requires_grad=False)
            parent._modules[second] = nn.Identity()
            folded.append(f"{parent_path}.{second}" if parent_path else second)
    return folded
