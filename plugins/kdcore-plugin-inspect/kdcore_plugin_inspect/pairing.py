"""Which layers of a teacher and a student to distill between: ``kdcore inspect --pair``.

One probe forward pass of each model gives every module's output shape in execution order.
From it:

- the *stage ends*: the model's top-level blocks that output a feature map (a container
  holding several blocks of different resolutions, such as a ``features`` Sequential, is
  looked into), grouped by spatial resolution;
- *stage pairs*: for each resolution both models reach (in order), the blocks one to one when
  both have as many there, else the last block of each (the end of that resolution's stage).
  A pair whose channels differ needs a connector (``conv1x1_bn``) for losses that compare
  features element-wise; losses that pool channels (AT) do not;
- the *embedding*: the flat feature the classifier reads (``embedding`` in kdcore's CNNs, or
  the input of the last ``nn.Linear``), what relational losses (RKD, CRD) compare;
- ``output``: the logits, for response losses (KD, DKD).

``kdcore compare`` adapts a method's preset to the user's models with the same pairs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import torch
from torch import nn

from kdcore.taps import OUTPUT, probe_pass


@attrs.frozen
class Feature:
    """A tap point of one model: module path, its output (or input) and the per-sample shape."""

    path: str
    shape: tuple[int, ...]
    io: str = "output"

    @property
    def resolution(self) -> tuple[int, ...] | None:
        """``(H, W)`` of a feature map larger than 1x1, else ``None``."""
        if len(self.shape) == 3 and self.shape[1] * self.shape[2] > 1:
            return tuple(self.shape[1:])
        return None


@attrs.frozen
class Pair:
    """A student feature and the teacher feature it is distilled against."""

    student: Feature
    teacher: Feature

    @property
    def needs_connector(self) -> bool:
        """Whether an element-wise comparison needs the student's channels mapped first."""
        return self.student.shape[:1] != self.teacher.shape[:1]


@attrs.frozen
class Probe:
    """Every module's output shape of one model, in the order they finish (``output`` last)."""

    model: nn.Module
    features: list[Feature]
    #: every module that ran, in the order they finish, with or without a tensor output (a
    #: backbone returning several feature maps is still a block to look into)
    finished: list[str] = attrs.field(factory=list)

    def shape(self, path: str) -> tuple[int, ...] | None:
        return next((f.shape for f in self.features if f.path == path), None)


@attrs.frozen
class Pairing:
    student: Probe
    teacher: Probe
    stages: list[Pair]
    embedding: Pair | None
    logits: Pair | None


def probe(model: nn.Module, sample: torch.Tensor) -> Probe:
    """Run ``sample`` through ``model`` in eval mode, recording each module's output shape in
    the order modules finish (a block after its children: where its stage ends)."""
    order: list[str] = []
    finished: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, out: Any) -> None:
        if name not in finished:  # a reused module: its first call
            finished.append(name)
        if torch.is_tensor(out) and name not in shapes:
            shapes[name] = tuple(out.shape[1:])
            order.append(name)

    out = probe_pass(model, sample, record)
    features = [Feature(p, shapes[p]) for p in order]
    if torch.is_tensor(out):
        features.append(Feature(OUTPUT, tuple(out.shape[1:])))
    return Probe(model, features, finished)


def _children(model: nn.Module, path: str, ran: dict[str, int]) -> list[str]:
    module = model.get_submodule(path) if path else model
    names = [f"{path}.{n}" if path else n for n, _ in module.named_children()]
    return sorted((n for n in names if n in ran), key=ran.__getitem__)


def stage_ends(found: Probe) -> list[Feature]:
    """The model's blocks that output feature maps, in execution order (module docstring)."""
    model = found.model
    ran = {path: i for i, path in enumerate(found.finished)}
    by_path = {f.path: f for f in found.features}

    def resolution(path: str) -> tuple[int, ...] | None:
        return by_path[path].resolution if path in by_path else None

    def is_block(path: str) -> bool:
        return any(True for _ in model.get_submodule(path).children())

    def spine(path: str) -> list[str]:
        out = []
        for child in _children(model, path, ran):
            inner = {resolution(k) for k in _children(model, child, ran) if is_block(k) and resolution(k)}
            out.extend(spine(child) if len(inner) >= 2 else [child])
        return out

    top = [by_path[p] for p in spine("") if resolution(p)]
    blocks = [f for f in top if is_block(f.path)]
    return blocks or top


def _groups(features: Iterable[Feature]) -> list[tuple[tuple[tuple[int, ...], int], list[Feature]]]:
    """Consecutive features of one resolution, keyed by (resolution, its n-th run)."""
    groups: list[tuple[tuple[tuple[int, ...], int], list[Feature]]] = []
    seen: dict[tuple[int, ...], int] = {}
    for f in features:
        if groups and groups[-1][0][0] == f.resolution:
            groups[-1][1].append(f)
            continue
        seen[f.resolution] = seen.get(f.resolution, -1) + 1
        groups.append(((f.resolution, seen[f.resolution]), [f]))
    return groups


def stage_pairs(student: Probe, teacher: Probe) -> list[Pair]:
    """Stage ends of equal resolution, matched as the module docstring says."""
    teacher_groups = dict(_groups(stage_ends(teacher)))
    pairs = []
    for key, mine in _groups(stage_ends(student)):
        theirs = teacher_groups.get(key)
        if not theirs:
            continue
        if len(mine) == len(theirs):
            pairs.extend(Pair(s, t) for s, t in zip(mine, theirs))
        else:
            pairs.append(Pair(mine[-1], theirs[-1]))
    return pairs


def embedding(found: Probe) -> Feature | None:
    """The flat feature the classifier reads: the last module with that 1-D output before the
    last ``nn.Linear``, else that layer's input; ``None`` without a linear classifier."""
    linear = [f for f in found.features
              if f.path != OUTPUT and isinstance(found.model.get_submodule(f.path), nn.Linear)]
    if not linear:
        return None
    head = linear[-1]
    width = found.model.get_submodule(head.path).in_features
    before = found.features[:found.features.index(head)]
    flat = [f for f in before if f.shape == (width,) and not f.path.startswith(head.path + ".")]
    return flat[-1] if flat else Feature(head.path, (width,), io="input")


def pair_models(student: nn.Module, teacher: nn.Module, sample: torch.Tensor) -> Pairing:
    """Probe both models on ``sample`` (a batch of two or more) and pair their features."""
    s, t = probe(student, sample), probe(teacher, sample)
    es, et = embedding(s), embedding(t)
    so, to = s.shape(OUTPUT), t.shape(OUTPUT)
    logits = Pair(Feature(OUTPUT, so), Feature(OUTPUT, to)) if so is not None and so == to else None
    return Pairing(s, t, stage_pairs(s, t), Pair(es, et) if es and et else None, logits)


# --- what `kdcore inspect --pair` prints ----------------------------------------------------

def side_by_side(pairing: Pairing, teacher_name: str, student_name: str) -> list[str]:
    """Both models' module paths and shapes in two columns, each stage pair on one row
    (marked ``<->``)."""
    rows: list[tuple[Feature | None, Feature | None, bool]] = []
    t_feats, s_feats = pairing.teacher.features, pairing.student.features
    ti = si = 0
    anchors = [(p.teacher, p.student) for p in pairing.stages]
    if pairing.logits:
        anchors.append((pairing.logits.teacher, pairing.logits.student))
    for t_end, s_end in anchors:
        tj, sj = t_feats.index(t_end, ti) + 1, s_feats.index(s_end, si) + 1
        t_chunk, s_chunk = t_feats[ti:tj], s_feats[si:sj]
        n = max(len(t_chunk), len(s_chunk))
        t_chunk = [None] * (n - len(t_chunk)) + t_chunk  # the pair on the chunk's last row
        s_chunk = [None] * (n - len(s_chunk)) + s_chunk
        rows.extend((t, s, i == n - 1) for i, (t, s) in enumerate(zip(t_chunk, s_chunk)))
        ti, si = tj, sj
    rest_t, rest_s = t_feats[ti:], s_feats[si:]
    for i in range(max(len(rest_t), len(rest_s))):
        rows.append((rest_t[i] if i < len(rest_t) else None, rest_s[i] if i < len(rest_s) else None, False))

    def cell(f: Feature | None) -> tuple[str, str]:
        return (f.path, str(f.shape)) if f else ("", "")

    cells = [(cell(t), cell(s), mark) for t, s, mark in rows]
    wp = max([len(teacher_name)] + [len(c[0][0]) for c in cells])
    ws = max(len(c[0][1]) for c in cells)
    lines = [f"  {teacher_name:<{wp}}  {'':<{ws}}      {student_name}"]
    for (tp, tshape), (sp, sshape), mark in cells:
        lines.append(f"  {tp:<{wp}}  {tshape:<{ws}}  {'<->' if mark else '   '}  {sp:<{wp}}  {sshape}".rstrip())
    return lines


def snippet(pairing: Pairing, feature_loss: dict[str, Any] | None = None,
            kd_loss: dict[str, Any] | None = None) -> str:
    """Suggested ``distill:`` points as YAML to paste under a teacher of a config.

    ``feature_loss`` is the loss written at the stage pairs (``None``: stage pairs as comments);
    the connector is added where channels differ unless the loss is marked
    ``needs_connector=False`` (AT compares channel-pooled maps)."""
    kd_loss = kd_loss or {"type": "kd", "weight": 0.5, "temperature": 4.0}
    lines = ["distill:"]

    def flow(d: dict[str, Any]) -> str:
        return "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"

    if pairing.logits:
        lines += [f"  - student_module: output   # logits {pairing.logits.student.shape}",
                  "    teacher_module: output",
                  "    head:",
                  "      losses:",
                  f"        - {flow(kd_loss)}"]
    loss = dict(feature_loss or {})
    connect = loss.pop("needs_connector", True)
    for p in pairing.stages:
        s, t = p.student, p.teacher
        why = (f"# {s.shape} -> {t.shape}: channels differ, 1x1 conv + BN" if p.needs_connector
               else f"# {s.shape} and {t.shape}")
        block = [f"  - student_module: {s.path}   {why}",
                 f"    teacher_module: {t.path}",
                 "    head:"]
        if p.needs_connector and connect:
            block.append("      student_connector: {type: conv1x1_bn}")
        if loss:
            lines += block + ["      losses:", f"        - {flow(loss)}"]
        else:  # no feature loss installed: the points, commented out
            lines += ["  # " + line[2:] for line in block]
    if pairing.embedding:
        s, t = pairing.embedding.student, pairing.embedding.teacher
        lines.append(f"  # flat features for relational losses (rkd, crd): student_module: {s.path}"
                     f"{'' if s.io == 'output' else ' (student_io: input)'} {s.shape}, "
                     f"teacher_module: {t.path}{'' if t.io == 'output' else ' (teacher_io: input)'} {t.shape}")
    if not pairing.stages:
        lines.append("  # no stages of equal spatial resolution: feature methods need a connector "
                     "that resizes, or other taps")
    return "\n".join(lines) + "\n"


def feature_loss() -> dict[str, Any] | None:
    """The stage-pair loss the snippet suggests: FitNets' hint (needs the connector) if
    installed, else AT (channel-pooled maps, no connector), else none."""
    from kdcore.registry import components

    installed = {r.component.name for r in components("loss")}
    if "fitnet" in installed:
        return {"type": "fitnet", "weight": 100}
    if "at" in installed:
        return {"type": "at", "weight": 1000, "needs_connector": False}
    return None


@contextlib.contextmanager
def shapes_explained(what: str, shape: tuple[int, ...]) -> Iterator[None]:
    """A forward pass's shape mismatch as one line: ``WHAT cannot take inputs of shape ...``."""
    from kdcore.assemble import shape_error
    from kdcore.errors import UserError

    try:
        yield
    except RuntimeError as exc:
        first = shape_error(exc)
        if first is None:
            raise
        raise UserError(f"{what} cannot take inputs of shape {tuple(shape)} ({first}); "
                        f"check --input-shape or --dataset") from None


def pair_report(teacher_name: str, teacher: nn.Module, student_name: str, student: nn.Module,
                shape: tuple[int, ...]) -> list[str]:
    """What ``kdcore inspect --pair`` prints: sizes, both models side by side, the snippet."""
    with shapes_explained(f"--pair {teacher_name} {student_name}: a model", shape):
        pairing = pair_models(student, teacher, torch.zeros(2, *shape))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    lines = [f"teacher {teacher_name}: {count(teacher):,} parameters; student {student_name}: "
             f"{count(student):,} parameters; input {tuple(shape)}", ""]
    lines += side_by_side(pairing, teacher_name, student_name)
    lines += ["", "<->: suggested pairs (stage ends of equal resolution, and the logits). "
              "Under a teacher in your config:", ""]
    if pairing.logits is None:
        lines.append("# the two models' outputs differ in shape: no `output` point")
    lines += snippet(pairing, feature_loss()).rstrip("\n").splitlines()
    return lines
