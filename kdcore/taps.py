"""Feature taps: forward hooks that record a module's output (or input) by dotted path.

Paths follow ``named_modules()`` (``layer4.1.conv2``; Sequential and ModuleList indices are path
parts). The reserved path ``output`` is the model's own return value (its logits). Taps record
into a dict that is cleared before each forward; hooks are removed by :meth:`FeatureTaps.remove`
or when the ``with`` block ends.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import torch
from torch import nn

from .errors import UserError

OUTPUT = "output"
IO = Literal["output", "input"]


@attrs.frozen
class Tap:
    """What to record: ``path`` in the model, ``io`` = its output or its (first) input."""

    path: str
    io: IO = "output"

    @property
    def key(self) -> str:
        return self.path if self.io == "output" else f"{self.path}:input"


def module_paths(model: nn.Module) -> list[str]:
    """Every addressable path in ``model``, plus the reserved ``output``."""
    return [OUTPUT] + [name for name, _ in model.named_modules() if name]


def resolve_module(model: nn.Module, path: str, *, where: str = "module path") -> nn.Module:
    """Return the submodule at ``path`` or raise a :class:`UserError` listing the closest paths."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    paths = [p for p in modules if p]
    close = difflib.get_close_matches(path, paths, n=5, cutoff=0.4)
    if not close:
        prefix = path.rsplit(".", 1)[0]
        close = [p for p in paths if p.startswith(prefix)][:5] or paths[:5]
    hint = ", ".join(repr(p) for p in close)
    raise UserError(
        f"{where} {path!r} does not exist in {type(model).__name__}; closest paths: {hint} "
        f"(run 'kdcore inspect MODEL', from kdcore-plugin-inspect, to list all)"
    )


def _first_tensor(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 1:
        return value[0]
    return value


class FeatureTaps:
    """Records the tensors at a set of :class:`Tap` s on one model.

    ``features`` maps ``tap.key`` to the last recorded tensor. Call :meth:`record_output` with the
    model's return value to fill the reserved ``output`` tap.
    """

    def __init__(self, model: nn.Module, taps: list[Tap], *, where: str = "module path") -> None:
        self.model = model
        self.taps = list(dict.fromkeys(taps))
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        hooked = [t for t in self.taps if t.path != OUTPUT]
        if any(t.path == OUTPUT and t.io != "output" for t in self.taps):
            raise UserError(
                f"{where} 'output' is the model's return value, which has no input: use io "
                "'output' with it, or tap the input of the module that computes the output"
            )
        if any(t.path == OUTPUT for t in self.taps) and OUTPUT in dict(model.named_modules()):
            raise UserError(
                f"{where} 'output' is ambiguous: {type(model).__name__} has a submodule named "
                "'output'; kdcore reserves 'output' for the model's return value"
            )
        # resolve every path before hooking any: a bad path must not leave hooks behind
        modules = [resolve_module(model, tap.path, where=where) for tap in hooked]
        if hooked:  # inplace activations off, so a recorded tensor is not overwritten later
            for module in model.modules():
                if getattr(module, "inplace", False) is True:
                    module.inplace = False
        for tap, module in zip(hooked, modules):
            self._handles.append(module.register_forward_hook(self._hook_for(tap)))

    def _hook_for(self, tap: Tap):
        key, records_input = tap.key, tap.io == "input"

        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            self.features[key] = _first_tensor(inputs if records_input else output)
        return hook

    def record_output(self, output: Any) -> None:
        self.features[OUTPUT] = output

    def run(self, model: nn.Module, inputs: Any) -> tuple[Any, dict[str, Any]]:
        """``model(inputs)`` and the features it recorded (``output`` included), as a fresh
        dict: the taps keep no reference, so a step's features die with the step. One call per
        forward, because it runs every training step."""
        self.features = {}
        output = model(inputs)
        features, self.features = self.features, {}
        features[OUTPUT] = output
        return output, features

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureTaps":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __getitem__(self, tap: Tap) -> torch.Tensor:
        return self.features[tap.key]


def probe_pass(model: nn.Module, sample: torch.Tensor, on_output: Callable[[str, Any], None]) -> Any:
    """One pass of ``sample`` through ``model`` in eval mode without autograd, calling
    ``on_output(path, output's first tensor)`` as each named submodule finishes; returns the
    model's own first tensor output. The hooks and the training mode are restored afterwards."""
    handles = [module.register_forward_hook(
                   lambda m, i, out, name=name: on_output(name, _first_tensor(out)))
               for name, module in model.named_modules() if name]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _first_tensor(model(sample))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def feature_shapes(model: nn.Module, sample: torch.Tensor) -> Mapping[str, tuple[int, ...]]:
    """Run ``sample`` through ``model`` and return every module path's per-sample output shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, out: Any) -> None:
        if torch.is_tensor(out):
            shapes[name] = tuple(out.shape[1:])

    out = probe_pass(model, sample, record)
    result = {OUTPUT: tuple(out.shape[1:])} if torch.is_tensor(out) else {}
    return result | {name: shapes[name] for name, _ in model.named_modules() if name in shapes}

