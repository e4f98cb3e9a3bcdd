"""The model and data-set contracts: what the engine needs from a network and from data."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..data import DataSource, TensorSplit
from ..errors import UserError
from ..registry import accepted_params
from ..taps import feature_shapes, resolve_module
from ._base import ContractBase, check, describe, fail, is_finite_scalar, max_abs_diff, seeded, skip

Shape = tuple[int, ...]


class ModelContract(ContractBase):
    """Checks a model: built with ``num_classes``/``in_channels`` context, it maps a batch of
    ``input_shape`` inputs to ``expected_output_shape`` in train and eval mode, every parameter
    trains, and the module paths you document for distill points exist.

    :cvar module_paths: paths users tap (``stage2``, ``layer3.1.relu``...).
    """

    kind = "model"
    input_shape: ClassVar[Shape] = (1, 28, 28)
    num_classes: ClassVar[int] = 10
    expected_output_shape: ClassVar[Shape | None] = None
    module_paths: ClassVar[list[str]] = []
    batch_size: ClassVar[int] = 2

    def base_context(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_channels": self.input_shape[0]}

    def expected(self, num_classes: int | None = None) -> Shape:
        if self.expected_output_shape is not None:
            return tuple(self.expected_output_shape)
        return (num_classes or self.num_classes,)

    def images(self, batch_size: int | None = None) -> torch.Tensor:
        with seeded(self.seed + 1):
            return torch.randn(batch_size or self.batch_size, *self.input_shape)

    def exercise(self) -> None:
        self.build_seeded()(self.images()).float().pow(2).mean().backward()

    def test_is_module(self) -> None:
        model = self.build_seeded()
        check(isinstance(model, nn.Module), f"{self.where()} built {describe(model)}, not an nn.Module")

    def test_output_shape(self) -> None:
        model = self.build_seeded()
        out = model(self.images())
        want = (self.batch_size, *self.expected())
        check(torch.is_tensor(out) and tuple(out.shape) == want,
              f"{self.where()} maps {(self.batch_size, *self.input_shape)} to {describe(out)}, "
              f"expected {want}")
        check(bool(torch.isfinite(out).all()), f"{self.where()}: output is not finite")

    def test_eval_batch_size_one(self) -> None:
        model = self.build_seeded().eval()
        with torch.no_grad():
            out = model(self.images(1))
        check(tuple(out.shape) == (1, *self.expected()),
              f"{self.where()} in eval mode on one image gives {describe(out)}")

    def test_num_classes_respected(self) -> None:
        names, var_kw = accepted_params(self.registered().component.resolve())
        if "num_classes" not in names and not var_kw:
            skip("the factory takes no num_classes")
        if self.expected_output_shape is not None:
            skip("expected_output_shape is fixed")
        with seeded(self.seed):
            model = self.build(num_classes=7)
        out = model(self.images())
        check(tuple(out.shape) == (self.batch_size, 7),
              f"{self.where()} built with num_classes=7 outputs {describe(out)}")

    def test_every_parameter_trains(self) -> None:
        model = self.build_seeded()
        model(self.images()).float().pow(2).mean().backward()
        idle = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        check(not idle, f"{self.where()}: parameters get no gradient from the output: {idle[:4]} "
                        f"(unused layers slow training and break DistributedDataParallel)")

    def test_deterministic_init_with_seed(self) -> None:
        a, b = self.build_seeded().state_dict(), self.build_seeded().state_dict()
        different = [k for k in a if max_abs_diff(a[k], b[k]) > 0]
        check(not different, f"{self.where()}: two builds under the same seed differ in {different[:4]}")

    def test_module_paths_exist(self) -> None:
        if not self.module_paths:
            skip("no module_paths declared")
        model = self.build_seeded()
        for path in self.module_paths:
            try:
                resolve_module(model, path)
            except UserError as exc:
                fail(str(exc))
        shapes = feature_shapes(model, self.images())
        missing = [p for p in self.module_paths if p not in shapes]
        check(not missing, f"{self.where()}: paths {missing} exist but produce no feature in a forward")


class DatasetContract(ContractBase):
    """Checks a data set: given ``params`` its factory returns a :class:`kdcore.data.DataSource`
    with the declared fields, samples of ``input_shape``, and a task that scores its targets.

    :cvar expected: DataSource fields to compare, e.g. ``{"input_shape": (1, 28, 28),
        "num_classes": 10, "name": "my_images"}``; also ``train_size`` and ``test_size``.
    :cvar samples: how many samples of each split to load and check.
    """

    kind = "dataset"
    expected: ClassVar[dict[str, Any]] = {}
    samples: ClassVar[int] = 4

    def source(self) -> DataSource:
        source = self.build_seeded()
        check(isinstance(source, DataSource), f"{self.where()} returned {describe(source)}; return a "
                                              f"kdcore.data.DataSource")
        return source

    def take(self, split: Any, n: int) -> tuple[torch.Tensor, Any]:
        n = min(n, len(split))
        if isinstance(split, TensorSplit):
            index = torch.arange(n)
            return split.inputs[index], split.targets[index]
        items = [split[i] for i in range(n)]
        inputs = torch.stack([torch.as_tensor(x) for x, _ in items])
        ys = [y for _, y in items]
        if all(isinstance(y, int) or (torch.is_tensor(y) and y.dim() == 0) for y in ys):
            return inputs, torch.tensor([int(y) for y in ys])
        if all(torch.is_tensor(y) for y in ys):
            return inputs, torch.stack(ys)
        return inputs, ys

    def exercise(self) -> None:
        self.source()

    def test_returns_data_source(self) -> None:
        self.source()

    def test_declared_fields(self) -> None:
        if not self.expected:
            skip("no expected fields declared")
        source = self.source()
        actual = {"train_size": len(source.train), "test_size": len(source.test)}
        for key, want in self.expected.items():
            got = actual[key] if key in actual else getattr(source, key, "<missing>")
            if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
                got, want = tuple(got), tuple(want)
            check(got == want, f"{self.where()}: {key} is {got!r}, expected {want!r}")

    def test_samples_have_input_shape(self) -> None:
        source = self.source()
        check(isinstance(source.input_shape, tuple) and all(isinstance(d, int) for d in source.input_shape),
              f"{self.where()}: input_shape must be a tuple of ints, got {source.input_shape!r}")
        checked = 0
        for name in ("train", "test"):
            split = getattr(source, name)
            if len(split) == 0:
                continue
            inputs, targets = self.take(split, self.samples)
            check(tuple(inputs.shape[1:]) == tuple(source.input_shape),
                  f"{self.where()}: {name} samples have shape {tuple(inputs.shape[1:])}, but "
                  f"input_shape says {source.input_shape}")
            check(inputs.is_floating_point() and bool(torch.isfinite(inputs).all()),
                  f"{self.where()}: {name} inputs must be finite floats")
            check(len(targets) == len(inputs), f"{self.where()}: {name} has {len(inputs)} inputs "
                                               f"but {len(targets)} targets")
            checked += 1
        check(checked, f"{self.where()}: both splits are empty")

    def test_task_scores_targets(self) -> None:
        """The task's loss is a finite differentiable scalar and its metric reports the primary one."""
        source = self.source()
        task = source.task
        split = source.train if len(source.train) else source.test
        inputs, targets = self.take(split, self.samples)
        classes = source.num_classes or 1
        with seeded(self.seed + 1):
            outputs = torch.randn(len(inputs), classes, requires_grad=True)
        loss = task.loss(outputs, targets)
        check(is_finite_scalar(loss), f"{self.where()}: task.loss gave {describe(loss)}")
        loss.backward()
        check(outputs.grad is not None, f"{self.where()}: task.loss does not depend on the outputs")
        metric = task.new_metric()
        metric.update(outputs.detach(), targets)
        scores = metric.compute()
        check(isinstance(scores, dict) and task.primary_metric in scores,
              f"{self.where()}: metric.compute() gives {describe(scores)}, without the task's "
              f"primary_metric {task.primary_metric!r}")

    def test_fingerprint_stable(self) -> None:
        """Caches (trained teachers) are keyed by the fingerprint: same params, same fingerprint."""
        a, b = self.source(), self.source()
        check(isinstance(a.fingerprint, str) and a.fingerprint,
              f"{self.where()}: fingerprint must be a non-empty string")
        check(a.fingerprint == b.fingerprint, f"{self.where()}: two loads with the same params give "
                                              f"fingerprints {a.fingerprint!r} and {b.fingerprint!r}")
