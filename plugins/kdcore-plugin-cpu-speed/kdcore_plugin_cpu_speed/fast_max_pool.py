"""2x2 max pooling on the CPU without torch's slow kernel (``trainer.fast_max_pool``).

torch's CPU ``max_pool2d`` walks each window with a scalar loop; on the small CNNs kdcore trains
on a CPU it is the slowest op of a step (about a quarter of the default student's step, 2.2 ms
of forward for a 128 x 8 x 28 x 28 batch on two cores). For the common 2x2 / stride-2 case
kdcore has two faster ways, tried in this order:

- **A C kernel** (``kernels/max_pool_2x2.c``, built at first use by :mod:`.native_kernels`;
  float32, contiguous NCHW/CHW): one pass that writes the output and each window's winner as a
  byte, and one pass back that writes every input gradient. For that batch, forward and
  backward take 0.44 ms against 2.0 ms for the tensor-op path and 4.2 ms for torch's. It is exact:
  torch's scan order and rule (a later element wins when strictly greater or NaN), so outputs,
  gradients, signed zeros and NaN routing are torch's, bit for bit.
- **Tensor ops** (other float dtypes, channels_last inference, or no C compiler): three
  element-wise ``maximum`` calls over the window's four strided views, and torch's own
  ``max_pool2d_with_indices_backward`` with indices that follow torch's tie rule. Outputs and
  gradients are torch's, except that a window whose maximum is a zero of both signs may give
  ``-0.0`` where torch gives ``0.0`` or the reverse (equal values; the gradient still goes to
  torch's element), and with a NaN in a window which element its gradient goes to may differ.

The modules keep their class's identity for everything else: :func:`use_fast_max_pool` changes
an eligible ``nn.MaxPool2d``'s class in place (a subclass), so its module path, its forward
hooks (taps, plugins) and ``isinstance`` checks stay; on other devices, under ``torch.compile``,
``torch.jit.trace``, ``torch.func`` transforms or forward-mode AD, and for windows it does not
cover, the subclass calls torch's kernel. ``torch.jit.script`` cannot compile it: script a model
before ``kdcore run``'s rewrites or from its saved ``student.pt`` weights. Double backward
(``create_graph=True``) works on both paths.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch
from torch import nn

from . import native_kernels

__all__ = ["FastMaxPool2d", "max_pool_2x2", "use_fast_max_pool"]


def _window_views(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four elements of every 2x2 window as strided views: top-left, top-right,
    bottom-left, bottom-right (torch's scan order). An odd last row or column is dropped,
    as ``ceil_mode=False`` does."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    return (x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2],
            x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2])


def _window_maximum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(max over the window, max of the top pair, max of the bottom pair)``."""
    a, b, c, d = _window_views(x)
    top, bottom = torch.maximum(b, a), torch.maximum(d, c)
    return torch.maximum(bottom, top), top, bottom


def _window_origins(rows: int, cols: int, width: int, device: torch.device) -> torch.Tensor:
    """Flat ``h * W + w`` index of each window's top-left element, as a (rows, cols) grid."""
    return (torch.arange(0, rows * 2 * width, 2 * width, device=device).unsqueeze(1)
            + torch.arange(0, cols * 2, 2, device=device))


def _first_max_indices(x: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """Flat ``h * W + w`` index of each window's winner, as torch's kernel picks it: strict
    comparisons, so the earlier element keeps a tie. The winner's offset in its window (0, 1,
    W or W + 1) is worked out in one byte per element where W allows (vectorised, a quarter of
    the memory traffic); only the final index is int64, the type the backward kernel reads."""
    a, b, c, d = _window_views(x)
    right_of_top, right_of_bottom = b > a, d > c
    bottom_wins = bottom > top
    right = right_of_top ^ (bottom_wins & (right_of_top ^ right_of_bottom))
    width = x.shape[-1]
    offset = bottom_wins.to(torch.uint8 if width < 255 else torch.int32).mul_(width).add_(right)
    index = offset.long()
    index += _window_origins(top.shape[-2], top.shape[-1], width, x.device)
    return index


class _MaxPool2x2(torch.autograd.Function):
    """Forward by element-wise maxima, backward by torch's kernel with torch's indices."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out, top, bottom = _window_maximum(x)
        ctx.save_for_backward(x, _first_max_indices(x, top, bottom))
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        x, index = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, index)


@functools.cache
def _native() -> Any:
    """The C kernel (``kernels/max_pool_2x2.c``), or None where it cannot be built here."""
    lib = native_kernels.load("max_pool_2x2")
    if lib is not None:
        args = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3
        for fn in (lib.kdcore_max_pool_2x2_forward, lib.kdcore_max_pool_2x2_backward):
            fn.argtypes, fn.restype = args, None
    return lib


def _native_applies(x: torch.Tensor) -> bool:
    """Whether the C kernel takes ``x``: a contiguous float32 (C, H, W) or (N, C, H, W) CPU
    tensor with at least one window, on a machine where the kernel could be built."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() in (3, 4)
            and x.shape[-2] >= 2 and x.shape[-1] >= 2 and x.is_contiguous()
            and _native() is not None and _has_storage(x))


def _has_storage(x: torch.Tensor) -> bool:
    """False for tensors the kernel cannot read memory of: vmap's batched tensors (functorch's,
    and the batched gradients of ``autograd.grad(..., is_grads_batched=True)``)."""
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return False
    try:
        x.data_ptr()
    except RuntimeError:
        return False
    return True


def _native_forward(x: torch.Tensor, with_winners: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(output, winners)``: each window's winner as one byte, 0..3 in scan order."""
    height, width = x.shape[-2:]
    out = x.new_empty((*x.shape[:-2], height // 2, width // 2))
    winners = torch.empty(out.shape, dtype=torch.uint8) if with_winners else None
    _native().kdcore_max_pool_2x2_forward(x.data_ptr(), out.data_ptr(),
                                          winners.data_ptr() if winners is not None else None,
                                          x.numel() // (height * width), height, width)
    return out, winners


class _NativeMaxPool2x2(torch.autograd.Function):
    """Forward and backward by the C kernel; only the winners' bytes are kept for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out, winners = _native_forward(x, with_winners=True)
        ctx.save_for_backward(winners)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (winners,) = ctx.saved_tensors
        height, width = ctx.input_shape[-2:]
        grad = grad.contiguous()
        if torch.is_grad_enabled() or not _has_storage(grad):
            # create_graph, or batched gradients (is_grads_batched, vectorised jacobians):
            # torch's kernel, which is differentiable and has batching rules
            origins = _window_origins(winners.shape[-2], winners.shape[-1], width, winners.device)
            index = (winners >> 1).long() * width + (winners & 1) + origins
            return torch.ops.aten.max_pool2d_with_indices_backward(
                grad, grad.new_empty(ctx.input_shape), [2, 2], [2, 2], [0, 0], [1, 1], False, index)
        grad_input = grad.new_empty(ctx.input_shape)
        _native().kdcore_max_pool_2x2_backward(grad.data_ptr(), winners.data_ptr(),
                                               grad_input.data_ptr(),
                                               grad_input.numel() // (height * width), height, width)
        return grad_input


def _native_max_pool(x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _NativeMaxPool2x2.apply(x)
    return _native_forward(x, with_winners=False)[0]


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` for a (C, H, W) or (N, C, H, W) floating-point CPU tensor."""
    if _native_applies(x):
        return _native_max_pool(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxPool2x2.apply(x)
    return _window_maximum(x)[0]


def _pair(value: Any) -> tuple[Any, Any]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore


def covers(pool: nn.MaxPool2d) -> bool:
    """Whether ``pool`` is a plain 2x2, stride-2 max pooling this module computes."""
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    return (_pair(pool.kernel_size) == (2, 2) and _pair(stride) == (2, 2)
            and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode and not pool.return_indices)


# Below these sizes (elements) torch's kernel is faster. The tensor-op path costs about ten ops
# whatever the size (2 cores: inference breaks even near 20k elements, training near 150k); the
# C kernel costs one call, plus an autograd.Function's Python in training (breaks even near 1k
# and 6k elements).
MIN_ELEMENTS_INFERENCE = 1 << 14
MIN_ELEMENTS_TRAINING = 1 << 17
MIN_ELEMENTS_NATIVE_INFERENCE = 1 << 10
MIN_ELEMENTS_NATIVE_TRAINING = 1 << 13


def _faster_kernel(x: torch.Tensor) -> str | None:
    """``"native"`` (the C kernel) or ``"tensor ops"`` where one of kdcore's kernels beats
    torch's, else None (torch's kernel). Ours win on large enough floating-point CPU
    tensors in the two standard layouts, except in training on a channels_last tensor
    (torch's channels_last kernel vectorises already, and the strided index arithmetic would
    cost more than it saves; in inference ours still wins). Tracing, compiling, ``torch.func``
    transforms and forward-mode AD get torch's kernel: they need an op they know (forward-mode
    AD of ``maximum`` would split a tie's tangent, torch's pool does not)."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._functorch.is_functorch_wrapped_tensor(x)
            or torch.autograd.forward_ad._current_level >= 0):
        return None
    if x.device.type != "cpu" or not x.is_floating_point() or x.dim() not in (3, 4):
        return None
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        return None
    training = torch.is_grad_enabled() and x.requires_grad
    if _native_applies(x):
        enough = MIN_ELEMENTS_NATIVE_TRAINING if training else MIN_ELEMENTS_NATIVE_INFERENCE
        return "native" if x.numel() >= enough else None
    if training:
        faster = x.is_contiguous() and x.numel() >= MIN_ELEMENTS_TRAINING
    else:
        standard = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
        faster = standard and x.numel() >= MIN_ELEMENTS_INFERENCE
    return "tensor ops" if faster else None


class FastMaxPool2d(nn.MaxPool2d):
    """An ``nn.MaxPool2d(2)`` that takes kdcore's kernels where they are faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # covers(self) again: the settings are public attributes and may change after the swap
        kernel = _faster_kernel(x) if covers(self) else None
        if kernel == "native":
            return _native_max_pool(x)  # already checked: no second look at x
        return max_pool_2x2(x) if kernel == "tensor ops" else super().forward(x)


def use_fast_max_pool(model: nn.Module) -> int:
    """Turn every plain 2x2 ``nn.MaxPool2d`` of ``model`` into a :class:`FastMaxPool2d`, in
    place; returns how many. Subclasses of ``nn.MaxPool2d`` are left alone: their forward may
    do more than pool."""
    count = 0
    for module in model.modules():
        if type(module) is nn.MaxPool2d and covers(module):
            module.__class__ = FastMaxPool2d
            count += 1
    return count
