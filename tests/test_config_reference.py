"""docs/config.md documents every config key, so a new key cannot ship undocumented."""

from __future__ import annotations

import os
import typing

import attrs

from kdcore.config import RunConfig

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "config.md")


def _attrs_class(tp: typing.Any) -> tuple[type | None, bool]:
    """(the attrs class inside ``tp``, whether it is a list of them)."""
    origin = typing.get_origin(tp)
    if origin is list:
        inner = typing.get_args(tp)[0]
        return (inner, True) if attrs.has(inner) else (None, False)
    for arg in typing.get_args(tp) if origin is not None else (tp,):
        if attrs.has(arg):
            return arg, False
    return None, False


def key_paths() -> list[str]:
    """Every key path, each attrs class documented where it first appears (breadth first)."""
    paths, seen, queue = [], set(), [("", RunConfig)]
    while queue:
        prefix, cls = queue.pop(0)
        hints = typing.get_type_hints(cls)
        for field in attrs.fields(cls):
            if field.metadata.get("params"):
                continue  # other keys of a component block: the factory's parameters
            path = f"{prefix}{field.name}"
            inner, is_list = _attrs_class(hints[field.name])
            if inner is None or is_list or inner in seen:
                paths.append(path)  # a value, a list, or a block documented elsewhere
            if inner is not None and inner not in seen:
                seen.add(inner)
                queue.append((f"{path}[]." if is_list else f"{path}.", inner))
    return paths


def test_every_config_key_is_in_docs_config_md() -> None:
    text = open(DOC, encoding="utf-8").read()
    missing = [p for p in key_paths() if f"`{p}`" not in text and f"`{p}." not in text]
    assert not missing, f"docs/config.md lacks {missing}"
    assert "trainer.teacher_fold_bn" in key_paths() and "teachers[].train.epochs" in key_paths()
