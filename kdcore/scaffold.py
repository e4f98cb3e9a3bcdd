"""``kdcore new-plugin``: write a ready-to-install plugin package with one working component.

The generated folder is what docs/plugins.md walks through: a ``pyproject.toml`` with the
``kdcore`` entry point and a kdcore version range, a light entry-point module with one
documented hook, the component, a preset config that uses it, a contract test from
:mod:`kdcore.testing`, and a README. Nothing is ever overwritten.
"""

from __future__ import annotations

import keyword
import os
import re
import shutil
import string
from importlib import resources
from importlib.metadata import entry_points
from typing import Any

import attrs
import yaml

from .errors import UserError
from .files import temp_folder
from .version import __version__

#: kinds in the order ``--kind`` lists them.
SCAFFOLD_KINDS = ("loss", "connector", "head", "distiller", "algorithm", "model", "dataset")
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*$")
MAX_NAME = 40


def kdcore_range(version: str = __version__) -> str:
    """The range a new plugin declares: this minor series for 0.x, this major from 1.0 on."""
    major, minor = (int(p) for p in version.split(".")[:2])
    if major == 0:
        return f">=0.{minor},<0.{minor + 1}"
    return f">={major}.{minor},<{major + 1}"


@attrs.frozen
class Names:
    """Every spelling of the plugin's name the templates need."""

    name: str  # as typed: kdcore-plugin-<name>, the folder and the distribution
    kind: str

    @property
    def ident(self) -> str:
        """Entry-point and component name (``type:`` in configs)."""
        return self.name.replace("-", "_")

    @property
    def dist(self) -> str:
        return f"kdcore-plugin-{self.name}"

    @property
    def package(self) -> str:
        return f"kdcore_plugin_{self.ident}"

    @property
    def cls(self) -> str:
        base = "".join(part.capitalize() for part in self.ident.split("_"))
        suffix = {"loss": "Loss", "connector": "Connector", "head": "Head", "distiller": "Distiller",
                  "algorithm": "Algorithm", "model": "Net", "dataset": ""}[self.kind]
        return base if base.endswith(suffix) else base + suffix

    @property
    def module(self) -> str:
        return {"loss": "losses", "connector": "connectors", "head": "heads", "distiller": "distillers",
                "algorithm": "algorithms", "model": "models", "dataset": "datasets"}[self.kind]

    @property
    def test_file(self) -> str:
        """Named after the plugin: pytest cannot collect two plugins' tests of one basename
        (their tests/ folders have no ``__init__.py``) in one call."""
        return f"test_{self.ident}_contract.py"

    @property
    def attr(self) -> str:
        return f"load_{self.ident}" if self.kind == "dataset" else self.cls

    @property
    def hook(self) -> str:
        return "kdcore_losses" if self.kind == "loss" else f"kdcore_{self.kind}s"

    def values(self) -> dict[str, str]:
        return {"name": self.ident, "dist": self.dist, "package": self.package, "Class": self.cls,
                "module": self.module, "attr": self.attr, "hook": self.hook, "kind": self.kind,
                "range": kdcore_range(), "summary": SUMMARIES[self.kind],
                "kinds": "losses" if self.kind == "loss" else f"{self.kind}s",
                "version": __version__, "test_file": self.test_file}


def validate_name(name: str, kind: str) -> Names:
    """Check NAME and KIND; a bad one raises :class:`UserError` saying what to type instead."""
    if kind not in SCAFFOLD_KINDS:
        raise UserError(f"--kind {kind!r}: choose one of {', '.join(SCAFFOLD_KINDS)}")
    if name.startswith("kdcore"):
        short = re.sub(r"^kdcore[-_]?(plugin[-_]?)?", "", name)
        hint = f"; 'kdcore new-plugin {short}' creates kdcore-plugin-{short}" if short else ""
        raise UserError(f"NAME {name!r}: give the short name, without the kdcore prefix{hint}")
    if not _NAME_RE.match(name) or len(name) > MAX_NAME:
        raise UserError(f"NAME {name!r}: use lower-case letters and digits, words joined by '-' "
                        f"or '_', starting with a letter, at most {MAX_NAME} characters "
                        f"(e.g. 'cosine-feature')")
    names = Names(name, kind)
    if keyword.iskeyword(names.ident):
        raise UserError(f"NAME {name!r} is a Python keyword; pick another name")
    taken = {ep.name: ep for ep in entry_points(group="kdcore")}
    if names.ident in taken:
        ep = taken[names.ident]
        owner = ep.dist.metadata["Name"] if ep.dist else "another distribution"
        raise UserError(f"NAME {name!r}: a plugin named {names.ident!r} is already installed "
                        f"({owner}); two plugins cannot share a name, pick another")
    from .plugins import Plugins
    from .registry import components

    builtin = {r.component.name for r in components(kind, Plugins(load_entry_points=False))}
    if names.ident in builtin:
        raise UserError(f"NAME {name!r}: kdcore has a built-in {kind} {names.ident!r}; the short "
                        f"name would become ambiguous, pick another")
    return names


def render(text: str, names: Names) -> str:
    return string.Template(text).substitute(names.values())


def preset(names: Names) -> str:
    """A run config that uses the new component, built from kdcore's default job so that the
    teacher block (and so the cached teacher) is the same."""
    source = resources.files("kdcore") / "presets" / "teacher_student.yaml"
    config: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    n, kind = names.ident, names.kind
    teacher = config["teachers"][0]
    point = teacher["distill"][0]
    kd = {"type": "kd", "weight": 0.5, "temperature": 4.0}
    if kind == "loss":
        point["head"] = {"losses": [{"type": n, "weight": 0.5}]}
    elif kind == "connector":
        point["head"] = {"student_connector": {"type": n}, "losses": [kd]}
    elif kind == "head":
        point["head"] = {"type": n, "warmup_epochs": 1, "losses": [kd]}
    elif kind == "distiller":
        config["distiller"] = {"type": n, "scale": 1.0}
        point["head"] = {"losses": [kd]}
    elif kind == "algorithm":
        config["algorithm"] = {"type": n, "temperature": 4.0, "alpha": 0.5}
        teacher["distill"] = []
    elif kind in ("model", "dataset"):
        config["algorithm"] = {"type": "vanilla"}
        config["teachers"] = []
        if kind == "model":
            config["student"] = {"type": n, "hidden": 64}
        else:
            config["data"] = {"type": n, "batch_size": config["data"]["batch_size"]}
    header = PRESET_HEADER[kind].format(name=n)
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


# what pip install -e and pytest leave in the project folder
GITIGNORE = "__pycache__/\n*.egg-info/\n.pytest_cache/\nbuild/\ndist/\n"


def plan(names: Names) -> dict[str, str]:
    """``{relative path: text}`` of every file of the new plugin."""
    p = names.package
    return {
        "pyproject.toml": render(PYPROJECT, names),
        "README.md": render(README + README_KIND[names.kind], names),
        ".gitignore": GITIGNORE,
        f"{p}/__init__.py": render(INIT, names),
        f"{p}/plugin.py": render(PLUGIN_ALGORITHM if names.kind == "algorithm" else PLUGIN, names),
        f"{p}/{names.module}.py": render(COMPONENTS[names.kind], names),
        f"{p}/presets/example.yaml": preset(names),
        f"tests/{names.test_file}": render(TEST_HEADER + TESTS[names.kind], names),
    }


def new_plugin(name: str, kind: str = "loss", directory: str = ".") -> str:
    """Create ``<directory>/kdcore-plugin-<name>/``; returns its path. Refuses to overwrite."""
    names = validate_name(name, kind)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"--dir {directory}: is a file, not a folder")
    target = os.path.join(directory, names.dist)
    if os.path.exists(target):
        raise UserError(f"{target} already exists; kdcore new-plugin never overwrites: pick "
                        f"another NAME or --dir, or remove it yourself")
    os.makedirs(directory, exist_ok=True)
    staging = temp_folder(directory, prefix=f".{names.dist}-")  # not mkdtemp's 0700
    try:
        for rel, text in plan(names).items():
            path = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        os.rename(staging, target)  # all files appear at once, or none
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def next_steps(target: str, name: str, kind: str) -> list[str]:
    """What to do after creating the folder, as printed by ``kdcore new-plugin``."""
    names = Names(name, kind)
    preset_path = os.path.join(target, names.package, "presets", "example.yaml")
    run = f"kdcore run --config {preset_path}"
    if names.kind == "algorithm":
        run = f"kdcore run --algo {names.ident}"
    what = f"{article(names.kind)} {names.kind} named {names.ident!r}"
    lines = [f"created {target}/ ({names.dist}: {what})", "next:",
             f"  pip install -e {target}", f"  kdcore plugins              # lists {names.ident}",
             f"  pytest {os.path.join(target, 'tests')}", f"  {run}"]
    if names.kind in ("connector", "head", "distiller"):
        lines.append("  (the example config uses the 'kd' loss of kdcore-plugin-kd; in a kdcore "
                     "checkout: pip install ./plugins/kdcore-plugin-kd)")
    return lines


# --- templates (string.Template: $name, $Class ...; $$ is a literal $) --------------------------

SUMMARIES = {
    "loss": "mean squared difference of (optionally L2-normalised) features",
    "connector": "flatten, one linear layer, reshape to the other side's shape",
    "head": "distill head whose loss weights ramp up over the first epochs",
    "distiller": "frozen teachers with all distillation terms scaled by one factor",
    "algorithm": "task loss plus KD from the teachers' averaged soft outputs",
    "model": "two-layer perceptron on flattened images",
    "dataset": "synthetic images: one random pattern per class plus noise",
}

PRESET_HEADER = {
    "loss": "# kdcore's default job with the distillation loss replaced by '{name}'.\n",
    "connector": "# kdcore's default job with '{name}' as the student connector (needs the 'kd' loss).\n",
    "head": "# kdcore's default job with the '{name}' head (needs the 'kd' loss).\n",
    "distiller": "# kdcore's default job with the '{name}' distiller (needs the 'kd' loss).\n",
    "algorithm": "# The '{name}' algorithm with kdcore's default teacher and student:\n"
                 "# `kdcore run --algo {name}`.\n",
    "model": "# Trains the '{name}' model alone (vanilla) on Fashion-MNIST.\n",
    "dataset": "# Trains kdcore's default student alone (vanilla) on the '{name}' data set.\n",
}

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "kdcore plugin: $summary."
readme = "README.md"
requires-python = ">=3.10"
# The kdcore range: kdcore skips the plugin, with a message naming both versions, outside it.
dependencies = ["kdcore$range"]

[project.optional-dependencies]
test = ["pytest>=7"]

# How kdcore finds the plugin: one entry point in the "kdcore" group, naming the module
# whose @kdcore.hookimpl functions declare the components.
[project.entry-points.kdcore]
$name = "$package.plugin"

[tool.setuptools.packages.find]
include = ["$package*"]

[tool.setuptools.package-data]
$package = ["presets/*.yaml"]
'''

INIT = '''\
"""$dist: a kdcore plugin ($summary)."""

__version__ = "0.1.0"
'''

PLUGIN = '''\
"""Entry point of $dist: kdcore imports it to find the plugin's components.

Keep it light. The factory is named as a "module:attr" string, so `kdcore plugins` and
`kdcore list` never import the component's code; it is imported when a run builds it.
"""

import kdcore


@kdcore.hookimpl
def $hook():
    """Declare the $kinds this plugin provides.

    A Component is the short name used in configs (`type: $name`), the factory, and the one
    line `kdcore list $kind` shows. The factory's keyword arguments are the component's YAML
    parameters: kdcore checks a user's keys against them and suggests the closest on a typo.
    """
    return [kdcore.Component("$name", "$package.$module:$attr",
                             "$summary")]
'''

PLUGIN_ALGORITHM = '''\
"""Entry point of $dist: kdcore imports it to find the plugin's components.

Keep it light. The factory is named as a "module:attr" string, so `kdcore plugins` and
`kdcore list` never import the component's code; it is imported when a run builds it.
"""

import os

import kdcore

PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


@kdcore.hookimpl
def $hook():
    """Declare the algorithms this plugin provides.

    A Component is the short name (`kdcore run --algo $name`), the factory, and the one line
    `kdcore list algorithm` shows. The factory's keyword arguments are the YAML parameters of
    the `algorithm:` block. The "default" preset is what `--algo $name` runs without --config.
    """
    return [kdcore.Component("$name", "$package.$module:$attr", "$summary",
                             presets={"default": os.path.join(PRESETS, "example.yaml")})]
'''

COMPONENTS = {
    "loss": '''\
"""The $name distillation loss: a starting point to replace with your method."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import kdcore


class $Class(kdcore.Loss):
    """Squared distance between student and teacher features, summed per sample and averaged
    over the batch. The head multiplies by the configured ``weight``; the loss must not.

    :param normalize: L2-normalise each sample's flattened feature first, so that only the
        direction of the features is matched.
    :param student_shape: context value from kdcore (per-sample feature shape after the
        connectors), checked here so a bad config fails before training starts.
    :param teacher_shape: the same for the teacher side.
    """

    def __init__(self, normalize: bool = False, student_shape: tuple[int, ...] | None = None,
                 teacher_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if student_shape and teacher_shape and tuple(student_shape) != tuple(teacher_shape):
            raise kdcore.UserError(
                f"$name compares features of equal shape, but the student's is "
                f"{tuple(student_shape)} and the teacher's {tuple(teacher_shape)}; add a "
                f"student_connector (e.g. {{type: linear}})")
        self.normalize = bool(normalize)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        # extra holds targets, indices, epoch and step; accept it even when unused
        s, t = student.float().flatten(1), teacher.float().flatten(1)
        if self.normalize:
            s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
        return (s - t).pow(2).sum(dim=1).mean()
''',
    "connector": '''\
"""The $name connector: maps a feature to the other side's shape."""

from __future__ import annotations

import math

import torch
from torch import nn

import kdcore


class $Class(kdcore.Connector):
    """Flattens the feature, maps it with one linear layer, reshapes it to ``out_shape``.

    :param in_shape: context value from kdcore: per-sample shape of the feature it receives.
    :param out_shape: context value: per-sample shape of the feature on the other side.
    :param bias: learn a bias in the linear layer.
    """

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], bias: bool = True) -> None:
        super().__init__()
        if not in_shape or not out_shape:
            raise kdcore.UserError("$name maps tensor features; tap a module that outputs a tensor")
        self.out_shape = tuple(out_shape)
        self.fc = nn.Linear(math.prod(in_shape), math.prod(out_shape), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)).view(x.shape[0], *self.out_shape)
''',
    "head": '''\
"""The $name head: kdcore's distill head with loss weights that ramp up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import kdcore


class $Class(kdcore.DistillationHead):
    """Connectors, then the weighted losses (as the built-in ``distill`` head), with every
    weight scaled by ``(epoch + 1) / (warmup_epochs + 1)`` during the first ``warmup_epochs``
    epochs, so distillation does not swamp the task loss at the start.

    ``losses``, ``student_connector``, ``teacher_connector`` and ``label`` are built by kdcore
    from the config; ``warmup_epochs`` is this head's YAML parameter.
    """

    def __init__(self, losses: Mapping[str, tuple[float, nn.Module]],
                 student_connector: nn.Module | None = None,
                 teacher_connector: nn.Module | None = None, label: str = "head",
                 warmup_epochs: int = 1) -> None:
        super().__init__(losses, student_connector, teacher_connector, label)
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise kdcore.UserError(f"{label}: warmup_epochs must be a whole number >= 0, "
                                   f"got {warmup_epochs!r}")
        self.warmup_epochs = int(warmup_epochs)

    def ramp(self, epoch: int) -> float:
        if epoch >= self.warmup_epochs:
            return 1.0
        return (epoch + 1) / (self.warmup_epochs + 1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> dict[str, torch.Tensor]:
        scale = self.ramp(int(extra.get("epoch", 0)))
        return {name: scale * value for name, value in super().forward(student, teacher, **extra).items()}
''',
    "distiller": '''\
"""The $name distiller: frozen teachers, with all distillation terms scaled."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import kdcore


class $Class(kdcore.Distiller):
    """kdcore's teacher distiller (frozen teachers, taps, one head per distill point) that
    multiplies every distillation term by ``scale``, to balance distillation against the task
    loss without editing each weight.

    ``teachers`` and ``points`` are built by kdcore from the config; ``scale`` is the YAML
    parameter of the ``distiller:`` block.
    """

    def __init__(self, teachers: Mapping[str, nn.Module], points: list[Any],
                 scale: float = 1.0) -> None:
        super().__init__(teachers, points)
        if scale < 0:
            raise kdcore.UserError(f"distiller $name: scale must be >= 0, got {scale!r}")
        self.scale = float(scale)

    def losses(self, student_features: Mapping[str, Any],
               teacher_features: Mapping[str, Mapping[str, Any]], **extra: Any) -> dict[str, torch.Tensor]:
        terms = super().losses(student_features, teacher_features, **extra)
        return {name: self.scale * value for name, value in terms.items()}
''',
    "algorithm": '''\
"""The $name algorithm: what one training step minimises."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdcore


class $Class(kdcore.Algorithm):
    """``(1 - alpha) * task loss + alpha * T^2 * KL(teachers' averaged soft outputs || student's)``
    computed in the step itself, plus the terms of any distill points in the config.

    kdcore calls the factory with the ``algorithm:`` parameters (``temperature``, ``alpha``)
    and context values it names: ``student``, ``task``, ``distiller`` (None without teachers).
    The engine sums the returned terms, backpropagates and steps one optimizer over
    ``trainable_parameters()``.
    """

    def __init__(self, student: nn.Module, task: Any, distiller: kdcore.Distiller | None = None,
                 temperature: float = 4.0, alpha: float = 0.5) -> None:
        if distiller is None or len(distiller.teachers) == 0:
            raise kdcore.UserError("algorithm '$name' needs at least one teacher in 'teachers'; "
                                   "use --algo vanilla to train the student alone")
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise kdcore.UserError(f"algorithm '$name': need temperature > 0 and 0 <= alpha <= 1, "
                                   f"got {temperature} and {alpha}")
        super().__init__(student, task, distiller)
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def training_step(self, batch: kdcore.Batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        assert self.distiller is not None
        outputs, student_features = self.student_forward(batch.inputs)
        with torch.no_grad():  # teachers are frozen; never build a graph through them
            soft = torch.stack([teacher(batch.inputs) for teacher in self.distiller.teachers.values()])
        t = self.temperature
        kd = F.kl_div(F.log_softmax(outputs / t, dim=1), F.log_softmax(soft.mean(0) / t, dim=1),
                      reduction="batchmean", log_target=True) * t * t
        terms = {"task": (1 - self.alpha) * self.task.loss(outputs, batch.targets), "$name": self.alpha * kd}
        if self.distiller.points:  # distill points of the config still add their terms
            teacher_features = self.distiller.teacher_features(batch.inputs, indices=batch.indices)
            terms.update(self.distiller.losses(student_features, teacher_features, targets=batch.targets,
                                               indices=batch.indices, epoch=epoch, step=step))
        return terms
''',
    "model": '''\
"""The $name model: a network kdcore can train, distil into, or tap."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class $Class(nn.Module):
    """Flatten, one hidden layer with ReLU, a linear classifier.

    Module paths for distill points: ``hidden`` (the hidden features, after ReLU),
    ``hidden.fc`` (before ReLU), ``fc`` (logits) and ``output``.

    :param num_classes: context value from kdcore (the data set's classes).
    :param in_channels: context value from kdcore (the data set's image channels).
    :param image_size: input height and width.
    :param hidden: width of the hidden layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 hidden: int = 64) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(OrderedDict(
            fc=nn.Linear(in_channels * image_size * image_size, hidden), relu=nn.ReLU()))
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(self.flatten(x)))
''',
    "dataset": '''\
"""The $name data set: a starting point that needs no files; load yours here instead."""

from __future__ import annotations

import hashlib

import torch

import kdcore
from kdcore.data import DataSource, TensorSplit


def $attr(num_classes: int = 10, train_size: int = 2000, test_size: int = 500,
          image_size: int = 28, noise: float = 1.0, seed: int = 0) -> DataSource:
    """Images of one channel: each class is a fixed random pattern, each sample that pattern
    plus Gaussian noise. Same parameters, same data (and fingerprint, which keys caches).

    The keyword arguments are the ``data:`` block's parameters in a config.
    """
    if num_classes < 2 or train_size < 0 or test_size < 1 or image_size < 1 or noise < 0:
        raise kdcore.UserError("data $name: need num_classes >= 2, train_size >= 0, "
                               "test_size >= 1, image_size >= 1, noise >= 0")
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(num_classes, 1, image_size, image_size, generator=generator)

    def split(n: int) -> TensorSplit:
        targets = torch.randint(0, num_classes, (n,), generator=generator)
        noise_ = torch.randn(n, 1, image_size, image_size, generator=generator)
        return TensorSplit(patterns[targets] + noise * noise_, targets)

    train, test = split(train_size), split(test_size)
    key = f"$name|{num_classes}|{train_size}|{test_size}|{image_size}|{noise}|{seed}"
    return DataSource(train=train, test=test, task=kdcore.ClassificationTask(num_classes),
                      input_shape=(1, image_size, image_size), num_classes=num_classes,
                      fingerprint=hashlib.sha1(key.encode()).hexdigest()[:16], name="$name")
''',
}

TEST_HEADER = '''\
"""Contract tests from kdcore.testing: they check what kdcore relies on (shapes, gradients,
frozen teachers, determinism, clear errors). Run with `pytest` after `pip install -e .`.

Add tests of your method's own numbers next to this file: compute the expected value
independently (by hand, with loops or numpy), not with the code under test.
"""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "$dist"
    entry_point = "$name"
    components = {"$kind": ["$name"]}

'''

TESTS = {
    "loss": '''
class Test${Class}Contract(testing.LossContract):
    component = "$name:$name"
    params = {"normalize": True}
    student_shape = (32,)
    more_shapes = [((8, 7, 7), (8, 7, 7))]
    bad_shapes = [((32,), (16,))]  # the factory refuses unequal shapes
''',
    "connector": '''
class Test${Class}Contract(testing.ConnectorContract):
    component = "$name:$name"
    in_shape = (8, 7, 7)
    out_shape = (16, 7, 7)
''',
    "head": '''
class Test${Class}Contract(testing.HeadContract):
    component = "$name:$name"
    params = {"warmup_epochs": 2}
''',
    "distiller": '''
class Test${Class}Contract(testing.DistillerContract):
    component = "$name:$name"
    params = {"scale": 0.5}
''',
    "algorithm": '''
class Test${Class}Contract(testing.AlgorithmContract):
    component = "$name:$name"
    params = {"temperature": 4.0, "alpha": 0.5}
''',
    "model": '''
class Test${Class}Contract(testing.ModelContract):
    component = "$name:$name"
    params = {"hidden": 16}
    module_paths = ["hidden", "hidden.fc", "fc"]
''',
    "dataset": '''
class Test${Class}Contract(testing.DatasetContract):
    component = "$name:$name"
    params = {"train_size": 20, "test_size": 10, "num_classes": 3}
    expected = {"input_shape": (1, 28, 28), "num_classes": 3, "name": "$name",
                "train_size": 20, "test_size": 10}
''',
}

README = '''\
# $dist

A kdcore plugin providing the $kind `$name`: $summary.

Created with `kdcore new-plugin`; see kdcore's docs/plugins.md for the whole guide.

## Install and check

    pip install -e .          # from this folder; kdcore finds the plugin by its entry point
    kdcore plugins            # lists "$name ($dist 0.1.0) ok" and its components
    kdcore list $kind           # shows $name:$name
    pytest                    # the contract tests in tests/

## Layout

    pyproject.toml            # the "kdcore" entry point and the kdcore$range range
    $package/plugin.py        # @kdcore.hookimpl $hook(): declares the component
    $package/$module.py       # the component
    $package/presets/example.yaml   # a run config that uses it
    tests/$test_file    # kdcore.testing contract tests

## Publish

    python -m pip install build twine
    python -m build           # dist/*.whl and dist/*.tar.gz
    twine upload dist/*
'''

README_KIND = {
    "loss": '''
## Use

In a config, as a loss of a distill point (`weight` is applied by the head):

    head:
      losses:
        - {type: $name, weight: 0.5, normalize: false}

    kdcore run --config $package/presets/example.yaml
''',
    "connector": '''
## Use

In a config, on either side of a head:

    head:
      student_connector: {type: $name}

    kdcore run --config $package/presets/example.yaml   # uses the kd loss (kdcore-plugin-kd)
''',
    "head": '''
## Use

    head:
      type: $name
      warmup_epochs: 2
      losses: [{type: kd, weight: 0.5}]

    kdcore run --config $package/presets/example.yaml   # uses the kd loss (kdcore-plugin-kd)
''',
    "distiller": '''
## Use

    distiller: {type: $name, scale: 0.5}

    kdcore run --config $package/presets/example.yaml   # uses the kd loss (kdcore-plugin-kd)
''',
    "algorithm": '''
## Use

    kdcore run --algo $name                     # the plugin's default preset
    kdcore run --algo $name --set algorithm.alpha=0.9
''',
    "model": '''
## Use

As the student (or a teacher) of any config:

    student: {type: $name, hidden: 128}

    kdcore run --config $package/presets/example.yaml   # trains it alone
    kdcore inspect $name                                # module paths for distill points
''',
    "dataset": '''
## Use

    data: {type: $name, train_size: 5000, num_classes: 10}

    kdcore run --config $package/presets/example.yaml   # trains the default student on it
''',
}
