"""``trainer.model_transforms``: plugins' in-place model rewrites for speed (a kernel swap, a
layout), applied to the student, the frozen teachers and a teacher before its own training.

The core ships none and applies none unless listed; see ``kdcore_model_transforms`` in
:mod:`kdcore.hookspecs` for the contract.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..registry import build

Transform = Callable[[nn.Module, str], int]


def build_transforms(configs: list[Any]) -> list[tuple[str, Transform]]:
    """The listed transforms, built (a typo or a missing plugin is one line naming the key)."""
    return [(cfg.type, build("model_transform", cfg.type, where=f"trainer.model_transforms[{i}]",
                             **cfg.params))
            for i, cfg in enumerate(configs)]


def apply_transforms(transforms: list[tuple[str, Transform]], model: nn.Module, role: str,
                     log: Callable[[str], None] | None = None) -> None:
    """Apply each transform to ``model`` in the listed order; log what each changed."""
    for name, transform in transforms:
        changed = transform(model, role)
        if log is not None and changed:
            log(f"trainer.model_transforms: {name} changed {changed} modules of the {role.replace('_', ' ')}")
