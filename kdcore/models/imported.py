"""``type: import``: a model from the user's own code, without writing a plugin.

    student: {type: import, target: "mypkg.models:make_net", width: 32}

``target`` is ``module:attribute`` (a function or an ``nn.Module`` class) or
``path/to/file.py:attribute``. Modules are looked up in ``import_paths`` (the config file's
folder is added when a config is loaded) and then on ``sys.path``; file paths are relative to the
first of ``import_paths``. The other keys of the block are the target's parameters, checked
against its signature as any component's; ``num_classes`` and ``in_channels`` come from the data
when the target names them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..errors import UserError, did_you_mean


#: where ``type: import`` looks first: the run's ``import_paths`` (set by :func:`use_import_paths`)
_PATHS: list[str] = []


def use_import_paths(paths: Sequence[str]) -> None:
    """Search ``paths`` (the config's ``import_paths``) first for this process's imports."""
    _PATHS[:] = [os.path.abspath(os.path.expanduser(p)) for p in paths]


def _import_failure(exc: BaseException, what: str, where: str) -> UserError:
    """One line naming the user's file and line where the import failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename
              and os.path.basename(os.path.dirname(f.filename)) != "models"]
    place = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return UserError(f"{where}.target: importing {what} failed with {type(exc).__name__}: "
                     f"{exc}{place}")


def _load_file(path: str, where: str) -> Any:
    name = "kdcore_user_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{where}.target: {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise _import_failure(exc, path, where) from None
    return module


def _load_module(name: str, paths: Sequence[str], where: str) -> Any:
    added = [p for p in paths if p not in sys.path]
    sys.path[:0] = added  # searched first, kept: a module imported once may import its siblings later
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name) and name.split(".")[0] == exc.name.split(".")[0]:
            searched = f"import_paths {list(paths)} and sys.path" if paths else "sys.path"
            raise UserError(f"{where}.target: no module {name!r} (searched {searched}); put it "
                            f"next to the config file, add its folder to import_paths, or write "
                            f"'path/to/file.py:function'") from None
        raise _import_failure(exc, name, where) from None
    except Exception as exc:
        raise _import_failure(exc, name, where) from None


def resolve_target(target: str, paths: Sequence[str] | None = None,
                   where: str = "model") -> Callable[..., Any]:
    """The callable ``target`` names (see the module docstring), or one line saying why not."""
    paths = _PATHS if paths is None else paths
    module_part, sep, attr = str(target).rpartition(":")
    if not sep or not module_part or not attr:
        raise UserError(f"{where}.target: {target!r} should be 'module:function' or "
                        f"'path/to/file.py:function'")
    if module_part.endswith(".py"):
        base = paths[0] if paths else os.getcwd()
        path = os.path.join(base, os.path.expanduser(module_part))
        if not os.path.isfile(path):
            raise UserError(f"{where}.target: {path} does not exist")
        module = _load_file(path, where)
    else:
        module = _load_module(module_part, paths, where)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise UserError(f"{where}.target: {module_part} has no {part!r}{did_you_mean(part, names)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"{where}.target: {target} is a {type(obj).__name__}, not a function or class")
    return obj


def take_target(params: dict[str, Any], where: str) -> str:
    """Remove and return ``target`` from a block's parameters."""
    if "target" not in params:
        raise UserError(f"{where}.target: required, missing (type: import needs "
                        f"target: 'module:function')")
    return params.pop("target")


def build_imported(params: dict[str, Any], context: dict[str, Any], *, where: str,
                   block_keys: Sequence[str] = (), paths: Sequence[str] | None = None) -> nn.Module:
    """Build ``target`` with the block's other keys, checked against its signature."""
    from ..registry import call_factory

    params = dict(params)
    target = take_target(params, where)
    factory = resolve_target(target, paths, where)
    model = call_factory(factory, params, context, where=where, block_keys=[*block_keys, "target"])
    if not isinstance(model, nn.Module):
        raise UserError(f"{where}: {target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def import_model(target: str, import_paths: Sequence[str] = (), **params: Any) -> nn.Module:
    """The ``import`` model's factory, for ``kdcore inspect import --set target=...`` and
    ``kdcore.build``; runs reach :func:`build_imported` through ``assemble.build_model``."""
    context = {k: params.pop(k) for k in ("num_classes", "in_channels") if k in params}
    return build_imported({"target": target, **params}, context, where="model 'import'",
                          paths=list(import_paths) or _PATHS or [os.getcwd()])
