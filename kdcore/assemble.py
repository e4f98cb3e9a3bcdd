"""Building a run's components from its config: data, models, heads, distiller, algorithm.

Connectors get their input and output shapes from a probe: one forward pass of two samples
through student and teachers with the taps attached, so configs never spell out channel counts.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import torch
from torch import nn

from .components import Algorithm, DistillationHead
from .components.distiller import DistillPoint
from .config import (
    ComponentConfig,
    DataConfig,
    DistillPointConfig,
    HeadConfig,
    LossConfig,
    RunConfig,
    block_keys,
)
from .data import DataSource, TensorSplit
from .data.splits import Splits, take
from .errors import UserError
from .models.imported import build_imported
from .registry import build
from .taps import OUTPUT, FeatureTaps, Tap, resolve_module


def load_data(cfg: DataConfig) -> Splits:
    """Build the data set and apply ``val_split``, ``train_limit`` and ``test_limit``.

    The validation images are a fixed random subset of the training split (seed 0, whatever
    the run's seed), so every run and every method is tuned on the same held-out images.
    """
    source = build("dataset", cfg.type, where="data", _block_keys=block_keys(DataConfig), **cfg.params)
    train, test, val = source.train, source.test, None
    check_targets = getattr(source.task, "check_targets", None)  # e.g. boxes inside the image
    if check_targets is not None:
        for name, split in (("train", train), ("test", test)):
            if isinstance(split, TensorSplit):
                check_targets(split.targets, f"data ({cfg.type}) {name} split")
    if cfg.val_split:
        if cfg.val_split >= len(train):
            raise UserError(f"config key data.val_split: {cfg.val_split} is not smaller than the "
                            f"{len(train)} training images")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        val, train = take(train, order[: cfg.val_split]), take(train, order[cfg.val_split:].sort().values)
    full_train = train
    if cfg.train_limit and cfg.train_limit < len(train):
        train = take(train, torch.arange(cfg.train_limit))
    if cfg.test_limit and cfg.test_limit < len(test):
        test = take(test, torch.arange(cfg.test_limit))
    student_train = train
    if cfg.labelled is not None:
        if cfg.labelled > len(train):
            raise UserError(f"config key data.labelled: {cfg.labelled} is more than the "
                            f"{len(train)} training images")
        student_train = keep_labels(train, cfg.labelled, getattr(source.task, "unlabelled_target", -1))
        if hasattr(source.task, "partial_labels"):
            source.task.partial_labels = True  # some batches may hold no label at all
        if cfg.drop_unlabelled:  # the baseline: the student alone on the labelled images only
            student_train = take(train, labelled_indices(len(train), cfg.labelled).sort().values)
    return Splits(source, train, val, test, student_train, full_train)


class _MaskedLabels(torch.utils.data.Dataset):
    def __init__(self, data: Any, labelled: torch.Tensor) -> None:
        self.data, self.labelled = data, labelled

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x, y = self.data[i]
        return x, (y if bool(self.labelled[i]) else -1)


def labelled_indices(total: int, n: int) -> torch.Tensor:
    """The ``n`` training images that keep their label: a fixed random subset (seed 0)."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:n]


def keep_labels(train: Any, n: int, unlabelled: float = -1) -> Any:
    """The student's view of the training split when only ``n`` images keep their label.

    The others get target -1 (ignored by the task loss; every element of a dense target, e.g.
    every box row, gets the task's ``unlabelled_target``) but still pass through the teachers:
    the original KD setting, where soft targets come from a larger transfer set. The labelled
    images are a fixed random subset (seed 0); teachers are trained on every label.
    """
    labelled = torch.zeros(len(train), dtype=torch.bool)
    labelled[labelled_indices(len(train), n)] = True
    if isinstance(train, TensorSplit):
        keep = labelled.view(-1, *[1] * (train.targets.dim() - 1))
        return TensorSplit(train.inputs, torch.where(keep, train.targets, unlabelled))
    return _MaskedLabels(train, labelled)


def build_model(kind_cfg: Any, source: DataSource, where: str) -> nn.Module:
    context = {"num_classes": source.num_classes, "in_channels": source.input_shape[0]}
    if kind_cfg.type == "import":  # the user's own code: its signature is the schema
        return build_imported(kind_cfg.params, context, where=where, block_keys=block_keys(type(kind_cfg)))
    return build("model", kind_cfg.type, where=where, context=context,  # build() checks it is a Module
                 _block_keys=block_keys(type(kind_cfg)), **kind_cfg.params)


def sample_inputs(splits: Splits, n: int = 2) -> torch.Tensor:
    """A few inputs for shape probes: from the training split, or the test split when the
    run has no training images (data-free distillation)."""
    data = splits.train if len(splits.train) else splits.test
    if isinstance(data, TensorSplit):
        return data.inputs[:n]
    return torch.stack([data[i][0] for i in range(min(n, len(data)))])


# torch's messages for inputs of the wrong size or channel count (anything else is not a
# config mistake: a bug in the model's code, out of memory)
SHAPE_ERROR = re.compile(r"size|shape|channel|dimension|Expected .*input|mat1 and mat2|too small")


def shape_error(exc: BaseException) -> str | None:
    """The first line of ``exc`` when it is torch refusing an input's shape, else ``None``."""
    if isinstance(exc, torch.OutOfMemoryError) or not isinstance(exc, RuntimeError):
        return None
    first = (str(exc).strip().splitlines() or [""])[0]
    return first if SHAPE_ERROR.search(first) else None


def forward_or_explain(model: nn.Module, inputs: torch.Tensor, where: str) -> Any:
    """``model(inputs)``; a model that cannot take the data's inputs (too small for its
    poolings, wrong channel count) is a config mistake, named in one line."""
    try:
        return model(inputs)
    except RuntimeError as exc:
        first = shape_error(exc)
        if first is None:
            raise
        dims = [str(d) for d in inputs.shape[1:]]
        raise UserError(f"{where}: {type(model).__name__} cannot take this data's {'x'.join(dims)} inputs "
                        f"({first}); pick a model built for them, or change its parameters "
                        f"(kdcore inspect MODEL --input-shape {','.join(dims)}, from kdcore-plugin-inspect)") from exc


@torch.no_grad()
def check_takes_inputs(model: nn.Module, inputs: torch.Tensor, where: str, task: Any = None) -> None:
    """Run ``model`` once, in eval mode, on a few of the data's inputs; with ``task``, check
    that the task can score its output (``task.check_output``, when the task has one)."""
    was_training = model.training
    model.eval()
    try:
        output = forward_or_explain(model, inputs, where)
        if hasattr(task, "check_output"):
            task.check_output(output, inputs, where)
    finally:
        model.train(was_training)


@torch.no_grad()
def probe(model: nn.Module, taps: list[Tap], inputs: torch.Tensor, where: str) -> dict[str, Any]:
    """Per-sample shapes of ``taps`` on ``model`` for ``inputs``."""
    recorder = FeatureTaps(model, taps, where=where)
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), inputs.device)
    try:
        output = forward_or_explain(model, inputs.to(device), where.removesuffix(" module path"))
        recorder.record_output(output)
    finally:
        recorder.remove()
        model.train(was_training)
    # on the CPU, where the connectors are built (teachers may already sit on the GPU)
    return {tap.key: (v.detach().cpu() if torch.is_tensor(v) else v)
            for tap in taps for v in [recorder.features[tap.key]]}


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape[1:]) if torch.is_tensor(value) else None


def term_names(config: RunConfig) -> list[list[list[str]]]:
    """Unique, readable term names: the loss name, prefixed by the teacher when there are
    several, suffixed ``@<student_module>`` when the same name appears at several points."""
    several = len(config.teachers) > 1
    raw = [[[(f"{t.name}." if several else "") + (loss.name or loss.type) for loss in p.head.losses]
            for p in t.distill] for t in config.teachers]
    counts = Counter(n for t in raw for p in t for n in p)
    out = [[[n if counts[n] == 1 else f"{n}@{pcfg.student_module}" for n in p]
            for p, pcfg in zip(t, tcfg.distill)] for t, tcfg in zip(raw, config.teachers)]
    twice = [n for n, count in Counter(n for t in out for p in t for n in p).items() if count > 1]
    if twice:  # the same loss twice at one point
        raise UserError(f"two loss terms are both named {twice[0]!r}; give one a 'name:' in its "
                        f"losses entry")
    return out


def point_modules(pcfg: DistillPointConfig, student: nn.Module, teacher: nn.Module,
                  where: str) -> dict[str, nn.Module | None]:
    """The modules a point taps, under the names losses take them by (``None`` for ``output``);
    a path that does not exist is named by its key, ``teachers[0].distill[1].student_module``."""
    return {f"{side}_module": None if path == OUTPUT else
            resolve_module(model, path, where=f"{where}.{side}_module")
            for side, model, path in (("student", student, pcfg.student_module),
                                      ("teacher", teacher, pcfg.teacher_module))}


def build_head(pcfg: DistillPointConfig, where: str, terms: list[str], modules: dict[str, Any],
               s_feat: Any, t_feat: Any, splits: Splits) -> DistillationHead:
    """A point's connectors, losses and head, built for the features the probe recorded."""
    s_shape, t_shape = _shape(s_feat), _shape(t_feat)
    hcfg = pcfg.head

    def connector(cfg: Any, side: str, feat: Any, own: Any, other: Any) -> tuple[nn.Module | None, Any]:
        if cfg is None:
            return None, feat
        module = build("connector", cfg.type, where=f"{where}.head.{side}_connector",
                       context={"in_shape": own, "out_shape": other},
                       _block_keys=block_keys(ComponentConfig), **cfg.params)
        if torch.is_tensor(feat):
            module.eval()
            with torch.no_grad():
                feat = module(feat)
            module.train()
        return module, feat

    s_conn, s_out = connector(hcfg.student_connector, "student", s_feat, s_shape, t_shape)
    t_conn, t_out = connector(hcfg.teacher_connector, "teacher", t_feat, t_shape, s_shape)
    num_samples = len(splits.train)
    losses: dict[str, tuple[float, nn.Module]] = {}
    for li, lcfg in enumerate(hcfg.losses):
        context = {"student_shape": _shape(s_out), "teacher_shape": _shape(t_out),
                   "num_samples": num_samples, "num_classes": splits.source.num_classes, **modules}
        loss = build("loss", lcfg.type, where=f"{where}.head.losses[{li}]", context=context,
                     _block_keys=block_keys(LossConfig), **lcfg.params)
        losses[terms[li]] = (lcfg.weight, loss)
    head = build("head", hcfg.type, where=f"{where}.head",
                 context={"losses": losses, "student_connector": s_conn, "teacher_connector": t_conn,
                          "label": f"distill point {where}"},
                 _block_keys=block_keys(HeadConfig), **hcfg.params)
    if not isinstance(head, DistillationHead):
        raise UserError(f"{where}.head: head {hcfg.type!r} did not return a DistillationHead")
    # check shapes once now, so a mismatch is reported before any training
    for key, loss in head.losses.items():
        if getattr(loss, "same_shape", True):
            head.check_shapes(head.terms[key], s_out, t_out)
    return head


def build_algorithm(config: RunConfig, splits: Splits, student: nn.Module,
                    teachers: dict[str, nn.Module], run_dir: str | None = None) -> Algorithm:
    """Wire student, teachers, heads and distiller into the configured algorithm."""
    sample = sample_inputs(splits)
    names = term_names(config)
    # every path checked before the probes, which could only say "student module path"
    modules = [[point_modules(p, student, teachers[t.name], f"teachers[{ti}].distill[{pi}]")
                for pi, p in enumerate(t.distill)] for ti, t in enumerate(config.teachers)]
    student_taps = [Tap(p.student_module, p.student_io) for t in config.teachers for p in t.distill]
    s_feats = probe(student, student_taps, sample, "student module path") if student_taps else {}
    points: list[DistillPoint] = []
    for ti, tcfg in enumerate(config.teachers):
        teacher_taps = [Tap(p.teacher_module, p.teacher_io) for p in tcfg.distill]
        t_feats = (probe(teachers[tcfg.name], teacher_taps, sample, f"teachers[{ti}] module path")
                   if teacher_taps else {})
        for pi, (pcfg, t_tap) in enumerate(zip(tcfg.distill, teacher_taps)):
            s_tap = Tap(pcfg.student_module, pcfg.student_io)
            head = build_head(pcfg, f"teachers[{ti}].distill[{pi}]", names[ti][pi], modules[ti][pi],
                              s_feats[s_tap.key], t_feats[t_tap.key], splits)
            points.append(DistillPoint(pcfg.name or f"{tcfg.name}_{pi}", tcfg.name, s_tap, t_tap, head))
    distiller = None
    if config.teachers:
        distiller = build("distiller", config.distiller.type, where="distiller",
                          context={"teachers": teachers, "points": points},
                          _block_keys=block_keys(ComponentConfig), **config.distiller.params)
    source = splits.source
    context = {"student": student, "task": source.task, "distiller": distiller,
               "num_classes": source.num_classes, "input_shape": source.input_shape,
               "num_samples": len(splits.train), "batch_size": config.data.batch_size,
               "seed": config.seed, "test_data": splits.test, "run_dir": run_dir, "config": config}
    algorithm = build("algorithm", config.algorithm.type, where="algorithm", context=context,
                      _block_keys=block_keys(ComponentConfig), **config.algorithm.params)
    if not isinstance(algorithm, Algorithm):
        raise UserError(f"algorithm {config.algorithm.type!r} did not return a kdcore.Algorithm")
    return algorithm
