"""The head and distiller contracts: how loss terms are formed from tapped features."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..components import Distiller, DistillationHead, PreTraining
from ..components.distiller import DistillPoint
from ..errors import UserError
from ..taps import Tap
from ._base import ContractBase, check, describe, fail, is_finite_scalar, max_abs_diff, seeded
from .losses import check_frozen, frozen_state
from .tiny import INPUT_SHAPE, FrozenSource, MeanSquared, changed, sgd_step, snapshot, tiny_cnn

Shape = tuple[int, ...]


def check_terms(terms: Any, what: str) -> dict[str, torch.Tensor]:
    check(isinstance(terms, dict) and terms, f"{what} returned {describe(terms)}; return a non-empty "
                                             f"dict {{term_name: scalar tensor}}")
    for name, value in terms.items():
        check(isinstance(name, str) and name, f"{what}: term names must be non-empty strings, "
                                              f"got {name!r}")
        check(is_finite_scalar(value), f"{what}: term {name!r} is {describe(value)}; each term "
                                       f"must be a finite scalar tensor")
    return terms


class HeadContract(ContractBase):
    """Checks a distillation head: built with the core's ``losses``/connectors context, it
    returns finite scalar terms that train the student and leave the teacher alone.

    Override :meth:`make_losses` to run your head with other losses than the kit's mean
    squared difference.
    """

    kind = "head"
    student_shape: ClassVar[Shape] = (16,)
    teacher_shape: ClassVar[Shape | None] = None
    batch_size: ClassVar[int] = 8

    def make_losses(self) -> dict[str, tuple[float, nn.Module]]:
        """``{term_name: (weight, loss)}`` as the core builds them from the config."""
        return {"mse": (1.0, MeanSquared())}

    def base_context(self) -> dict[str, Any]:
        return {"losses": self.make_losses(), "student_connector": None, "teacher_connector": None,
                "label": "contract head"}

    def shapes(self) -> tuple[Shape, Shape]:
        s = tuple(self.student_shape)
        return s, tuple(self.teacher_shape) if self.teacher_shape is not None else s

    def inputs(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        n = batch_size or self.batch_size
        s, t = self.shapes()
        with seeded(self.seed + 1):
            student, teacher = torch.randn(n, *s), torch.randn(n, *t)
            extra = {"targets": torch.randint(0, 10, (n,)), "indices": torch.arange(n),
                     "epoch": 0, "step": 0}
        return student.requires_grad_(True), teacher, extra

    def terms(self, head: Any, **overrides: Any) -> dict[str, torch.Tensor]:
        student, teacher, extra = self.inputs()
        with seeded(self.seed + 2):
            return check_terms(head(student, teacher, **{**extra, **overrides}), self.where())

    def exercise(self) -> None:
        sum(self.terms(self.build_seeded()).values()).backward()

    def test_is_distillation_head(self) -> None:
        head = self.build_seeded()
        check(isinstance(head, DistillationHead), f"{self.where()} built {describe(head)}; the core "
                                                  f"needs a kdcore.DistillationHead")

    def test_returns_terms(self) -> None:
        self.terms(self.build_seeded())

    def test_gradient_reaches_student(self) -> None:
        head = self.build_seeded()
        student, teacher, extra = self.inputs()
        with seeded(self.seed + 2):
            terms = check_terms(head(student, teacher, **extra), self.where())
        sum(terms.values()).backward()
        check(student.grad is not None and bool(student.grad.abs().sum() > 0),
              f"{self.where()}: no gradient reaches the student feature")

    def test_teacher_stays_frozen(self) -> None:
        source = FrozenSource(self.shapes()[1])
        before = frozen_state({"teacher": source})
        head = self.build_seeded()
        student, raw, extra = self.inputs()
        with torch.no_grad():
            teacher = source(raw)
        with seeded(self.seed + 2):
            terms = check_terms(head(student, teacher, **extra), self.where())
        sum(terms.values()).backward()
        check_frozen({"teacher": source}, before, self.where())

    def test_accepts_extra_context(self) -> None:
        try:
            self.terms(self.build_seeded(), kdcore_contract_new_key=object())
        except TypeError as exc:
            fail(f"{self.where()}: forward must accept **extra (got TypeError: {exc})")

    def test_deterministic_with_seed(self) -> None:
        a, b = (self.terms(self.build_seeded()) for _ in range(2))
        check(a.keys() == b.keys() and all(max_abs_diff(a[k], b[k]) <= 1e-6 for k in a),
              f"{self.where()}: two builds under the same seed give different terms")

    def test_rejects_mismatched_shapes(self) -> None:
        """The core calls ``check_shapes`` once at build time to report mismatches before training."""
        head = self.build_seeded()
        s, _ = self.shapes()
        student = torch.randn(2, *s)
        teacher = torch.randn(2, *s[:-1], s[-1] + 1)
        try:
            head.check_shapes("mse", student, teacher)
        except UserError:
            return
        fail(f"{self.where()}.check_shapes accepted student {tuple(student.shape[1:])} and teacher "
             f"{tuple(teacher.shape[1:])} for a loss that needs equal shapes")

    def test_stages_valid(self) -> None:
        stages = self.build_seeded().stages()
        check(isinstance(stages, list) and all(isinstance(s, PreTraining) for s in stages),
              f"{self.where()}.stages() must return a list of kdcore.PreTraining, got {describe(stages)}")


class DistillerContract(ContractBase):
    """Checks a distiller: built from frozen teachers and distill points, it keeps the teachers
    frozen and untouched and returns finite terms that train the student.

    The default setup is one tiny CNN teacher and one point tapping ``output`` on both sides
    with the kit's mean-squared loss; override :meth:`make_teachers` / :meth:`make_points`.
    """

    kind = "distiller"
    batch_size: ClassVar[int] = 4

    def make_teachers(self) -> dict[str, nn.Module]:
        with seeded(self.seed + 10):
            return {"teacher": tiny_cnn((6, 12, 12))}

    def make_points(self, teachers: dict[str, nn.Module]) -> list[DistillPoint]:
        return [DistillPoint(f"{name}_0", name, Tap("output"), Tap("output"),
                             DistillationHead({"mse": (1.0, MeanSquared())}, label=f"{name} point"))
                for name in teachers]

    def setup(self, params: dict[str, Any] | None = None) -> tuple[Any, nn.Module, dict[str, nn.Module]]:
        teachers = self.make_teachers()
        with seeded(self.seed):
            student = tiny_cnn()
            distiller = self.build(params=params, teachers=teachers, points=self.make_points(teachers))
        return distiller, student, teachers

    def build_defaults(self) -> Any:
        return self.setup(params={})[0]

    def batch(self) -> torch.Tensor:
        with seeded(self.seed + 1):
            return torch.randn(self.batch_size, *INPUT_SHAPE)

    def terms(self, distiller: Any, student: nn.Module) -> dict[str, torch.Tensor]:
        inputs = self.batch()
        features = {"output": student(inputs)}
        with seeded(self.seed + 2):
            teacher_features = distiller.teacher_features(inputs, indices=torch.arange(len(inputs)))
            terms = distiller.losses(features, teacher_features,
                                     targets=torch.zeros(len(inputs), dtype=torch.long),
                                     indices=torch.arange(len(inputs)), epoch=0, step=0)
        return check_terms(terms, f"{self.where()}.losses")

    def exercise(self) -> None:
        distiller, student, _ = self.setup()
        sum(self.terms(distiller, student).values()).backward()

    def test_is_distiller(self) -> None:
        distiller, _, _ = self.setup()
        check(isinstance(distiller, Distiller), f"{self.where()} built {describe(distiller)}; the "
                                                f"core needs a kdcore.Distiller")

    def test_teachers_frozen(self) -> None:
        distiller, _, _ = self.setup()
        distiller.train(True)
        for name, teacher in distiller.teachers.items():
            check(not teacher.training, f"{self.where()}: teacher {name!r} is in train mode after "
                                        f"distiller.train(); teachers stay in eval mode")
            grad = [n for n, p in teacher.named_parameters() if p.requires_grad]
            check(not grad, f"{self.where()}: teacher {name!r} parameters require grad: {grad[:3]}")

    def test_teacher_features_without_grad(self) -> None:
        distiller, _, teachers = self.setup()
        feats = distiller.teacher_features(self.batch(), indices=torch.arange(self.batch_size))
        for name in teachers:
            check(name in feats, f"{self.where()}.teacher_features has no entry for teacher {name!r}")
            out = feats[name].get("output")
            check(torch.is_tensor(out) and tuple(out.shape) == (self.batch_size, 10),
                  f"{self.where()}: teacher {name!r} output feature is {describe(out)}")
            check(not out.requires_grad, f"{self.where()}: teacher features carry autograd history")

    def test_terms_train_student_not_teacher(self) -> None:
        distiller, student, teachers = self.setup()
        before = {n: snapshot(t) for n, t in teachers.items()}
        terms = self.terms(distiller, student)
        sum(terms.values()).backward()
        check(any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in student.parameters()),
              f"{self.where()}: the terms give the student no gradient")
        sgd_step([p for p in distiller.parameters() if p.requires_grad], lr=0.1)
        for name, teacher in distiller.teachers.items():
            moved = changed(before[name], teacher)
            check(not moved, f"{self.where()}: teacher {name!r} changed during a step: {moved[:3]}")

    def test_deterministic_with_seed(self) -> None:
        runs = []
        for _ in range(2):
            distiller, student, _ = self.setup()
            runs.append(self.terms(distiller, student))
        a, b = runs
        check(a.keys() == b.keys() and all(max_abs_diff(a[k], b[k]) <= 1e-6 for k in a),
              f"{self.where()}: two builds under the same seed give different terms")
