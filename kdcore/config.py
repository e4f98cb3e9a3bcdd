"""The run config: attrs classes loaded from YAML, with ``--set`` overrides and exact errors.

Every mistake names its key path (``teachers[0].distill[1].head.losses[0].temprature``) and the
closest valid key. Component blocks (``student``, a teacher, a loss, a connector, ``data``) take
``type`` plus their declared keys; any other key is a parameter of the component's factory and
is checked against its signature when the component is built.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

import attrs
import yaml

from .errors import UserError, did_you_mean


def _params_field() -> Any:
    return attrs.field(factory=dict, metadata={"params": True})


def _checked(default: Any, rule: str, ok: Callable[[Any], bool]) -> Any:
    """A field whose value must pass ``ok``, checked as it is read, where its key path is known:
    ``config key PATH: must be RULE, got VALUE``. Null passes where the type allows it."""
    return attrs.field(default=default, metadata={"rule": rule, "ok": ok})


#: the largest seed: kdcore combines it with epoch and step numbers into 64-bit generator seeds
MAX_SEED = 2**32 - 1
SEED_RULE = (f"in [0, {MAX_SEED}] (2^32 - 1: kdcore combines it with epoch and step numbers into "
             f"64-bit generator seeds)")


@attrs.define
class ComponentConfig:
    """``{type: NAME, ...params}``"""

    type: str
    params: dict[str, Any] = _params_field()


@attrs.define
class LossConfig:
    """``{type: NAME, weight: W, name: TERM, ...params}``"""

    type: str
    weight: float = 1.0
    name: str | None = None
    params: dict[str, Any] = _params_field()


@attrs.define
class HeadConfig:
    type: str = "distill"
    losses: list[LossConfig] = attrs.field(factory=list)
    student_connector: ComponentConfig | None = None
    teacher_connector: ComponentConfig | None = None
    params: dict[str, Any] = _params_field()


@attrs.define
class DistillPointConfig:
    student_module: str
    teacher_module: str
    head: HeadConfig = attrs.field(factory=HeadConfig)
    student_io: Literal["output", "input"] = "output"
    teacher_io: Literal["output", "input"] = "output"
    name: str | None = None


@attrs.define
class OptimizerConfig:
    type: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = _checked(0.1, "> 0", lambda v: v > 0)
    momentum: float = 0.9
    weight_decay: float = _checked(5e-4, ">= 0", lambda v: v >= 0)
    nesterov: bool = True
    betas: list[float] = attrs.field(factory=lambda: [0.9, 0.999])
    fused: bool = True


@attrs.define
class ScheduleConfig:
    type: Literal["constant", "step", "cosine", "onecycle"] = "cosine"
    warmup_epochs: float = _checked(0.0, ">= 0", lambda v: v >= 0)
    milestones: list[int] = attrs.field(factory=list)
    gamma: float = 0.1


@attrs.define
class TeacherTrainConfig:
    """How to train a teacher that has no checkpoint (the result is cached)."""

    epochs: int = _checked(4, ">= 0", lambda v: v >= 0)
    seed: int = _checked(0, SEED_RULE, lambda v: 0 <= v <= MAX_SEED)
    # the teacher's own data settings, so a quick student run (data.train_limit, a smaller
    # data.batch_size) reuses the cached teacher instead of training a weaker one
    train_limit: int | None = _checked(None, "at least 1 or null (null: the whole training split)",
                                       lambda v: v >= 1)
    batch_size: int = _checked(128, "at least 1", lambda v: v >= 1)
    optimizer: OptimizerConfig = attrs.field(factory=OptimizerConfig)
    schedule: ScheduleConfig = attrs.field(factory=ScheduleConfig)


@attrs.define
class TeacherConfig:
    type: str
    name: str = "teacher"
    checkpoint: str | None = None
    expect_top1: float | None = None
    # the teacher's expected headline metric (top1, miou, map50: the data set's task decides)
    expect_metric: float | None = None
    train: TeacherTrainConfig = attrs.field(factory=TeacherTrainConfig)
    distill: list[DistillPointConfig] = attrs.field(factory=list)
    params: dict[str, Any] = _params_field()


@attrs.define
class StudentConfig:
    type: str
    checkpoint: str | None = None
    params: dict[str, Any] = _params_field()


@attrs.define
class DataConfig:
    type: str = "fashion_mnist"
    batch_size: int = _checked(128, "at least 1", lambda v: v >= 1)
    eval_batch_size: int = _checked(1000, "at least 1", lambda v: v >= 1)
    train_limit: int | None = _checked(None, "at least 1 or null", lambda v: v >= 1)
    test_limit: int | None = _checked(None, "at least 1 or null", lambda v: v >= 1)
    val_split: int = _checked(0, ">= 0", lambda v: v >= 0)
    labelled: int | None = _checked(None, "at least 1 or null", lambda v: v >= 1)
    drop_unlabelled: bool = False
    augment: list[ComponentConfig] = attrs.field(factory=list)
    params: dict[str, Any] = _params_field()


@attrs.define
class TrainerConfig:
    epochs: int = _checked(8, ">= 0", lambda v: v >= 0)
    device: str = "auto"
    progress: bool = True
    checkpoint_every: int = _checked(0, ">= 0", lambda v: v >= 0)
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_in_row: int = _checked(10, "at least 1 (how many NaN/Inf batches in a row "
                                           "trainer.on_nonfinite=skip may skip)", lambda v: v >= 1)
    grad_clip: float | None = _checked(None, ">= 0 or null (0 and null: no clipping)", lambda v: v >= 0)
    threads: int | None = _checked(None, ">= 0 (0 or null: one per physical core)", lambda v: v >= 0)
    cpu_tuning: bool = True
    teacher_cache: bool = False  # the callback teacher_cache (kdcore-plugin-teacher-cache)
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    teacher_memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    teacher_fold_bn: bool = True
    model_transforms: list[ComponentConfig] = attrs.field(factory=list)
    sync_batchnorm: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    # metrics.jsonl is always written; these are added (kdcore.loggers)
    loggers: list[str | ComponentConfig] = attrs.field(factory=list)
    # plugins' code run before any model is built and before the first epoch (kdcore.callbacks)
    callbacks: list[str | ComponentConfig] = attrs.field(factory=list)


@attrs.define
class RunConfig:
    algorithm: ComponentConfig = attrs.field(factory=lambda: ComponentConfig("teacher_student"))
    seed: int = _checked(0, SEED_RULE, lambda v: 0 <= v <= MAX_SEED)
    data: DataConfig = attrs.field(factory=DataConfig)
    student: StudentConfig = attrs.field(factory=lambda: StudentConfig("cnn_student"))
    teachers: list[TeacherConfig] = attrs.field(factory=list)
    distiller: ComponentConfig = attrs.field(factory=lambda: ComponentConfig("teacher"))
    optimizer: OptimizerConfig = attrs.field(factory=OptimizerConfig)
    schedule: ScheduleConfig = attrs.field(factory=ScheduleConfig)
    trainer: TrainerConfig = attrs.field(factory=TrainerConfig)
    output_dir: str = "runs"
    name: str | None = None
    # folders searched first for `type: import` models (kdcore.models.imported)
    import_paths: list[str] = attrs.field(factory=list)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Plain config data as ``{dotted.key: value}``; lists of blocks are walked by index
    (``teachers.0.type``), other lists are values."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: value}


def block_keys(cls: type) -> list[str]:
    """The keys a component block declares itself (``type``, ``weight``, ``distill`` ...): every
    other key in it is a parameter of the component."""
    return [f.name for f in attrs.fields(cls) if not f.metadata.get("params")]


# --- reading YAML --------------------------------------------------------------------------

class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two things a config needs: numbers with an exponent and no dot
    (``1e-3``) are numbers, as in YAML 1.2 (PyYAML's 1.1 rules read them as text; its other
    1.1 rules, ``1_000`` or ``0777``, are kept), and a key written twice in one mapping is an
    error (PyYAML keeps the last one and drops the first silently)."""

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        # checked as written, before merge keys (<<) are flattened into the node
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, Any], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            if key in first:
                raise yaml.composer.ComposerError(
                    None, None, f"key {key_node.value!r} appears twice (first at line "
                    f"{first[key] + 1}); merge the two into one", key_node.start_mark)
            first[key] = key_node.start_mark.line
        return node


class ConfigDumper(yaml.SafeDumper):
    """Writes text that :class:`ConfigLoader` would read as a number (``name: '2e5'``) quoted, so
    a saved ``config.yaml`` reads back as it was."""


# 1e-3, -2E5: floats with an exponent and no dot
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")
for _cls in (ConfigLoader, ConfigDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml(text: Any) -> Any:
    """Parse config YAML (a string or a file) with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


# --- structuring ---------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    if tp is dict or origin is dict or attrs.has(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for a message, cut short: a 10 MB value is not echoed whole."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _error(path: str, problem: str) -> UserError:
    """``config key PATH: PROBLEM``, with the path as data (:attr:`UserError.key_path`)."""
    return UserError(f"config key {path}: {problem}", key_path=path)


def _fail(path: str, expected: Any, value: Any) -> UserError:
    return _error(path, f"expected {_type_name(expected)}, got {shown(value)}")


#: the YAML values a scalar field takes: a bool is an int to Python, but not to a config
SCALARS = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _structure(tp: Any, value: Any, path: str, rules: bool) -> Any:
    """``value`` as a field of type ``tp``. (No field is ``Any`` or a ``dict``: the blocks'
    parameters are gathered by :func:`structure` itself.)"""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:  # X | None: X's own message
            return _structure(options[0], value, path, rules)
        for option in options:
            with contextlib.suppress(UserError):
                return _structure(option, value, path, rules)
        raise _fail(path, tp, value)
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = [str(a) for a in typing.get_args(tp)]
            hint = did_you_mean(str(value), choices) if len(str(value)) < 100 else ""
            raise _error(path, f"{shown(value)} is not one of {', '.join(choices)}{hint}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _fail(path, tp, value)
        (item,) = typing.get_args(tp)
        return [_structure(item, v, f"{path}[{i}]", rules) for i, v in enumerate(value)]
    if attrs.has(tp):
        return structure(tp, value, path, rules=rules)
    if not isinstance(value, SCALARS.get(tp, ())) or (tp is not bool and isinstance(value, bool)):
        raise _fail(path, tp, value)
    if tp is not float:
        return value
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        number = math.inf
    if not math.isfinite(number):  # .nan / .inf parse as floats too; no float key wants them
        raise _error(path, f"expected a finite number, got {shown(value)}")
    return number


#: keys an earlier kdcore had, and where their setting lives now
MOVED_KEYS = {
    "trainer.fast_max_pool": "moved out of the core (kdcore 0.1.7) into the kdcore-plugin-cpu-speed "
                             "plugin: pip install kdcore-plugin-cpu-speed, then set "
                             "trainer.model_transforms: [fast_max_pool] (or delete the key)",
}


def structure(cls: type, data: Any, path: str = "", *, rules: bool = True) -> Any:
    """Build ``cls`` from plain YAML data, raising :class:`UserError` with the key path.

    ``rules=False`` skips the fields' own rules (``_checked``) and checks keys and types only:
    for a config as an earlier run saved it, whose out-of-range value the overrides may fix."""
    if cls is ComponentConfig and isinstance(data, str):
        data = {"type": data}  # a component without parameters may be named alone: [hflip]
    if not isinstance(data, dict):
        raise _error(path or "config", f"expected a mapping, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    params_field = next((f.name for f in fields.values() if f.metadata.get("params")), None)
    known = {n for n in fields if n != params_field}
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        name = key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 80 else shown(key)
        key_path = f"{path}.{name}" if path else name
        if not isinstance(key, str):
            raise _error(key_path, "keys must be strings")
        if key in known:
            kwargs[key] = value = _structure(hints[key], value, key_path, rules)
            ok = fields[key].metadata.get("ok")
            if rules and ok is not None and value is not None and not ok(value):
                raise _error(key_path, f"must be {fields[key].metadata['rule']}, got {shown(value)}")
        elif params_field is None:
            hint = did_you_mean(key, known) if len(key) <= 80 else ""
            raise _error(key_path, MOVED_KEYS.get(key_path)
                         or f"unknown key{hint}; valid keys: {', '.join(sorted(known))}")
        elif key != params_field:
            extra[key] = value
        elif isinstance(value, dict):
            extra.update(value)
        else:
            raise _fail(key_path, dict, value)
    if params_field is not None:
        kwargs[params_field] = extra
    for f in fields.values():
        if f.default is attrs.NOTHING and f.name not in kwargs:
            raise _error(f"{path}.{f.name}" if path else f.name, "required, missing")
    return cls(**kwargs)


def unstructure(obj: Any) -> Any:
    """The inverse of :func:`structure`: plain data, component params folded back in."""
    if attrs.has(type(obj)):
        out: dict[str, Any] = {}
        declared = {f.name for f in attrs.fields(type(obj))}
        for f in attrs.fields(type(obj)):
            value = getattr(obj, f.name)
            if f.metadata.get("params"):
                # a parameter named like one of the block's own keys (a loss's "weight") can
                # only be written under "params:"; it is written back there
                out.update({k: unstructure(v) for k, v in value.items() if k not in declared})
                clashing = {k: unstructure(v) for k, v in value.items() if k in declared}
                if clashing:
                    out[f.name] = clashing
            else:
                out[f.name] = unstructure(value)
        return out
    if isinstance(obj, list):
        return [unstructure(v) for v in obj]
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items()}
    return obj


# --- loading and overrides -----------------------------------------------------------------

def read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = load_yaml(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a directory") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"config file {path}: {problem}{where}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except RecursionError:
        raise UserError(f"config file {path}: nested too deeply") from None
    except Exception as exc:  # PyYAML's constructors raise plain errors too, e.g. for 2001-02-30
        first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise UserError(f"config file {path}: invalid value ({first_line})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path}: the top level must be a mapping of keys, "
                        f"got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.0.c=value"`` -> (["a", "b", "0", "c"], parsed YAML value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {shown(text)}: expected KEY=VALUE, e.g. --set trainer.epochs=3")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.composer.ComposerError as exc:  # {a: 1, a: 2}: a key written twice
        raise UserError(f"--set {shown(text)}: {exc.problem}") from None
    except Exception:  # not YAML, or a value PyYAML's constructors refuse (2001-02-30): text
        value = raw
    return key.split("."), value


def apply_override(data: dict[str, Any], text: str) -> None:
    """Set one ``--set`` override in raw config data, creating mappings as needed."""
    parts, value = parse_override(text)
    node: Any = data
    for i, part in enumerate(parts):
        if isinstance(node, list):
            key: Any = _index(node, part, ".".join(parts[: i + 1]), text)
        elif isinstance(node, dict):
            key = part
        else:
            raise UserError(f"--set {shown(text)}: {'.'.join(parts[:i])} is {shown(node)}, "
                            f"not a mapping or list")
        if i == len(parts) - 1:
            node[key] = value
        else:
            if isinstance(node, dict) and node.get(key) is None:
                node[key] = {}
            node = node[key]


def _index(node: list, part: str, where: str, text: str) -> int:
    if not (part.isascii() and part.isdigit()):  # "²".isdigit() is True but int("²") fails
        raise UserError(f"--set {shown(text)}: {where} indexes a list; use a number such as 0")
    i = int(part)
    if i >= len(node):
        raise UserError(f"--set {shown(text)}: {where} is out of range (the list has {len(node)} "
                        f"item{'s' if len(node) != 1 else ''})")
    return i


def load_config(data: dict[str, Any], overrides: list[str] = ()) -> RunConfig:
    """Apply ``--set`` overrides to raw data, then structure and check it."""
    for text in overrides:
        apply_override(data, text)
    config = structure(RunConfig, data)
    check(config)
    return config


#: epochs beyond this are a typo (a run of a million epochs is not a plan)
MAX_EPOCHS = 1_000_000
#: threads beyond this multiple of the machine's cores only wait for each other
THREADS_PER_CORE = 4
#: a run dir is NAME-YYYYmmdd-HHMMSS[-N], one path component: at most 255 bytes
MAX_NAME_BYTES = 200


def check(config: RunConfig) -> None:
    """The checks a field's own rule (``_checked``) cannot make: keys that depend on each other,
    and sizes that would overflow a file name or crash torch's thread pool on this machine."""
    epochs = {"trainer.epochs": config.trainer.epochs}
    epochs.update({f"teachers[{i}].train.epochs": t.train.epochs for i, t in enumerate(config.teachers)})
    for key, value in epochs.items():
        if value > MAX_EPOCHS:
            raise _error(key, f"at most {MAX_EPOCHS:,} epochs, got {shown(value)}")
    cores = os.cpu_count() or 1
    threads = config.trainer.threads
    if threads is not None and threads > THREADS_PER_CORE * cores:
        raise _error("trainer.threads", f"{shown(threads)} is more than {THREADS_PER_CORE} per core of "
                                        f"this machine ({cores} cores, so at most {THREADS_PER_CORE * cores}): "
                                        f"more threads than cores only wait for each other, and torch can "
                                        f"crash on huge counts; use 0 (one per physical core)")
    if config.name is not None and len(config.name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise _error("name", f"{shown(config.name)} is longer than {MAX_NAME_BYTES} bytes; the run "
                             f"dir's name (NAME-DATE-TIME) must fit a file name (255 bytes)")
    for part in config.output_dir.split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            raise _error("output_dir", f"the folder name {shown(part)} is longer than 255 bytes, "
                                       f"which file systems refuse")
    optimizers = {"optimizer": config.optimizer}
    optimizers.update({f"teachers[{i}].train.optimizer": t.train.optimizer for i, t in enumerate(config.teachers)})
    for key, optimizer in optimizers.items():
        if optimizer.type == "sgd" and not 0 <= optimizer.momentum < 1:  # >= 1: updates grow without bound
            raise _error(f"{key}.momentum", f"must be in [0, 1), got {optimizer.momentum}")
    for i, teacher in enumerate(config.teachers):
        if not teacher.checkpoint and teacher.train.epochs == 0:
            raise _error(f"teachers[{i}].train.epochs", f"must be at least 1 when teachers[{i}].checkpoint "
                                                        f"is null (the teacher is trained first; an untrained "
                                                        f"one would be cached and taught from)")
    names = [t.name for t in config.teachers]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise _error(f"teachers[{i}].name", f"{name!r} is used by teachers[{names.index(name)}] too; "
                                                f"give each teacher its own name")
        for j, point in enumerate(config.teachers[i].distill):
            if not point.head.losses:
                raise _error(f"teachers[{i}].distill[{j}].head.losses", "a distill point needs at least one loss")


def dump_yaml(config: RunConfig) -> str:
    return yaml.dump(unstructure(config), Dumper=ConfigDumper, sort_keys=False)
