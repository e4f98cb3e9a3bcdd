"""Be Your Own Teacher (Zhang et al., ICCV 2019) as a kdcore algorithm.

One network, no teachers. Shallow classifiers are attached at named stages; the network's own
output (the deepest classifier) teaches them. For each shallow exit ``i``:

    ce_weight * CE(q_i, y) + kl_weight * T^2 * KL(q_C^T || q_i^T) + feature_weight * ||F_i - F_C||^2

and the deepest classifier gets ``deep_ce_weight * CE(q_C, y)``. ``q_C`` and ``F_C`` are detached:
the deep side teaches and is not pulled towards the shallow exits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdcore
from kdcore.taps import OUTPUT, FeatureTaps, Tap, feature_shapes, resolve_module

from .exits import ExitClassifier, ExitModel


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, batch mean."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    return kl * (t * t)


def feature_l2(shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance per sample, averaged over the batch."""
    return (shallow - deep).pow(2).flatten(1).sum(dim=1).mean()


def _spatial_target(student: nn.Module, sample: torch.Tensor, deep_shape: tuple[int, ...]) -> int:
    """Resolution the exits downsample to: the deep map's, or for a flat deep feature the
    smallest spatial size (> 1) of any feature map in the network (its last stage)."""
    if len(deep_shape) == 3:
        return deep_shape[1]
    sizes = [s[1] for s in feature_shapes(student, sample).values() if len(s) == 3 and s[1] > 1]
    return min(sizes) if sizes else 1


class SelfDistillation(kdcore.Algorithm):
    """Train the network and its shallow exits together; the deepest exit teaches the others.

    :param exits: module paths of the shallow stages that get a classifier (feature maps).
    :param deep_feature: module path of the deepest feature the exits' bottleneck features are
        pulled towards (default ``embedding``: the flat, globally pooled penultimate feature, as
        the reference's ``neck.gap``). A map ``(D, H, W)`` works too.
    :param temperature: softening temperature ``T`` of the KL term (paper and mmrazor: 3).
    :param ce_weight: weight of each exit's cross-entropy on the labels (``1 - alpha``; 0.7).
    :param kl_weight: weight of each exit's KL from the deepest output (``alpha``; 0.3).
    :param feature_weight: weight of each exit's feature L2 (``lambda``; 0.03).
    :param deep_ce_weight: weight of the deepest classifier's cross-entropy (1.0).
    """

    takes_teachers = False  # the core refuses a config with teachers, naming the key

    def __init__(self, student: nn.Module, task: Any, distiller: kdcore.Distiller | None = None, *,
                 input_shape: Sequence[int], num_classes: int,
                 exits: Sequence[str] = ("stage1", "stage2"), deep_feature: str = "embedding",
                 temperature: float = 3.0, ce_weight: float = 0.7, kl_weight: float = 0.3,
                 feature_weight: float = 0.03, deep_ce_weight: float = 1.0) -> None:
        if distiller is not None and len(distiller.teachers):
            raise kdcore.UserError("algorithm 'self_distillation' trains one network without teachers "
                                   "(the deepest exit is the teacher); set teachers: []",
                                   key_path="algorithm")
        exits = list(exits)
        if not exits:
            raise kdcore.UserError("algorithm.exits: give at least one module path, e.g. [stage1, stage2]",
                                   key_path="algorithm.exits")
        if temperature <= 0:
            raise kdcore.UserError(f"algorithm.temperature: must be > 0, got {temperature}",
                                   key_path="algorithm.temperature")
        for i, path in enumerate(exits):
            if path == OUTPUT or path == deep_feature:
                raise kdcore.UserError(f"algorithm.exits[{i}]: {path!r} is the deepest side; an exit "
                                       "must be a shallower module",
                                       key_path=f"algorithm.exits[{i}]")
            if exits.index(path) != i:
                raise kdcore.UserError(f"algorithm.exits[{i}]: {path!r} is listed twice",
                                       key_path=f"algorithm.exits[{i}]")
            resolve_module(student, path, where=f"algorithm.exits[{i}]")
        if deep_feature != OUTPUT:
            resolve_module(student, deep_feature, where="algorithm.deep_feature")
        super().__init__(student, task, None)
        self.exits = exits
        self.deep_feature = deep_feature
        self.temperature = float(temperature)
        self.ce_weight, self.kl_weight = float(ce_weight), float(kl_weight)
        self.feature_weight, self.deep_ce_weight = float(feature_weight), float(deep_ce_weight)

        taps = [Tap(p) for p in exits] + [Tap(deep_feature)]
        sample = torch.zeros(2, *input_shape)
        shapes = self._probe(student, taps, sample)
        deep_shape = shapes[deep_feature]
        target_hw = _spatial_target(student, sample, deep_shape)
        classifiers = []
        for i, path in enumerate(exits):
            try:
                classifiers.append(ExitClassifier(shapes[path], deep_shape, target_hw, num_classes))
            except ValueError as exc:
                raise kdcore.UserError(f"algorithm.exits[{i}] ({path!r}): {exc}",
                                       key_path=f"algorithm.exits[{i}]") from None
        self.classifiers = nn.ModuleList(classifiers)
        self.taps = FeatureTaps(student, taps, where="algorithm exit path")
        # the feature keys the step reads, worked out once (it runs every batch)
        self._deep_key = Tap(deep_feature).key
        self._exit_keys = [Tap(path).key for path in exits]

    @staticmethod
    @torch.no_grad()
    def _probe(student: nn.Module, taps: list[Tap], sample: torch.Tensor) -> dict[str, tuple[int, ...]]:
        was_training = student.training
        student.eval()
        with FeatureTaps(student, taps, where="algorithm exit path") as recorder:
            try:
                recorder.record_output(student(sample))
            finally:
                student.train(was_training)
            return {t.path: tuple(recorder[t].shape[1:]) for t in taps}

    def training_step(self, batch: kdcore.Batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        # the step's features live in this dict alone, so they die with the step
        logits, features = self.taps.run(self.student, batch.inputs)
        teacher_logits = logits.detach()
        deep = features[self._deep_key].detach()
        terms = {"ce": self.deep_ce_weight * self.task.loss(logits, batch.targets)}
        for path, key, classifier in zip(self.exits, self._exit_keys, self.classifiers):
            feature, exit_logits = classifier(features[key])
            if self.ce_weight:
                terms[f"ce_{path}"] = self.ce_weight * self.task.loss(exit_logits, batch.targets)
            if self.kl_weight:
                terms[f"kl_{path}"] = self.kl_weight * soft_kl(exit_logits, teacher_logits, self.temperature)
            if self.feature_weight:
                terms[f"l2_{path}"] = self.feature_weight * feature_l2(feature, deep)
        return terms

    def evaluation_models(self) -> dict[str, nn.Module]:
        """The plain network first (exported as student.pt), then one early-exit model per exit."""
        models: dict[str, nn.Module] = {"student": self.student}
        for path, classifier in zip(self.exits, self.classifiers):
            model = ExitModel(self.student, path, classifier)
            models[f"exit_{path}"] = model.train(self.training)  # evaluate() restores this mode
        return models

    def remove_taps(self) -> None:
        super().remove_taps()
        self.taps.remove()
