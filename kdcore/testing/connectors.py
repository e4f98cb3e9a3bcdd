"""The connector contract: shape adapters between student and teacher features."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..components import DistillationHead
from ..errors import UserError
from ._base import ContractBase, backward_if_graph, check, describe, fail, max_abs_diff, seeded, skip
from .losses import check_stages
from .tiny import MeanSquared

Shape = tuple[int, ...]


class ConnectorContract(ContractBase):
    """Checks a connector: built from ``in_shape``/``out_shape``, it maps features to the
    declared shape, trains, and is reproducible.

    :cvar in_shape: per-sample shape of the feature the connector receives.
    :cvar out_shape: per-sample shape of the feature on the other side.
    :cvar expected_shape: per-sample output shape (default: ``out_shape``).
    :cvar side: ``"student"`` or ``"teacher"``: where the connector sits in the head (stages
        may depend on it).
    :cvar bad_shapes: ``(in_shape, out_shape)`` pairs the connector must reject with a
        :class:`kdcore.UserError` or ``ValueError``.
    :cvar stage_params: parameters that make the connector declare its stages.
    """

    kind = "connector"
    in_shape: ClassVar[Shape] = (8, 7, 7)
    out_shape: ClassVar[Shape] = (16, 7, 7)
    expected_shape: ClassVar[Shape | None] = None
    side: ClassVar[str] = "student"
    bad_shapes: ClassVar[list[tuple[Shape, Shape]]] = []
    stage_params: ClassVar[dict[str, Any] | None] = None
    batch_size: ClassVar[int] = 4

    def base_context(self) -> dict[str, Any]:
        return {"in_shape": tuple(self.in_shape), "out_shape": tuple(self.out_shape)}

    def make_features(self, batch_size: int, shape: Shape) -> torch.Tensor:
        return torch.randn(batch_size, *shape)

    def feature(self, batch_size: int | None = None, shape: Shape | None = None) -> torch.Tensor:
        with seeded(self.seed + 1):
            x = self.make_features(batch_size or self.batch_size, tuple(shape or self.in_shape))
        return x.requires_grad_(True)

    def expected(self) -> Shape:
        return tuple(self.expected_shape if self.expected_shape is not None else self.out_shape)

    def exercise(self) -> None:
        connector = self.build_seeded()
        backward_if_graph(connector(self.feature()).float().pow(2).mean())

    # -- tests ------------------------------------------------------------------------------

    def test_is_module(self) -> None:
        connector = self.build_seeded()
        check(isinstance(connector, nn.Module), f"{self.where()} built {describe(connector)}; a "
                                                f"connector must be an nn.Module (kdcore.Connector)")

    def test_output_shape(self) -> None:
        connector = self.build_seeded()
        out = connector(self.feature())
        want = (self.batch_size, *self.expected())
        check(torch.is_tensor(out) and tuple(out.shape) == want,
              f"{self.where()} maps {(self.batch_size, *self.in_shape)} to {describe(out)}, "
              f"expected shape {want}")
        check(bool(torch.isfinite(out).all()), f"{self.where()} output is not finite")

    def test_eval_mode_output_shape(self) -> None:
        """The core probes shapes with two samples in eval mode, without autograd."""
        connector = self.build_seeded()
        connector.eval()
        with torch.no_grad():
            out = connector(self.feature(batch_size=2).detach())
        check(tuple(out.shape) == (2, *self.expected()),
              f"{self.where()} in eval mode gives {describe(out)}, expected (2, *{self.expected()})")

    def test_gradient_flows(self) -> None:
        """Gradients reach the input feature and the connector's own parameters."""
        connector = self.build_seeded()
        x = self.feature()
        connector(x).float().pow(2).mean().backward()
        check(x.grad is not None and bool(x.grad.abs().sum() > 0),
              f"{self.where()}: no gradient reaches the input feature")
        params = [p for p in connector.parameters() if p.requires_grad]
        if params:
            check(any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params),
                  f"{self.where()}: none of its parameters gets a gradient")

    def test_input_not_modified(self) -> None:
        connector = self.build_seeded()
        x = self.feature()
        before = x.detach().clone()
        connector(x)
        check(torch.equal(x.detach(), before), f"{self.where()} modified its input in place")

    def test_deterministic_with_seed(self) -> None:
        outs = [self.build_seeded()(self.feature()) for _ in range(2)]
        check(max_abs_diff(outs[0], outs[1]) <= 1e-6,
              f"{self.where()}: two builds under the same seed give different outputs")

    def test_unsupported_shapes_raise(self) -> None:
        if not self.bad_shapes:
            skip("no bad_shapes declared")
        for in_shape, out_shape in self.bad_shapes:
            try:
                with seeded(self.seed):
                    connector = self.build(in_shape=tuple(in_shape), out_shape=tuple(out_shape))
                connector(self.feature(shape=tuple(in_shape)))
            except (UserError, ValueError):
                continue
            except Exception as exc:
                fail(f"{self.where()} for in_shape {tuple(in_shape)} / out_shape {tuple(out_shape)} "
                     f"raised {type(exc).__name__}: {exc}; raise kdcore.UserError naming the shapes")
            fail(f"{self.where()} accepted in_shape {tuple(in_shape)} / out_shape "
                 f"{tuple(out_shape)}, which bad_shapes says it does not support")

    def test_stages_valid(self) -> None:
        with seeded(self.seed):
            connector = self.build(params=self.stage_params if self.stage_params is not None else self.params)
        if not hasattr(connector, "stages"):
            skip("the connector has no stages() method")
        check(self.side in ("student", "teacher"), f"side must be 'student' or 'teacher', got {self.side!r}")
        sides = {f"{self.side}_connector": connector}
        head = DistillationHead({"term": (1.0, MeanSquared())}, label="contract head", **sides)
        own = self.feature()
        with seeded(self.seed + 2):
            other = self.make_features(self.batch_size, tuple(self.out_shape))
        if self.side == "student":
            student, teacher = own, other
        else:
            student, teacher = other.requires_grad_(True), own.detach()
        extra = {"targets": torch.zeros(self.batch_size, dtype=torch.long),
                 "indices": torch.arange(self.batch_size), "epoch": 0, "step": 0}
        if not check_stages(connector, head, student, teacher, extra, self.where()):
            skip("no stages declared with these params (set stage_params to check them)")

    def test_state_dict_round_trip(self) -> None:
        first = self.build_seeded()
        with seeded(self.seed + 100):
            second = self.build()
        second.load_state_dict(first.state_dict())
        x = self.feature()
        check(max_abs_diff(first(x), second(x)) <= 1e-6,
              f"{self.where()}: a copy loaded from the state_dict maps features differently")
