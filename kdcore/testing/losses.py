"""The loss contract: what the core relies on when it calls a distillation loss."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..components import DistillationHead, PreTraining
from ..errors import UserError
from ._base import (ContractBase, backward_if_graph, check, describe, fail, is_finite_scalar,
                    max_abs_diff, num, seeded, skip)
from .tiny import FrozenSource, changed, snapshot

Shape = tuple[int, ...]


def check_stages(owner: Any, head: DistillationHead, student_raw: torch.Tensor,
                 teacher_raw: torch.Tensor, extra: dict[str, Any], what: str) -> int:
    """``owner.stages(head)`` returns valid :class:`kdcore.PreTraining` s whose loss trains something.
    Returns how many stages were checked."""
    stages = owner.stages(head)
    check(isinstance(stages, list), f"{what}.stages(head) returned {describe(stages)}; return a "
                                    f"list of kdcore.PreTraining (empty for none)")
    for stage in stages:
        check(isinstance(stage, PreTraining),
              f"{what}.stages(head) holds {describe(stage)}, not a kdcore.PreTraining")
        label = f"{what} stage {stage.name!r}"
        check(isinstance(stage.name, str) and stage.name, f"{what}: a stage needs a name")
        check(isinstance(stage.epochs, int) and stage.epochs >= 0,
              f"{label}: epochs must be an int >= 0, got {stage.epochs!r}")
        check(stage.optimizer in ("sgd", "adam"), f"{label}: optimizer must be 'sgd' or 'adam', "
                                                  f"got {stage.optimizer!r}")
        check(stage.lr > 0, f"{label}: lr must be > 0, got {stage.lr!r}")
        student = student_raw.detach().clone().requires_grad_(True) if stage.needs_student else None
        value = stage.loss(student, teacher_raw, **extra)
        check(is_finite_scalar(value), f"{label}: loss returned {describe(value)}; the stage "
                                       f"needs a finite scalar")
        if stage.parameters is not None:
            params = [p for p in stage.parameters() if p.requires_grad]
            check(params, f"{label}: parameters() gives no trainable parameter")
            check(value.requires_grad, f"{label}: the loss does not depend on its parameters")
            value.backward()
            check(any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params),
                  f"{label}: backward gives no gradient to the stage's parameters")
        else:
            check(stage.needs_student, f"{label}: needs_student=False with parameters=None "
                                       f"would train the student on a loss that ignores it")
            check(value.requires_grad, f"{label}: the loss does not depend on the student")
            value.backward()
            check(student is not None and student.grad is not None,
                  f"{label}: backward gives no gradient to the student feature")
    return len(stages)


def check_frozen(modules: dict[str, nn.Module], before: dict[str, Any], what: str) -> None:
    """The frozen modules were neither unfrozen, switched to train mode, given gradients, nor
    changed (weights or buffers such as BatchNorm running stats)."""
    for name, module in modules.items():
        snap, training, frozen = before[name]
        check(module.training == training, f"{what} switched the frozen {name} to "
                                           f"{'train' if module.training else 'eval'} mode")
        for pname, p in module.named_parameters():
            if pname in frozen:
                check(not p.requires_grad, f"{what} set requires_grad on the frozen {name}.{pname}")
                check(p.grad is None, f"{what} sent a gradient into the frozen {name}.{pname}; "
                                      f"the teacher must not be trained")
        moved = changed(snap, module)
        check(not moved, f"{what} changed the frozen {name}: {', '.join(moved[:4])}")


def frozen_state(modules: dict[str, nn.Module]) -> dict[str, Any]:
    return {name: (snapshot(m), m.training,
                   {n for n, p in m.named_parameters() if not p.requires_grad})
            for name, m in modules.items()}


class LossContract(ContractBase):
    """Checks a distillation loss the way the core uses it.

    Subclass it in your plugin's tests::

        class TestCosineContract(LossContract):
            component = "cosine_feature"          # or "acme:cosine_feature"
            params = {"eps": 1e-8}                 # YAML parameters
            student_shape = (32,)                  # per-sample feature shapes after connectors
            teacher_shape = (32,)
            bad_shapes = [((32, 7, 7), (32,))]     # shapes the loss must refuse clearly

    :cvar student_shape: per-sample student feature shape (the factory's ``student_shape``).
    :cvar teacher_shape: per-sample teacher feature shape (default: ``student_shape``).
    :cvar more_shapes: further ``(student_shape, teacher_shape)`` pairs the loss supports.
    :cvar bad_shapes: ``(student_shape, teacher_shape)`` pairs the loss must reject with a
        :class:`kdcore.UserError` or ``ValueError`` (at build or on the first call).
    :cvar stage_params: parameters that make the loss declare its stages (default ``params``).
    :cvar context: further context values, e.g. ``{"teacher_module": nn.BatchNorm2d(16)}``.
    """

    kind = "loss"
    student_shape: ClassVar[Shape] = (10,)
    teacher_shape: ClassVar[Shape | None] = None
    more_shapes: ClassVar[list[tuple[Shape, Shape]]] = []
    bad_shapes: ClassVar[list[tuple[Shape, Shape]]] = []
    stage_params: ClassVar[dict[str, Any] | None] = None
    batch_size: ClassVar[int] = 8
    num_classes: ClassVar[int] = 10
    num_samples: ClassVar[int] = 64

    # -- inputs -----------------------------------------------------------------------------

    def shapes(self) -> tuple[Shape, Shape]:
        s = tuple(self.student_shape)
        return s, tuple(self.teacher_shape) if self.teacher_shape is not None else s

    def base_context(self) -> dict[str, Any]:
        s, t = self.shapes()
        return {"student_shape": s, "teacher_shape": t, "num_samples": self.num_samples,
                "num_classes": self.num_classes, "student_module": None, "teacher_module": None}

    def make_features(self, batch_size: int, shape: Shape, side: str) -> torch.Tensor:
        """A ``side`` ('student' or 'teacher') feature batch; override for special value ranges."""
        return torch.randn(batch_size, *shape)

    def make_extra(self, batch_size: int) -> dict[str, Any]:
        """The batch context the head passes to every loss."""
        return {"targets": torch.randint(0, self.num_classes, (batch_size,)),
                "indices": torch.arange(batch_size, dtype=torch.long) % self.num_samples,
                "epoch": 0, "step": 0}

    def inputs(self, batch_size: int | None = None, shapes: tuple[Shape, Shape] | None = None,
               seed_offset: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Seeded (student, teacher, extra); the student requires grad, the teacher does not."""
        n = batch_size or self.batch_size
        s_shape, t_shape = shapes or self.shapes()
        with seeded(self.seed + seed_offset):
            student = self.make_features(n, s_shape, "student")
            teacher = self.make_features(n, t_shape, "teacher")
            extra = self.make_extra(n)
        return student.requires_grad_(True), teacher, extra

    def call(self, loss: Any, student: torch.Tensor, teacher: torch.Tensor, extra: dict[str, Any],
             seed_offset: int = 2) -> Any:
        with seeded(self.seed + seed_offset):
            return loss(student, teacher, **extra)

    def build_for(self, shapes: tuple[Shape, Shape], **context: Any) -> Any:
        s, t = shapes
        with seeded(self.seed):
            return self.build(student_shape=s, teacher_shape=t, **context)

    def exercise(self) -> None:
        loss = self.build_seeded()
        student, teacher, extra = self.inputs()
        backward_if_graph(self.call(loss, student, teacher, extra))

    # -- tests ------------------------------------------------------------------------------

    def test_is_module(self) -> None:
        loss = self.build_seeded()
        check(isinstance(loss, nn.Module), f"{self.where()} built {describe(loss)}; a loss must be "
                                           f"an nn.Module (subclass kdcore.Loss)")

    def test_returns_finite_scalar(self) -> None:
        loss = self.build_seeded()
        student, teacher, extra = self.inputs()
        value = self.call(loss, student, teacher, extra)
        check(torch.is_tensor(value) and value.dim() == 0,
              f"{self.where()} returned {describe(value)}; return a scalar tensor (reduce over "
              f"the batch, e.g. .mean()): the engine adds loss terms")
        check(value.is_floating_point(), f"{self.where()} returned dtype {value.dtype}")
        check(is_finite_scalar(value), f"{self.where()} returned {num(value)} on random features")

    def test_declared_shapes(self) -> None:
        """Every declared shape pair works behind the core's head (which checks ``same_shape``)."""
        for shapes in [self.shapes(), *[(tuple(s), tuple(t)) for s, t in self.more_shapes]]:
            loss = self.build_for(shapes)
            head = DistillationHead({"term": (1.0, loss)}, label="contract head")
            student, teacher, extra = self.inputs(shapes=shapes)
            try:
                with seeded(self.seed + 2):
                    terms = head(student, teacher, **extra)
            except UserError as exc:
                fail(f"{self.where()} on student {shapes[0]} / teacher {shapes[1]}: {exc}. A loss "
                     f"that compares features of different shapes sets same_shape = False")
            check(is_finite_scalar(terms["term"]),
                  f"{self.where()} on student {shapes[0]} / teacher {shapes[1]} returned "
                  f"{describe(terms['term'])}")

    def test_batch_size_one(self) -> None:
        loss = self.build_seeded()
        student, teacher, extra = self.inputs(batch_size=1)
        value = self.call(loss, student, teacher, extra)
        check(is_finite_scalar(value), f"{self.where()} on a batch of one sample returned "
                                       f"{describe(value)}; guard divisions by batch statistics")

    def test_gradient_reaches_student(self) -> None:
        loss = self.build_seeded()
        student, teacher, extra = self.inputs()
        value = self.call(loss, student, teacher, extra)
        check(torch.is_tensor(value) and value.requires_grad,
              f"{self.where()}: the value does not depend on the student feature (detached?)")
        value.backward()
        grad = student.grad
        check(grad is not None, f"{self.where()}: no gradient reaches the student feature")
        check(bool(torch.isfinite(grad).all()), f"{self.where()}: the student gradient is not finite")
        check(bool(grad.abs().sum() > 0), f"{self.where()}: the student gradient is all zeros on "
                                          f"random features, so the student cannot learn from it")

    def test_teacher_stays_frozen(self) -> None:
        """The teacher feature comes from a frozen module under ``no_grad``, as in the core; the
        loss must not unfreeze, train or change it, nor the ``teacher_module`` it is given."""
        s_shape, t_shape = self.shapes()
        source = FrozenSource(t_shape)
        modules = {"teacher": source}
        given = self.context.get("teacher_module")
        if isinstance(given, nn.Module):
            modules["teacher_module"] = given
        before = frozen_state(modules)
        loss = self.build_seeded()
        student, raw, extra = self.inputs()
        with torch.no_grad():
            teacher = source(raw)
        value = self.call(loss, student, teacher, extra)
        if torch.is_tensor(value) and value.requires_grad:
            value.backward()
        check_frozen(modules, before, self.where())

    def test_inputs_not_modified(self) -> None:
        """Features are shared by every loss of a head: changing them in place breaks the others."""
        loss = self.build_seeded()
        student, teacher, extra = self.inputs()
        s0, t0 = student.detach().clone(), teacher.clone()
        self.call(loss, student, teacher, extra)
        check(torch.equal(student.detach(), s0), f"{self.where()} modified the student feature in place")
        check(torch.equal(teacher, t0), f"{self.where()} modified the teacher feature in place")

    def test_accepts_extra_context(self) -> None:
        """``forward`` takes ``**extra``: the core may pass new keys in later versions."""
        loss = self.build_seeded()
        student, teacher, extra = self.inputs()
        extra["kdcore_contract_new_key"] = object()
        try:
            self.call(loss, student, teacher, extra)
        except TypeError as exc:
            fail(f"{self.where()}: forward must accept **extra (got TypeError: {exc})")

    def test_deterministic_with_seed(self) -> None:
        """Two builds under the same seed give the same value on the same inputs."""
        values = []
        for _ in range(2):
            loss = self.build_seeded()
            student, teacher, extra = self.inputs()
            values.append(self.call(loss, student, teacher, extra))
        diff = max_abs_diff(values[0], values[1])
        check(diff <= 1e-6 * (1 + float(values[0].detach().abs())),
              f"{self.where()} gave {num(values[0])} then {num(values[1])} for the same seed; "
              f"draw random numbers from torch's seeded generator")

    def test_repeated_call_same_value(self) -> None:
        """Calling the same module twice on the same batch gives the same value (no hidden state
        drift). Stateful losses (memory banks) list this test in ``tests_to_skip``."""
        loss = self.build_seeded()
        student, teacher, extra = self.inputs()
        first = self.call(loss, student, teacher, extra)
        second = self.call(loss, student, teacher, extra)
        check(max_abs_diff(first, second) <= 1e-6 * (1 + float(first.detach().abs())),
              f"{self.where()} gave {num(first)} then {num(second)} on the same batch")

    def test_unsupported_shapes_raise(self) -> None:
        """Shapes listed in ``bad_shapes`` fail with a clear UserError or ValueError."""
        if not self.bad_shapes:
            skip("no bad_shapes declared")
        for s_shape, t_shape in self.bad_shapes:
            shapes = (tuple(s_shape), tuple(t_shape))
            try:
                loss = self.build_for(shapes)
                student, teacher, extra = self.inputs(shapes=shapes)
                self.call(loss, student, teacher, extra)
            except (UserError, ValueError):
                continue
            except Exception as exc:
                fail(f"{self.where()} on student {shapes[0]} / teacher {shapes[1]} raised "
                     f"{type(exc).__name__}: {exc}; raise kdcore.UserError (or ValueError) saying "
                     f"which shapes it needs")
            fail(f"{self.where()} accepted student {shapes[0]} / teacher {shapes[1]}, which "
                 f"bad_shapes says it does not support")

    def test_stages_valid(self) -> None:
        """``stages(head)`` returns kdcore.PreTraining objects whose loss is finite and trains something."""
        with seeded(self.seed):
            loss = self.build(params=self.stage_params if self.stage_params is not None else self.params)
        if not hasattr(loss, "stages"):
            skip("the loss has no stages() method")
        head = DistillationHead({"term": (2.0, loss)}, label="contract head")
        student, teacher, extra = self.inputs()
        if not check_stages(loss, head, student, teacher, extra, self.where()):
            skip("no stages declared with these params (set stage_params to check them)")

    def test_state_dict_round_trip(self) -> None:
        """All state lives in the state_dict, so a resumed run computes what the first run did."""
        first = self.build_seeded()
        with seeded(self.seed + 100):
            second = self.build()
        second.load_state_dict(first.state_dict())
        student, teacher, extra = self.inputs()
        a = self.call(first, student, teacher, extra)
        b = self.call(second, student, teacher, extra)
        check(max_abs_diff(a, b) <= 1e-6 * (1 + float(a.detach().abs())),
              f"{self.where()}: a copy loaded from the state_dict gives {num(b)} instead of "
              f"{num(a)}; register state as parameters or buffers")
