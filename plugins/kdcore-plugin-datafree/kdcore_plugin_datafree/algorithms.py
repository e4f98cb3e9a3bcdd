"""Data-free distillation: DeepInversion batches from the teacher, Hinton KD on them.

The training split is never read: :meth:`DataFree.train_batches` ignores the default batches and
yields synthetic ones. Synthesis is the expensive part (``iterations`` teacher forward/backward
passes per batch), so synthesised batches are kept in a pool and reused across epochs:

* each epoch first synthesises new batches: while the pool is not full, up to
  ``batches_per_epoch`` of them (so the first epoch does not wait for a pool it cannot use);
  once it is full, ``refresh_per_epoch`` of them replacing the oldest;
* then it trains on ``batches_per_epoch`` batches drawn from the pool in a seeded random order
  (cycling through the pool when it holds fewer batches than that).

The pool, its synthesis generator and its refresh position are saved in checkpoints (the
algorithm's extra state), so a resumed run trains on the images the uninterrupted run had.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdcore

from .inversion import BNStatistics, InversionSettings, synthesize


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, batch mean."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student.float() / t, dim=1), F.log_softmax(teacher.float() / t, dim=1),
                  reduction="batchmean", log_target=True)
    return kl * (t * t)


def balanced_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` labels cycling through the classes (as the reference's CIFAR script), shuffled."""
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=generator)]


class SyntheticBatches:
    """The training batches of a data-free run (what :meth:`DataFree.train_batches` returns)."""

    def __init__(self, algorithm: DataFree, device: torch.device) -> None:
        self.algorithm = algorithm
        self.device = device

    def __len__(self) -> int:
        return self.algorithm.batches_per_epoch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[kdcore.Batch]:
        algo = self.algorithm
        if start_step == 0 or not algo.pool:  # mid-epoch, a restored pool already had this refresh
            algo.refresh_pool(epoch, self.device)
        pool = algo.pool
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(algo.seed * 7919 + epoch))
        slots = [int(order[i % len(pool)]) for i in range(len(self))]
        for slot in slots[start_step:]:
            inputs, labels = (t.to(self.device) for t in pool[slot])  # restored pools are on the CPU
            n = len(labels)
            indices = torch.arange(slot * n, (slot + 1) * n, device=inputs.device)
            yield kdcore.Batch(inputs, labels, indices)


class DataFree(kdcore.Algorithm):
    """DeepInversion: invert the (first) teacher into batches of images, distil on them.

    Synthesis (see :mod:`kdcore_plugin_datafree.inversion`):

    :param iterations: Adam steps per synthetic batch (reference: 2000; CPU presets: ~100).
    :param lr: Adam learning rate on the pixels (reference CIFAR: 0.05 paper, 0.1 README).
    :param r_feature: weight of the BatchNorm statistics loss (reference CIFAR: 10).
    :param first_bn_multiplier: extra factor on the first BN layer's term (reference ImageNet: 10).
    :param tv_l2: weight of the total-variation prior (reference CIFAR: 2.5e-5 paper, 1e-3 README).
    :param l2: weight of the image-norm prior (reference CIFAR: 0).
    :param main_weight: weight of the cross-entropy to the chosen labels (reference: 1).
    :param jitter: random roll of up to this many pixels per step (reference CIFAR: 2).
    :param flip: random horizontal flips during synthesis (reference ImageNet: yes).
    :param pixel_range: ``[low, high]`` to clamp the images to after each step (the valid range
        of the normalised inputs), or null for no clamp.

    Pool and training:

    :param batches_per_epoch: training steps per epoch (batches of ``data.batch_size`` images).
    :param pool_size: synthetic batches kept and reused across epochs.
    :param refresh_per_epoch: batches re-synthesised per epoch once the pool is full.
    :param temperature: KD temperature ``T``.
    :param kd_weight: weight of the KD term (the student sees no labels).
    :param grid_path: PNG grid of the newest synthetic batch, rewritten every epoch; a relative
        path is resolved against the run directory when the core provides one, else the current
        directory; null disables it.
    """

    def __init__(self, student: nn.Module, task: Any, distiller: kdcore.Distiller | None = None, *,
                 num_classes: int, input_shape: Sequence[int], batch_size: int, seed: int = 0,
                 run_dir: str | None = None,
                 iterations: int = 200, lr: float = 0.1, r_feature: float = 10.0,
                 first_bn_multiplier: float = 1.0, tv_l2: float = 1e-3, l2: float = 0.0,
                 main_weight: float = 1.0, jitter: int = 2, flip: bool = True,
                 pixel_range: Sequence[float] | None = None,
                 batches_per_epoch: int = 8, pool_size: int = 8, refresh_per_epoch: int = 2,
                 temperature: float = 4.0, kd_weight: float = 1.0,
                 grid_path: str | None = "data_free_grid.png") -> None:
        if distiller is None or not len(distiller.teachers):
            raise kdcore.UserError("algorithm 'data_free' inverts a trained teacher; add one under "
                                   "'teachers:' with its checkpoint", key_path="algorithm")
        values = {"iterations": iterations, "batches_per_epoch": batches_per_epoch, "pool_size": pool_size,
                  "refresh_per_epoch": refresh_per_epoch, "lr": lr, "temperature": temperature,
                  "jitter": jitter}
        valid = {"iterations": iterations >= 1, "batches_per_epoch": batches_per_epoch >= 1,
                 "pool_size": pool_size >= 1, "refresh_per_epoch": 0 <= refresh_per_epoch <= pool_size,
                 "lr": lr > 0, "temperature": temperature > 0, "jitter": jitter >= 0}
        for key, ok in valid.items():
            if not ok:
                raise kdcore.UserError(f"algorithm.{key}: invalid value {values[key]!r} (iterations, "
                                       "batches_per_epoch, pool_size >= 1; 0 <= refresh_per_epoch <= "
                                       "pool_size; lr, temperature > 0; jitter >= 0)",
                                       key_path=f"algorithm.{key}")
        if pixel_range is not None and (len(pixel_range) != 2 or pixel_range[0] >= pixel_range[1]):
            raise kdcore.UserError(f"algorithm.pixel_range: expected [low, high], got {pixel_range!r}",
                                   key_path="algorithm.pixel_range")
        super().__init__(student, task, distiller)
        self.teacher_name = next(iter(distiller.teachers))
        if not any(isinstance(m, nn.BatchNorm2d) for m in distiller.teachers[self.teacher_name].modules()):
            raise kdcore.UserError(f"algorithm 'data_free': teacher {self.teacher_name!r} has no "
                                   "BatchNorm2d layer, so there are no statistics to invert",
                                   key_path="algorithm")
        # hooked now, before the run folds the teachers' BatchNorms: hooked layers stay unfolded
        self.bn_statistics = BNStatistics(distiller.teachers[self.teacher_name])
        self.settings = InversionSettings(
            iterations=iterations, lr=lr, main_weight=main_weight, r_feature=r_feature,
            first_bn_multiplier=first_bn_multiplier, tv_l2=tv_l2, l2=l2, jitter=jitter, flip=flip,
            pixel_range=tuple(float(v) for v in pixel_range) if pixel_range is not None else None)
        self.num_classes, self.input_shape = num_classes, tuple(input_shape)
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch, self.pool_size = batches_per_epoch, pool_size
        self.refresh_per_epoch = refresh_per_epoch
        self.temperature, self.kd_weight = float(temperature), float(kd_weight)
        if grid_path is not None and run_dir is not None and not os.path.isabs(grid_path):
            grid_path = os.path.join(run_dir, grid_path)
        self.grid_path = grid_path
        self.pool: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.generator = torch.Generator().manual_seed(seed)
        self.synthesis_history: list[list[float]] = []
        self._oldest = 0

    # The pool, the synthesis generator and the refresh position are part of the run's state:
    # kdcore checkpoints them with the algorithm's state_dict, so a resumed run trains on the
    # images the uninterrupted run would have.
    def get_extra_state(self) -> dict[str, Any]:
        return {"pool_inputs": [x.detach().cpu() for x, _ in self.pool],
                "pool_labels": [y.detach().cpu() for _, y in self.pool],
                "generator": self.generator.get_state(), "oldest": self._oldest}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved = list(zip(state["pool_inputs"], state["pool_labels"]))
        # a resumed run continues the saved pool, so its shape must still be the configured one
        if len(saved) > self.pool_size:
            raise kdcore.UserError(
                f"algorithm.pool_size: the checkpoint's synthetic pool holds {len(saved)} batches, "
                f"pool_size is now {self.pool_size}; resume with algorithm.pool_size={len(saved)} "
                f"(a larger value grows the pool) or start a new run")
        sizes = {len(labels) for _, labels in saved}
        if sizes and sizes != {self.batch_size}:
            saved_batch = min(sizes)
            raise kdcore.UserError(
                f"data.batch_size: the checkpoint's synthetic pool holds batches of "
                f"{saved_batch} images, data.batch_size is now {self.batch_size}; resume "
                f"with data.batch_size={saved_batch} or start a new run")
        oldest = int(state["oldest"])
        if len(saved) < self.pool_size:  # it grows by appending: put the ring in age order first
            saved, oldest = saved[oldest:] + saved[:oldest], 0
        self.pool = saved
        self.generator.set_state(state["generator"])
        self._oldest = oldest

    @property
    def teacher(self) -> nn.Module:
        assert self.distiller is not None
        return self.distiller.teachers[self.teacher_name]

    def train_batches(self, default: Any) -> SyntheticBatches:
        """Synthetic batches; ``default`` (the training split) is never iterated."""
        device = getattr(default, "device", None) or next(self.teacher.parameters()).device
        return SyntheticBatches(self, torch.device(device))

    def synthesize_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        labels = balanced_labels(self.batch_size, self.num_classes, self.generator).to(device)
        self.teacher.eval()
        images, history = synthesize(self.bn_statistics, labels, self.input_shape, self.settings,
                                     self.generator)
        self.synthesis_history.append(history)
        return images, labels

    def refresh_pool(self, epoch: int, device: torch.device) -> None:
        """Grow the pool (up to ``batches_per_epoch`` new batches) or refresh its oldest batches."""
        if len(self.pool) < self.pool_size:
            for _ in range(min(self.batches_per_epoch, self.pool_size - len(self.pool))):
                self.pool.append(self.synthesize_batch(device))
            newest = self.pool[-1]
        elif self.refresh_per_epoch:
            for _ in range(self.refresh_per_epoch):
                self.pool[self._oldest] = self.synthesize_batch(device)
                newest = self.pool[self._oldest]
                self._oldest = (self._oldest + 1) % self.pool_size
        else:
            return
        if self.grid_path:
            self.save_grid(*newest)

    def save_grid(self, images: torch.Tensor, labels: torch.Tensor, per_class: int = 8) -> None:
        """Up to ``per_class`` images of each class, one class per row, min-max scaled to [0, 1]
        over the grid (rows are padded with the darkest value)."""
        from torchvision.utils import save_image

        images = images.detach().float().cpu()
        labels = labels.cpu()
        fill = float(images.min())
        rows = []
        for c in range(self.num_classes):
            row = images[labels == c][:per_class]
            pad = images.new_full((per_class - len(row), *images.shape[1:]), fill)
            rows.append(torch.cat([row, pad]))
        os.makedirs(os.path.dirname(os.path.abspath(self.grid_path)), exist_ok=True)
        save_image(torch.cat(rows), self.grid_path, nrow=per_class, normalize=True)

    def training_step(self, batch: kdcore.Batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        assert self.distiller is not None
        outputs, student_features = self.student_forward(batch.inputs)
        teacher_features = self.distiller.teacher_features(batch.inputs, indices=batch.indices)
        terms = {"kd": self.kd_weight * kd_loss(outputs, teacher_features[self.teacher_name]["output"],
                                                self.temperature)}
        if self.distiller.points:  # optional feature distill points, computed on the same images
            terms.update(self.distiller.losses(student_features, teacher_features, targets=batch.targets,
                                               indices=batch.indices, epoch=epoch, step=step))
        return terms
