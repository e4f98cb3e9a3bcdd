"""The algorithm contract: one training step on a tiny CNN, as the engine performs it."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..components import Algorithm, Batch, DistillationHead, PreTraining
from ..components.distiller import DistillPoint
from ..engine.batches import TrainBatches
from ..engine.loop import LoopSettings, NonFiniteLoss, TrainingState, Update, checked_own_optimizers
from ..errors import UserError
from ..registry import build
from ..task import ClassificationTask
from ..taps import Tap
from ._base import ContractBase, check, describe, fail, max_abs_diff, num, seeded, skip
from .heads import check_terms
from .tiny import (INPUT_SHAPE, NUM_CLASSES, MeanSquared, changed, random_split, sgd_step, snapshot,
                   tiny_cnn)


class AlgorithmContract(ContractBase):
    """Checks an algorithm: built with the core's context around a tiny CNN student (and a tiny
    frozen teacher unless ``teachers = 0``), one step on random 1x28x28 data returns finite
    terms, and backprop plus one optimizer step changes the student but not the teacher.
    An algorithm that owns its step (``optimizers()`` returns a dict) is stepped as the engine
    does it: ``optimization_step`` with the engine's ``update(loss, name)``, over plain SGD; its
    optimizers must pass the run's checks (non-empty names, every trainable parameter once),
    and each must be updated.

    :cvar teachers: number of tiny teachers (0: the algorithm gets ``distiller=None``).
    :cvar num_samples: size of the random training split.
    Override :meth:`make_points` to tap other module paths or use other losses.
    """

    kind = "algorithm"
    teachers: ClassVar[int] = 1
    batch_size: ClassVar[int] = 8
    num_samples: ClassVar[int] = 32
    lr: ClassVar[float] = 0.05

    def make_student(self) -> nn.Module:
        return tiny_cnn((4, 8, 8))

    def make_teachers(self) -> dict[str, nn.Module]:
        with seeded(self.seed + 10):
            return {f"teacher{i}" if i else "teacher": tiny_cnn((6, 12, 12)) for i in range(self.teachers)}

    def make_points(self, teachers: dict[str, nn.Module]) -> list[DistillPoint]:
        """One point per teacher: ``output`` on both sides, the kit's mean-squared loss."""
        return [DistillPoint(f"{name}_0", name, Tap("output"), Tap("output"),
                             DistillationHead({"mse": (1.0, MeanSquared())}, label=f"{name} point"))
                for name in teachers]

    def build_defaults(self) -> Any:
        return self.setup(params={})["algorithm"]

    def setup(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything one test needs: the algorithm, its student, teachers and training data."""
        teachers = self.make_teachers()
        with seeded(self.seed):
            student = self.make_student()
            distiller = None
            if teachers:
                distiller = build("distiller", "teacher", plugins=self.plugin_set(),
                                  context={"teachers": teachers, "points": self.make_points(teachers)})
            train = random_split(self.num_samples, self.seed)
            context = {"student": student, "task": ClassificationTask(NUM_CLASSES),
                       "distiller": distiller, "num_classes": NUM_CLASSES,
                       "input_shape": INPUT_SHAPE, "num_samples": self.num_samples,
                       "batch_size": self.batch_size, "seed": self.seed,
                       "test_data": random_split(16, self.seed + 1)}
            algorithm = self.build(params=params, **context)
        return {"algorithm": algorithm, "student": student, "teachers": teachers, "train": train}

    def first_batch(self, algorithm: Any, train: Any) -> Batch:
        default = TrainBatches(train, self.batch_size, self.seed, device=torch.device("cpu"))
        batches = algorithm.train_batches(default)
        return next(iter(batches.epoch(0, 0)))

    def own_optimizers(self, algorithm: Any) -> dict[str, torch.optim.Optimizer] | None:
        """The algorithm's own optimizers (plain SGD at ``lr``), checked as the run checks them,
        or None on the default path."""
        try:
            return checked_own_optimizers(algorithm, lambda groups: torch.optim.SGD(groups, lr=self.lr))
        except UserError as error:
            fail(f"{self.where()}: {error}")

    def step_terms(self, parts: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One step's terms. An own-step algorithm has taken its updates when this returns,
        through the engine's ``update`` (``parts["not_updated"]`` names the optimizers it left)."""
        algorithm = parts["algorithm"]
        algorithm.train()
        batch = self.first_batch(algorithm, parts["train"])
        optimizers = self.own_optimizers(algorithm)
        with seeded(self.seed + 2):
            if optimizers is None:
                terms = algorithm.training_step(batch, epoch=0, step=0)
            else:
                engine_update = Update(LoopSettings(1, optimizers), TrainingState())

                def update(loss: torch.Tensor, name: str) -> bool:
                    check(loss.requires_grad, f"{self.where()}: update(loss, {name!r}) got a loss "
                                              f"that depends on no trainable parameter")
                    try:
                        return engine_update(loss, name)
                    except (UserError, NonFiniteLoss) as error:  # a kit failure, not a run's stop
                        fail(f"{self.where()}: {error}")

                terms = algorithm.optimization_step(batch, epoch=0, step=0, update=update)
                parts["not_updated"] = sorted(name for name, stepped in engine_update.stepped.items()
                                              if not stepped)
        what = "optimization_step" if optimizers is not None else "training_step"
        return check_terms(terms, f"{self.where()}.{what}")

    def exercise(self) -> None:
        parts = self.setup()
        terms = self.step_terms(parts)
        if "not_updated" not in parts:
            sum(terms.values()).backward()

    def test_is_algorithm(self) -> None:
        algorithm = self.setup()["algorithm"]
        check(isinstance(algorithm, Algorithm), f"{self.where()} built {describe(algorithm)}; the "
                                                f"core needs a kdcore.Algorithm")

    def test_training_step_terms(self) -> None:
        parts = self.setup()
        terms = self.step_terms(parts)
        if "not_updated" in parts:  # an own step: its terms are for the log, its updates are done
            check(not parts["not_updated"], f"{self.where()}.optimization_step never called update() "
                                            f"for optimizer(s) {parts['not_updated']}")
            return
        check(any(v.requires_grad for v in terms.values()),
              f"{self.where()}: no loss term depends on a trainable parameter")

    def test_step_changes_student(self) -> None:
        """The engine's step: sum the terms, backprop, one optimizer step over
        ``trainable_parameters()``. The student changes; teachers do not."""
        parts = self.setup()
        algorithm, student = parts["algorithm"], parts["student"]
        student_before = snapshot(student)
        teachers_before = {n: snapshot(t) for n, t in parts["teachers"].items()}
        terms = self.step_terms(parts)
        params = algorithm.trainable_parameters()
        check(params, f"{self.where()}.trainable_parameters() is empty")
        if "not_updated" not in parts:  # the engine's step; an own step took its updates already
            sum(terms.values()).backward()
            sgd_step(params, self.lr)
        moved = [k for k in changed(student_before, student) if "running" not in k and "num_batches" not in k]
        check(moved, f"{self.where()}: one step did not change the student's weights; are its "
                     f"parameters in trainable_parameters() and its terms connected to it?")
        for name, teacher in parts["teachers"].items():
            check(not changed(teachers_before[name], teacher),
                  f"{self.where()}: teacher {name!r} changed during a training step")
            check(not any(p.requires_grad for p in teacher.parameters()),
                  f"{self.where()}: teacher {name!r} was unfrozen")

    def test_evaluation_models(self) -> None:
        parts = self.setup()
        models = parts["algorithm"].evaluation_models()
        check(isinstance(models, dict) and models, f"{self.where()}.evaluation_models() returned "
                                                   f"{describe(models)}; return {{name: nn.Module}}")
        for name, model in models.items():
            check(isinstance(model, nn.Module), f"{self.where()}: evaluation model {name!r} is "
                                                f"{describe(model)}")
        first = next(iter(models.values()))
        first.eval()
        with torch.no_grad():
            out = first(parts["train"].inputs[:2])
        check(torch.is_tensor(out) and tuple(out.shape) == (2, NUM_CLASSES),
              f"{self.where()}: the exported model maps 2 images to {describe(out)}, expected (2, 10)")

    def test_train_batches(self) -> None:
        """Batches (default or the algorithm's own) are kdcore.Batch objects the engine can use."""
        parts = self.setup()
        default = TrainBatches(parts["train"], self.batch_size, self.seed, device=torch.device("cpu"))
        batches = parts["algorithm"].train_batches(default)
        if batches is default:
            skip("uses the default training batches")
        check(len(batches) > 0, f"{self.where()}.train_batches() has no batches per epoch")
        batch = next(iter(batches.epoch(0, 0)))
        check(isinstance(batch, Batch), f"{self.where()}.train_batches() yields {describe(batch)}, "
                                        f"not kdcore.Batch")
        check(tuple(batch.inputs.shape[1:]) == INPUT_SHAPE,
              f"{self.where()}: batch inputs have shape {tuple(batch.inputs.shape)}")
        check(batch.indices.dtype == torch.long, f"{self.where()}: batch indices must be a LongTensor")

    def test_deterministic_with_seed(self) -> None:
        a, b = (self.step_terms(self.setup()) for _ in range(2))
        check(a.keys() == b.keys() and all(max_abs_diff(a[k], b[k]) <= 1e-6 for k in a),
              f"{self.where()}: two builds under the same seed give different terms: "
              f"{ {k: num(v) for k, v in a.items()} } vs { {k: num(v) for k, v in b.items()} }")

    def test_stages_valid(self) -> None:
        stages = list(self.setup()["algorithm"].stages())
        for item in stages:
            check(isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                  and isinstance(item[1], PreTraining),
                  f"{self.where()}.stages() must yield (point_name, kdcore.PreTraining), "
                  f"got {describe(item)}")
        if not stages:
            skip("no stages declared")

