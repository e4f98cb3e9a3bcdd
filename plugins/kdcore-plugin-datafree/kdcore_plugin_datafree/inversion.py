"""DeepInversion (Yin et al., CVPR 2020): images synthesised from a trained teacher alone.

Starting from noise, a batch of images is optimised (Adam) so that

    loss = main_weight * CE(teacher(x'), y)                      chosen labels y
         + r_feature   * sum_l m_l * (||mu_l(x') - mu_l||_2 + ||var_l(x') - var_l||_2)
         + tv_l2       * TV(x')                                  smoothness prior
         + l2          * mean_i ||x'_i||_2                       magnitude prior

where ``x'`` is ``x`` randomly jittered (rolled) and flipped, ``mu_l``/``var_l`` are the batch
mean/variance of the INPUT of the teacher's ``l``-th BatchNorm2d and ``mu_l``/``var_l`` (right)
its running statistics; ``m_1 = first_bn_multiplier`` and ``m_l = 1`` after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import nn


def bn_statistics_loss(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    """``||var(x) - running_var||_2 + ||mean(x) - running_mean||_2`` over channels, with the
    per-channel batch statistics of ``x`` (N, C, H, W) (biased variance, as BN normalises with)."""
    mean = x.mean(dim=(0, 2, 3))
    var = x.permute(1, 0, 2, 3).flatten(1).var(dim=1, unbiased=False)
    return torch.linalg.vector_norm(var - running_var) + torch.linalg.vector_norm(mean - running_mean)


class BNStatistics:
    """Forward hooks on every ``BatchNorm2d`` of ``model`` that record the statistics loss of each
    layer's input inside a ``with`` block, and do nothing outside it.

    They are registered when this is made and stay for the model's life: kdcore folds a frozen
    teacher's BatchNorms into the convolutions before them (``trainer.teacher_fold_bn``) unless a
    hook is on them, so a teacher whose statistics are made here (before the run folds) keeps
    its BatchNorm layers for the inversion."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.losses: list[torch.Tensor | None] = [None] * len(self.layers)
        self.recording = False
        for i, layer in enumerate(self.layers):
            layer.register_forward_hook(self._hook(i))

    def __enter__(self) -> BNStatistics:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self.recording = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.recording = False

    def _hook(self, i: int):
        def hook(module: nn.BatchNorm2d, inputs: tuple, output: torch.Tensor) -> None:
            if self.recording:
                self.losses[i] = bn_statistics_loss(inputs[0], module.running_mean, module.running_var)
        return hook

    def loss(self, first_multiplier: float = 1.0) -> torch.Tensor:
        """Sum over layers of the last forward pass, the first layer scaled by ``first_multiplier``."""
        missing = [i for i, v in enumerate(self.losses) if v is None]
        if missing:
            raise RuntimeError(f"BatchNorm2d layers {missing} were not run by the last forward pass")
        terms = [v for v in self.losses if v is not None]
        return first_multiplier * terms[0] + sum(terms[1:], torch.zeros(()))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Sum of the L2 norms (over the whole batch) of the differences between neighbouring
    pixels in four directions: right, down, and the two diagonals."""
    diffs = (x[:, :, :, :-1] - x[:, :, :, 1:],
             x[:, :, :-1, :] - x[:, :, 1:, :],
             x[:, :, 1:, :-1] - x[:, :, :-1, 1:],
             x[:, :, :-1, :-1] - x[:, :, 1:, 1:])
    return sum((torch.linalg.vector_norm(d) for d in diffs), torch.zeros(()))


def image_l2(x: torch.Tensor) -> torch.Tensor:
    """Mean over images of each image's L2 norm."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1).mean()


def jitter_flip(x: torch.Tensor, generator: torch.Generator, jitter: int, flip: bool) -> torch.Tensor:
    """Roll by a random offset in ``[-jitter, jitter]`` along H and W, then flip horizontally with
    probability 1/2 (the same transform for the whole batch, as in the reference)."""
    if jitter:
        dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        x = torch.flip(x, dims=(3,))
    return x


@attrs.frozen
class InversionSettings:
    """Knobs of one batch's synthesis (see the module doc for the loss)."""

    iterations: int = 200
    lr: float = 0.1
    main_weight: float = 1.0
    r_feature: float = 10.0
    first_bn_multiplier: float = 1.0
    tv_l2: float = 1e-3
    l2: float = 0.0
    jitter: int = 2
    flip: bool = True
    pixel_range: tuple[float, float] | None = None


def inversion_loss(teacher: nn.Module, stats: BNStatistics, x: torch.Tensor, labels: torch.Tensor,
                   s: InversionSettings) -> dict[str, torch.Tensor]:
    """The weighted terms of the inversion loss for the (already jittered) images ``x``."""
    logits = teacher(x)
    return {"ce": s.main_weight * F.cross_entropy(logits, labels),
            "r_feature": s.r_feature * stats.loss(s.first_bn_multiplier),
            "tv_l2": s.tv_l2 * total_variation(x),
            "l2": s.l2 * image_l2(x)}


def synthesize(stats: BNStatistics, labels: torch.Tensor, input_shape: Sequence[int], s: InversionSettings,
               generator: torch.Generator) -> tuple[torch.Tensor, list[float]]:
    """Optimise a batch of images (one per label) from Gaussian noise; return the images
    (detached) and the total inversion loss at every iteration.

    ``stats.model``, the teacher, must be in eval mode (BN normalises with its running
    statistics) and frozen; only the images receive gradients.
    """
    teacher, device = stats.model, labels.device
    x = torch.randn(len(labels), *input_shape, generator=generator).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=s.lr)
    history: list[float] = []
    with stats, torch.enable_grad():
        if not stats.layers:
            raise ValueError("the teacher has no BatchNorm2d layer to invert")
        for _ in range(s.iterations):
            jittered = jitter_flip(x, generator, s.jitter, s.flip)
            loss = sum(inversion_loss(teacher, stats, jittered, labels, s).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if s.pixel_range is not None:
                with torch.no_grad():
                    x.clamp_(*s.pixel_range)
            history.append(float(loss.detach()))
    return x.detach(), history
