"""Finding and building components by name.

Ids are ``<plugin>:<name>``. A short name belongs to the first plugin that provides it (the
core, then installed plugins from the earliest installed), so installing a plugin never takes a
name a config already uses: the newcomer's component is reachable by its id, and the clash is a
warning of the newcomer. Each plugin's hook is called on its own, so a hook that raises is
reported for that plugin alone.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from torch import nn

from .errors import UserError, did_you_mean
from .plugins import Plugins, get_plugins
from .specs import KINDS, Component, Preset, Registered

_HOOK = {kind: f"kdcore_{kind}es" if kind.endswith("s") else f"kdcore_{kind}s" for kind in KINDS}
#: Components of the plugins in this repository, for "pip install ..." hints when missing.
_INSTALL_HINTS = {
    "loss": {"fitnet": "fitnet", "at": "at", "dkd": "dkd", "rkd": "rkd",
             "rkd_distance": "rkd", "rkd_angle": "rkd", "crd": "crd", "crd_inbatch": "crd",
             "ft": "ft", "ab": "ab", "ofd": "ofd", "cwd": "cwd", "pixel_kd": "cwd",
             "yolo_kd": "yolo-kd"},
    "connector": {"conv_reg": "fitnet", "paraphraser": "ft", "translator": "ft"},
    "algorithm": {"self_distillation": "byot", "meal_v2": "meal", "data_free": "datafree", "dml": "dml"},
    "model_transform": {"fast_max_pool": "cpu-speed"},
    "logger": {"tensorboard": "tensorboard", "mlflow": "mlflow"},
    "model": {"timm": "timm", "seg_net": "dense", "seg_teacher": "dense", "seg_student": "dense",
              "yolo": "dense", "yolo_teacher": "dense", "yolo_student": "dense"},
    "dataset": {"fashion_scenes": "dense"},
    "command": {"compare": "compare", "inspect": "inspect", "export": "export", "draw": "draw"},
    "callback": {"teacher_cache": "teacher-cache"},
    "preset": {"kd": "kd", "fitnet": "fitnet", "at": "at", "dkd": "dkd", "rkd": "rkd", "crd": "crd",
               "ft": "ft", "ab": "ab", "ofd": "ofd", "byot": "byot", "meal": "meal",
               "datafree": "datafree", "cwd": "cwd", "yolo_kd": "yolo-kd", "timm": "timm", "dml": "dml",
               "dense": "dense"},
}


def own_plugins() -> list[str]:
    """The NAMEs of the kdcore project's plugin distributions (``kdcore-plugin-NAME``)."""
    return sorted({short for names in _INSTALL_HINTS.values() for short in names.values()})


#: Kinds whose factories must build an ``nn.Module`` (datasets build data sets).
MODULE_KINDS = frozenset({"algorithm", "distiller", "head", "connector", "loss", "model"})
#: Values the core offers to factories; never user parameters.
CONTEXT_KEYS = frozenset({
    "in_shape", "out_shape", "student_shape", "teacher_shape", "num_samples", "num_classes",
    "in_channels", "student_module", "teacher_module", "student", "task", "distiller", "teachers",
    "points", "losses", "student_connector", "teacher_connector", "label", "input_shape",
    "batch_size", "seed", "test_data", "run_dir", "config", "first_epoch",
})


def components(kind: str, plugins: Plugins | None = None) -> list[Registered]:
    """Every registered component of ``kind``, sorted by id, with the plugin that provides it.

    Each plugin's hook is called once per plugin set (the answer is kept), on its own: a hook
    that raises or returns something other than a list of :class:`Component` is a warning of
    that plugin, and the other plugins' components are still found."""
    if kind not in KINDS:
        raise UserError(f"unknown component kind {kind!r}{did_you_mean(kind, KINDS)}; "
                        f"kinds are {', '.join(KINDS)}")
    plugins = plugins or get_plugins()
    impls = tuple(getattr(plugins.pm.hook, _HOOK[kind]).get_hookimpls())
    cached = plugins.found.get(kind)
    if cached is None or cached[0] != impls:  # first use, or plugins (un)registered since
        cached = plugins.found[kind] = (impls, _collect(kind, plugins))
    return list(cached[1])


def _collect(kind: str, plugins: Plugins) -> list[Registered]:
    hook = f"{_HOOK[kind]}()"
    found: list[Registered] = []
    for impl in getattr(plugins.pm.hook, _HOOK[kind]).get_hookimpls():
        plugin = plugins.plugin_name(impl.plugin)
        try:
            specs = impl.function()
            if isinstance(specs, (Component, str, bytes, Mapping)) or not isinstance(specs, Iterable):
                plugins.warn(plugin, f"{hook} must return a list of kdcore.Component, got "
                                     f"{type(specs).__name__}; its {_HOOK[kind][len('kdcore_'):]} are skipped")
                continue
            for spec in specs:
                if kind == "preset" and type(spec) is Component:  # Component(name, path) works too
                    spec = Preset(spec.name, spec.factory, spec.summary)
                if isinstance(spec, Component):
                    found.append(Registered(kind, plugin, spec))
                else:
                    plugins.warn(plugin, f"{hook} returned {spec!r} ({type(spec).__name__}), not a "
                                         f"kdcore.Component; skipped")
        except Exception as exc:  # a broken plugin must not take the rest down
            plugins.warn(plugin, f"{hook} raised {type(exc).__name__}: {exc}")
    for name, owner, others in clashes(found, plugins):
        for other in others:
            plugins.warn(other.plugin, f"{kind} {name!r} is also provided by {owner.id}, which "
                                       f"keeps the short name; this plugin's is reachable as {other.id}")
    return sorted(found, key=lambda r: r.id)


def clashes(found: Iterable[Registered], plugins: Plugins) -> list[tuple[str, Registered, list[Registered]]]:
    """``(short name, owner, newcomers)`` for every short name that several plugins provide:
    the owner is the first by :meth:`Plugins.precedence` (the core, then the earliest installed)."""
    by_name: dict[str, list[Registered]] = {}
    for reg in found:
        by_name.setdefault(reg.component.name, []).append(reg)
    out = []
    for name, regs in sorted(by_name.items()):
        providers = {r.plugin for r in regs}
        if len(providers) > 1:
            ranked = sorted(regs, key=lambda r: plugins.precedence(r.plugin))
            out.append((name, ranked[0], [r for r in ranked[1:] if r.plugin != ranked[0].plugin]))
    return out


class UnknownName(UserError):
    """:func:`lookup` found no component of that name. ``what`` names it with the hints
    (``preset 'x' (did you mean 'y'?) (see ...)``), for a caller that words the error its own way."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: unknown {what}" if where else f"unknown {what}", key_path=where or None)
        self.what = what


def lookup(kind: str, name: str, plugins: Plugins | None = None, *, where: str = "") -> Registered:
    """Resolve ``name`` (short or ``plugin:name``) to exactly one component."""
    plugins = plugins or get_plugins()
    available = components(kind, plugins)
    if ":" in name:
        matches = [r for r in available if r.id == name]
    else:
        matches = [r for r in available if r.component.name == name]
    label = f"{where}: " if where else ""
    if len(matches) == 1:
        return matches[0]
    owners = {r.plugin for r in matches}
    if len(owners) > 1:  # the first plugin keeps the short name (module docstring)
        return min(matches, key=lambda r: plugins.precedence(r.plugin))
    if len(matches) > 1:  # one plugin declared the name twice
        raise UserError(f"{label}{kind} {name!r} is declared {len(matches)} times by plugin "
                        f"{matches[0].plugin!r}; {_broken(matches[0].plugin)}", key_path=where or None)
    names = [r.component.name for r in available] + [r.id for r in available]
    hint = did_you_mean(name, names) + why_missing(kind, name, plugins)
    raise UnknownName(where, f"{kind} {name!r}{hint} (see 'kdcore list {kind}')")


def why_missing(kind: str, name: str, plugins: Plugins) -> str:
    """Why no plugin offers ``name``: the plugin of this repository that would, installed or not
    (left out by ``KDCORE_PLUGINS``, failed to load), or the plugins that did not load."""
    short = _INSTALL_HINTS.get(kind, {}).get(name)
    if short:
        dist = f"kdcore-plugin-{short}"
        status = next((s for s in plugins.status.values() if s.distribution == dist), None)
        if status is None:
            return f"; it is provided by {dist}: pip install {dist}{_checkout_hint(dist)}"
        if status.state == "disabled":
            return (f"; it comes from plugin {status.name!r} ({dist}), which "
                    f"KDCORE_PLUGINS={os.environ.get('KDCORE_PLUGINS', '')!r} leaves out")
        if status.state != "ok":
            return f"; it comes from plugin {status.name!r} ({dist}), which did not load: {status.error}"
    troubled = plugins.troubled()
    if troubled:
        return "; note: plugins failed to load or skipped components: " + ", ".join(troubled)
    disabled = [s.name for s in plugins.status.values() if s.state == "disabled"]
    if disabled:
        return "; note: KDCORE_PLUGINS leaves out " + ", ".join(disabled)
    return f"; a plugin's {kind} needs its package installed ('kdcore plugins' lists them)"


def _checkout_hint(dist: str) -> str:
    """`` (in this checkout: pip install -e PATH)`` when kdcore runs from a source checkout that
    has the plugin's folder, else nothing."""
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins", dist)
    if not os.path.isfile(os.path.join(folder, "pyproject.toml")):
        return ""
    try:
        shown = os.path.relpath(folder)
    except ValueError:  # another drive
        shown = folder
    shown = shown if os.path.isabs(shown) or shown.startswith(".") else f".{os.sep}{shown}"
    return f" (in this checkout: pip install -e {shown})"


def _broken(plugin: str) -> str:
    return (f"plugin {plugin!r} is broken (reinstall it, or tell its authors)"
            if plugin != "kdcore" else "this is a bug in kdcore")


def check_factories(plugins: Plugins | None = None) -> None:
    """Import every component's ``"module:attr"`` factory (and find every preset's file),
    building nothing; each failure is a warning of its plugin (``kdcore plugins --strict``).
    Commands are loaded, and their failures said, by the CLI (``cli.plugin_command_names``)."""
    plugins = plugins or get_plugins()
    for kind in KINDS:
        for reg in components(kind, plugins) if kind != "command" else ():
            try:
                reg.component.resolve()
            except Exception as exc:
                what = "preset file" if kind == "preset" else "factory"
                plugins.warn(reg.plugin, f"{kind} {reg.component.name!r}: {what} "
                                         f"{reg.component.factory!r} cannot be loaded: "
                                         f"{type(exc).__name__}: {exc}")


def accepted_params(factory: Any) -> tuple[set[str], bool]:
    """The keyword names ``factory`` takes, and whether it takes ``**kwargs``."""
    names, var_kw, _ = _signature(factory)
    return names, var_kw


def _signature(factory: Any) -> tuple[set[str], bool, set[str]]:
    """``(keyword names, takes **kwargs, names without a default)`` of ``factory``."""
    if inspect.isclass(factory) and factory.__init__ is nn.Module.__init__:
        return set(), False, set()  # inherits nn.Module's (*args, **kwargs): takes no parameters
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return set(), True, set()
    keyword = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return {p.name for p in keyword}, var_kw, {p.name for p in keyword if p.default is p.empty}


def _check_scalar(factory: Any, key: str, value: Any, where: str) -> None:
    """Text given for a parameter annotated as a number or a flag only (``float``, ``int``,
    ``bool``, with a default of that kind) is refused here, by name: the factory would fail with
    a Python error such as "'<=' not supported between 'str' and 'int'"."""
    if not isinstance(value, str):
        return
    try:
        param = inspect.signature(factory).parameters.get(key)
        target = factory.__init__ if inspect.isclass(factory) else factory
        annotation = typing.get_type_hints(target).get(key)
    except Exception:  # unresolvable annotations: leave the value to the factory
        return
    if param is None or not isinstance(param.default, (bool, int, float)) or annotation is None:
        return
    allowed = set(typing.get_args(annotation)) if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else {annotation}
    if not allowed <= {bool, int, float, type(None)}:
        return  # str, Any, Literal["auto"], ...: text may be meant
    expected = ("true or false" if allowed - {type(None)} == {bool} else
                "an integer" if allowed - {type(None)} == {int} else "a number")
    raise UserError(f"{where}.{key}: expected {expected}, got {value!r}", key_path=f"{where}.{key}")


def call_factory(factory: Any, params: dict[str, Any], context: dict[str, Any], *,
                 where: str, block_keys: Collection[str] = ()) -> Any:
    """Call ``factory(**params, **context)``, checking ``params`` against its signature.

    ``context`` holds values the core offers (``in_shape``, ``num_classes`` ...); each is passed
    only if the factory names it, and a user parameter may not replace one. User ``params`` that
    the factory does not take are an error naming the key and the closest accepted one, among
    the factory's parameters and ``block_keys``, the keys of the config block they came from (a
    misspelled ``distill`` in a teacher's block lands among the model's parameters).
    """
    kwargs = check_params(factory, params, context, where=where, block_keys=block_keys)
    try:
        return factory(**kwargs)
    except UserError as exc:
        if exc.key_path is not None:
            raise  # already says where (algorithm.exits[0]: ..., config key data.anchors: ...)
        raise UserError(f"{where}: {exc}", key_path=where) from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}", key_path=where) from exc


def check_params(factory: Any, params: dict[str, Any], context: dict[str, Any], *,
                 where: str, block_keys: Collection[str] = (), dry: bool = False) -> dict[str, Any]:
    """:func:`call_factory`'s checks without the call; returns the keyword arguments it would
    pass. ``dry``: the context is not known yet (``kdcore run --print-config``), so a missing
    parameter that the core may still offer (:data:`CONTEXT_KEYS`) is not an error."""
    names, var_kw, required = _signature(factory)
    for key in params:
        if key in context:
            raise UserError(f"{where}.{key}: kdcore passes this value itself (from the data, the "
                            f"models or the run), so it cannot be set in the config",
                            key_path=f"{where}.{key}")
        if not var_kw and key not in names:
            own = names - set(context) - CONTEXT_KEYS
            # minus the key itself: written under params:, a block key is meant as a parameter
            hint = did_you_mean(key, (own | set(block_keys)) - {key})
            choices = ", ".join(sorted(own)) or "none"
            block = f"keys of this block: {', '.join(sorted(block_keys))}; " if block_keys else ""
            what = "key" if block_keys else "parameter"
            raise UserError(f"{where}.{key}: unknown {what}{hint}; {block}parameters it takes: {choices}",
                            key_path=f"{where}.{key}")
    for key, value in params.items():
        _check_scalar(factory, key, value, where)
    kwargs = {k: v for k, v in context.items() if var_kw or k in names}
    kwargs.update(params)
    missing = required - set(kwargs) - (CONTEXT_KEYS if dry else set())
    if missing:
        key_path = f"{where}.{sorted(missing)[0]}"
        raise UserError(f"{key_path}: required, missing", key_path=key_path)
    return kwargs


#: ``kdcore.build``'s own keyword options: a factory parameter may not have one of these names.
RESERVED_PARAMS = frozenset({"plugins", "where", "context", "_block_keys"})


def build(kind: str, name: str, /, *, plugins: Plugins | None = None, where: str = "",
          context: dict[str, Any] | None = None, _block_keys: Collection[str] = (),
          **params: Any) -> Any:
    """Build the component ``kind``/``name`` with ``params``.

    Example: ``kdcore.build("loss", "kd", temperature=4.0)`` returns an ``nn.Module`` whose
    ``forward(student, teacher)`` is the Hinton KD loss. ``kind`` and ``name`` are
    positional-only, so a factory may take parameters of those names; ``plugins``, ``where``
    and ``context`` are reserved (:data:`RESERVED_PARAMS`). (``_block_keys``: the config
    block's own keys, for the did-you-mean of a misspelled one.)
    """
    if kind == "preset":
        raise UserError(f"presets are run, not built: kdcore run --preset {name}")
    registered = lookup(kind, name, plugins, where=where)
    label, key_path = where or f"{kind} {name!r}", where or None
    broken = _broken(registered.plugin)
    try:
        factory = registered.component.resolve()
    except Exception as exc:  # a lazy "module:attr" factory that does not import
        raise UserError(f"{label}: {kind} {registered.id!r} cannot be loaded: its factory "
                        f"{registered.component.factory!r} failed with {type(exc).__name__}: {exc}; "
                        f"{broken}", key_path=key_path) from None
    try:
        built = call_factory(factory, params, context or {}, where=label, block_keys=_block_keys)
    except UserError:
        raise
    except Exception as exc:  # a bug or a bad value the factory did not check: one line too
        first = (str(exc).strip().splitlines() or [""])[0]
        first = first if len(first) <= 300 else first[:300] + "..."
        raise UserError(f"{label}: {kind} {registered.id!r} failed while being built with "
                        f"{type(exc).__name__}: {first}; check its parameters, else {broken} "
                        f"(the traceback: KDCORE_DEBUG=1 or kdcore --debug)", key_path=key_path) from exc
    if kind in MODULE_KINDS and not isinstance(built, nn.Module):
        raise UserError(f"{label}: {kind} {registered.id!r} built a {type(built).__name__}, not a "
                        f"torch.nn.Module; {broken}", key_path=key_path)
    return built
