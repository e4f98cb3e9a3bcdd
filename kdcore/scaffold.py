"""``kdcore new-plugin``: write a ready-to-install plugin package with working components.

The generated folder is what docs/plugins.md walks through, and the layout every plugin under
kdcore's ``plugins/`` follows (:func:`layout`, checked by ``tests/test_scaffold.py``): a
``pyproject.toml`` with the ``kdcore`` entry point and a kdcore version range, a light
entry-point module with documented hooks, one module with the components (one, or several with
``--component``), a preset registered by name, contract tests from :mod:`kdcore.testing`, and a
README. Nothing is ever overwritten.
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
from packaging.version import Version

from .errors import UserError
from .files import temp_folder
from .version import __version__

#: kinds in the order ``--kind`` lists them.
SCAFFOLD_KINDS = ("loss", "connector", "head", "distiller", "algorithm", "model", "dataset")
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[_-][a-z0-9]+)*$")
MAX_NAME = 40


def kdcore_range(version: str = __version__) -> str:
    """The range a new plugin declares: from this kdcore (whose hooks it uses, ``kdcore_presets``
    among them) to the end of this minor series for 0.x, of this major from 1.0 on."""
    parts = Version(version).release
    release, (major, minor) = ".".join(map(str, parts[:3])), (*parts, 0)[:2]
    if major == 0:
        return f">={release},<0.{minor + 1}"
    return f">={release},<{major + 1}"


@attrs.frozen
class Names:
    """Every spelling of the plugin's name the templates need."""

    name: str  # as typed: kdcore-plugin-<name>, the folder and the distribution
    kind: str
    #: the components' names (``type:`` in configs); default: the plugin's own name
    components: tuple[str, ...] = ()

    @property
    def ident(self) -> str:
        """Entry-point name, and the first component's name (``type:`` in configs)."""
        return self.components[0] if self.components else self.name.replace("-", "_")

    @property
    def plugin(self) -> str:
        """The entry-point name: the plugin's name with ``_`` for ``-``."""
        return self.name.replace("-", "_")

    @property
    def parts(self) -> list["Names"]:
        """One :class:`Names` per component, each naming that component."""
        return [attrs.evolve(self, components=(c,)) for c in self.components or (self.plugin,)]

    @property
    def preset_file(self) -> str:
        """Presets are named after the data set they run on (``presets/fashion_mnist.yaml``)."""
        return f"{self.ident}.yaml" if self.kind == "dataset" else "fashion_mnist.yaml"

    @property
    def dist(self) -> str:
        return f"kdcore-plugin-{self.name}"

    @property
    def package(self) -> str:
        return f"kdcore_plugin_{self.plugin}"

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
        return f"test_{self.plugin}_contract.py"

    @property
    def attr(self) -> str:
        return f"load_{self.ident}" if self.kind == "dataset" else self.cls

    @property
    def hook(self) -> str:
        return "kdcore_losses" if self.kind == "loss" else f"kdcore_{self.kind}s"

    def values(self) -> dict[str, str]:
        everyone = [part.ident for part in self.parts]
        return {"name": self.ident, "dist": self.dist, "package": self.package, "Class": self.cls,
                "module": self.module, "attr": self.attr, "hook": self.hook, "kind": self.kind,
                "range": kdcore_range(), "summary": SUMMARIES[self.kind],
                "kinds": "losses" if self.kind == "loss" else f"{self.kind}s",
                "version": __version__, "test_file": self.test_file, "plugin": self.plugin,
                "names": ", ".join(everyone), "listed": ", ".join(f'"{n}"' for n in everyone),
                "preset_file": self.preset_file}


def validate_name(name: str, kind: str, components: tuple[str, ...] = ()) -> Names:
    """Check NAME, KIND and the component names; a bad one raises :class:`UserError` saying
    what to type instead."""
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
    for component in components:
        if not re.match(r"^[a-z][a-z0-9_]*$", component) or len(component) > MAX_NAME or \
                keyword.iskeyword(component):
            raise UserError(f"--component {component!r}: use lower-case letters, digits and '_', "
                            f"starting with a letter, at most {MAX_NAME} characters, not a Python "
                            f"keyword (e.g. 'sp')")
    if len(set(components)) != len(components):
        raise UserError(f"--component: {', '.join(components)} names one component twice")
    names = Names(name, kind, tuple(components))
    if keyword.iskeyword(names.plugin):
        raise UserError(f"NAME {name!r} is a Python keyword; pick another name")
    taken = {ep.name: ep for ep in entry_points(group="kdcore")}
    if names.plugin in taken:
        ep = taken[names.plugin]
        owner = ep.dist.metadata["Name"] if ep.dist else "another distribution"
        raise UserError(f"NAME {name!r}: a plugin named {names.plugin!r} is already installed "
                        f"({owner}); two plugins cannot share a name, pick another")
    from .plugins import Plugins
    from .registry import components as registered

    core = Plugins(load_entry_points=False)
    builtin = {r.component.name for r in registered(kind, core)}
    for part in names.parts:
        if part.ident in builtin:
            what = f"NAME {name!r}" if not components else f"--component {part.ident!r}"
            raise UserError(f"{what}: kdcore has a built-in {kind} {part.ident!r}; the short "
                            f"name stays the core's, pick another")
    if names.plugin in {r.component.name for r in registered("preset", core)}:
        raise UserError(f"NAME {name!r}: kdcore has a built-in preset {names.plugin!r}, and the "
                        f"plugin's preset is named after it; pick another")
    return names


def render(text: str, names: Names) -> str:
    return string.Template(text).substitute(names.values())


def preset(names: Names) -> str:
    """A run config that uses the new component, built from kdcore's default job so that the
    teacher block (and so the cached teacher) is the same."""
    source = resources.files("kdcore") / "presets" / "teacher_student.yaml"
    config: dict[str, Any] = yaml.safe_load(source.read_text(encoding="utf-8"))
    n, kind = names.ident, names.kind  # the first component
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


def layout(names: Names) -> list[str]:
    """The files every plugin has, scaffolded or in kdcore's ``plugins/`` (more may sit beside
    them: more modules, presets and tests)."""
    p = names.package
    return ["pyproject.toml", "README.md", ".gitignore", f"{p}/__init__.py", f"{p}/plugin.py",
            f"{p}/{names.module}.py", f"{p}/presets/{names.preset_file}", "tests/conftest.py",
            f"tests/{names.test_file}"]


def _definitions(text: str) -> str:
    """``text`` from its first top-level ``class``/``def`` on: a component without the module's
    docstring and imports, to follow another in the same module."""
    match = re.search(r"^(class|def) ", text, re.M)
    return text[match.start():] if match else text


def plan(names: Names) -> dict[str, str]:
    """``{relative path: text}`` of every file of the new plugin."""
    p = names.package
    parts = names.parts
    every = names.values()["names"]
    module = string.Template(COMPONENTS[names.kind]).substitute(parts[0].values(), names=every)
    module += "".join("\n\n" + _definitions(render(COMPONENTS[names.kind], part)) for part in parts[1:])
    declared = ",\n".join(render(DECLARE_ALGORITHM if names.kind == "algorithm" else DECLARE, part)
                          for part in parts)
    tests = render(TEST_HEADER, names) + "\n".join(render(TESTS[names.kind], part) for part in parts)
    files = dict(zip(layout(names), [
        render(PYPROJECT, names),
        render(README + README_KIND[names.kind], names),
        GITIGNORE,
        render(INIT, names),
        string.Template(PLUGIN_ALGORITHM if names.kind == "algorithm" else PLUGIN).substitute(
            names.values(), declared=declared),
        module,
        preset(names),
        CONFTEST,
        tests,
    ]))
    return files


def new_plugin(name: str, kind: str = "loss", directory: str = ".",
               components: tuple[str, ...] = ()) -> str:
    """Create ``<directory>/kdcore-plugin-<name>/`` with the ``components`` (default: one named
    after the plugin); returns its path. Refuses to overwrite."""
    names = validate_name(name, kind, tuple(components))
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


def next_steps(target: str, name: str, kind: str, components: tuple[str, ...] = ()) -> list[str]:
    """What to do after creating the folder, as printed by ``kdcore new-plugin``."""
    names = Names(name, kind, tuple(components))
    run = f"kdcore run --preset {names.plugin}"
    if names.kind == "algorithm":
        run = f"kdcore run --algo {names.ident}"
    idents = [part.ident for part in names.parts]
    kinds = "losses" if kind == "loss" else f"{kind}s"
    what = (f"{article(names.kind)} {names.kind} named {idents[0]!r}" if len(idents) == 1 else
            f"{kinds} named {', '.join(map(repr, idents))}")
    return [f"created {target}/ ({names.dist}: {what})", "next:",
            f"  pip install -e {target}", f"  kdcore plugins              # lists {names.plugin}",
            f"  python -m pytest {os.path.join(target, 'tests')}", f"  {run}"]


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
    "connector": "# kdcore's default job with '{name}' as the student connector.\n",
    "head": "# kdcore's default job with the '{name}' head.\n",
    "distiller": "# kdcore's default job with the '{name}' distiller.\n",
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
$plugin = "$package.plugin"

[tool.setuptools.packages.find]
include = ["$package*"]

[tool.setuptools.package-data]
$package = ["presets/*.yaml"]
'''

INIT = '''\
"""$dist: a kdcore plugin ($summary)."""

from importlib.metadata import version

__version__ = version("$dist")  # pyproject.toml's, as installed
'''

#: the presets hook every generated plugin.py ends with
PRESET_HOOK = '''

@kdcore.hookimpl
def kdcore_presets():
    """Declare the run configs this plugin ships: `kdcore run --preset $plugin`. The file is
    found inside the installed package, so ship it as package data (pyproject.toml)."""
    return [kdcore.Preset("$plugin", "$package:presets/$preset_file",
                          "an example run with $names")]
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
    return [
$declared,
    ]

''' + PRESET_HOOK

DECLARE = '''        kdcore.Component("$name", "$package.$module:$attr",
                         "$summary")'''

DECLARE_ALGORITHM = '''        kdcore.Component("$name", "$package.$module:$attr", "$summary",
                         presets={"default": os.path.join(PRESETS, "$preset_file")})'''

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
    return [
$declared,
    ]

''' + PRESET_HOOK

COMPONENTS = {
    "loss": '''\
"""The $names distillation loss: a starting point to replace with your method."""

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
"""The $names connector: maps a feature to the other side's shape."""

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
"""The $names head: kdcore's distill head with loss weights that ramp up."""

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
"""The $names distiller: frozen teachers, with all distillation terms scaled."""

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
            raise kdcore.UserError(f"distiller $name: scale must be >= 0, got {scale!r}",
                                   key_path="distiller")  # the message names its place already
        self.scale = float(scale)

    def losses(self, student_features: Mapping[str, Any],
               teacher_features: Mapping[str, Mapping[str, Any]], **extra: Any) -> dict[str, torch.Tensor]:
        terms = super().losses(student_features, teacher_features, **extra)
        return {name: self.scale * value for name, value in terms.items()}
''',
    "algorithm": '''\
"""The $names algorithm: what one training step minimises."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdcore


class $Class(kdcore.Algorithm):
    """``(1 - alpha) * task loss + alpha * T^2 * KL(teachers' averaged soft outputs || student's)``
    computed in the step itself, plus the terms of any distill points in the config. Teachers
    are optional: with none (``teachers: []``) the step is the task loss alone. An algorithm
    that learns from no teacher at all builds what it learns from itself (docs/plugins.md,
    "Algorithms without a teacher").

    kdcore calls the factory with the ``algorithm:`` parameters (``temperature``, ``alpha``)
    and context values it names: ``student``, ``task``, ``distiller`` (None without teachers).
    The engine sums the returned terms, backpropagates and steps one optimizer over
    ``trainable_parameters()``.
    """

    def __init__(self, student: nn.Module, task: Any, distiller: kdcore.Distiller | None = None,
                 temperature: float = 4.0, alpha: float = 0.5) -> None:
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise kdcore.UserError(f"algorithm '$name': need temperature > 0 and 0 <= alpha <= 1, "
                                   f"got {temperature} and {alpha}", key_path="algorithm")
        super().__init__(student, task, distiller)
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def training_step(self, batch: kdcore.Batch, *, epoch: int, step: int) -> dict[str, torch.Tensor]:
        outputs, student_features = self.student_forward(batch.inputs)
        teachers = list(self.distiller.teachers.values()) if self.distiller is not None else []
        if not teachers:
            return {"task": self.task.loss(outputs, batch.targets)}
        with torch.no_grad():  # teachers are frozen; never build a graph through them
            soft = torch.stack([teacher(batch.inputs) for teacher in teachers])
        t = self.temperature
        kd = F.kl_div(F.log_softmax(outputs / t, dim=1), F.log_softmax(soft.mean(0) / t, dim=1),
                      reduction="batchmean", log_target=True) * t * t
        terms = {"task": (1 - self.alpha) * self.task.loss(outputs, batch.targets), "$name": self.alpha * kd}
        assert self.distiller is not None
        if self.distiller.points:  # distill points of the config still add their terms
            teacher_features = self.distiller.teacher_features(batch.inputs, indices=batch.indices)
            terms.update(self.distiller.losses(student_features, teacher_features, targets=batch.targets,
                                               indices=batch.indices, epoch=epoch, step=step))
        return terms
''',
    "model": '''\
"""The $names model: a network kdcore can train, distil into, or tap."""

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
"""The $names data set: a starting point that needs no files; load yours here instead."""

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
                               "test_size >= 1, image_size >= 1, noise >= 0", key_path="data")
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

CONFTEST = '''\
"""The kit's test set-up: the ``e2e`` marker (kdcore.testing.run_preset tests)."""

from kdcore.testing.pytest_setup import pytest_configure  # noqa: F401
'''

TEST_HEADER = '''\
"""Contract tests from kdcore.testing: they check what kdcore relies on (shapes, gradients,
frozen teachers, determinism, clear errors). Run with `python -m pytest` after `pip install -e .`.

Add tests of your method's own numbers next to this file: compute the expected value
independently (by hand, with loops or numpy), not with the code under test.
"""

from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "$dist"
    entry_point = "$plugin"
    components = {"$kind": [$listed], "preset": ["$plugin"]}

'''

TESTS = {
    "loss": '''
class Test${Class}Contract(testing.LossContract):
    component = "$plugin:$name"
    params = {"normalize": True}
    student_shape = (32,)
    more_shapes = [((8, 7, 7), (8, 7, 7))]
    bad_shapes = [((32,), (16,))]  # the factory refuses unequal shapes
''',
    "connector": '''
class Test${Class}Contract(testing.ConnectorContract):
    component = "$plugin:$name"
    in_shape = (8, 7, 7)
    out_shape = (16, 7, 7)
''',
    "head": '''
class Test${Class}Contract(testing.HeadContract):
    component = "$plugin:$name"
    params = {"warmup_epochs": 2}
''',
    "distiller": '''
class Test${Class}Contract(testing.DistillerContract):
    component = "$plugin:$name"
    params = {"scale": 0.5}
''',
    "algorithm": '''
class Test${Class}Contract(testing.AlgorithmContract):
    component = "$plugin:$name"
    params = {"temperature": 4.0, "alpha": 0.5}


class Test${Class}WithoutTeachers(Test${Class}Contract):
    teachers = 0
''',
    "model": '''
class Test${Class}Contract(testing.ModelContract):
    component = "$plugin:$name"
    params = {"hidden": 16}
    module_paths = ["hidden", "hidden.fc", "fc"]
''',
    "dataset": '''
class Test${Class}Contract(testing.DatasetContract):
    component = "$plugin:$name"
    params = {"train_size": 20, "test_size": 10, "num_classes": 3}
    expected = {"input_shape": (1, 28, 28), "num_classes": 3, "name": "$name",
                "train_size": 20, "test_size": 10}
''',
}

README = '''\
# $dist

A kdcore plugin providing $kinds ($names): a starting point ($summary).

Created with `kdcore new-plugin`; see kdcore's docs/plugins.md for the whole guide.

## Install and check

    pip install -e .          # from this folder; kdcore finds the plugin by its entry point
    kdcore plugins            # lists "$plugin ($dist 0.1.0) ok" and its components
    kdcore list $kind           # shows $plugin:$name
    python -m pytest          # the contract tests in tests/

## Layout

    pyproject.toml            # the "kdcore" entry point and the kdcore$range range
    $package/plugin.py        # @kdcore.hookimpl $hook() and kdcore_presets(): declare them
    $package/$module.py       # the components
    $package/presets/$preset_file   # a run config that uses them: kdcore run --preset $plugin
    tests/conftest.py         # the e2e marker of kdcore.testing
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

    kdcore run --preset $plugin
''',
    "connector": '''
## Use

In a config, on either side of a head:

    head:
      student_connector: {type: $name}

    kdcore run --preset $plugin
''',
    "head": '''
## Use

    head:
      type: $name
      warmup_epochs: 2
      losses: [{type: kd, weight: 0.5}]

    kdcore run --preset $plugin
''',
    "distiller": '''
## Use

    distiller: {type: $name, scale: 0.5}

    kdcore run --preset $plugin
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

    kdcore run --preset $plugin                         # trains it alone
    kdcore inspect $name                                # module paths for distill points
''',
    "dataset": '''
## Use

    data: {type: $name, train_size: 5000, num_classes: 10}

    kdcore run --preset $plugin   # trains the default student on it
''',
}
