"""Tests of the Factor Transfer plugin: loss values, connectors, the paraphraser stage, wiring."""

from __future__ import annotations

import importlib.resources
import importlib.util
import math

import pytest
import torch
import yaml
from torch import nn

import kdcore
from kdcore.testing import default_job_differences, run_preset
from kdcore.models.cnn import cnn_student, cnn_teacher
from kdcore.taps import feature_shapes
from kdcore_plugin_ft.connectors import Paraphraser, Translator
from kdcore_plugin_ft.losses import FTLoss

PRESET = importlib.resources.files("kdcore_plugin_ft") / "presets" / "fashion_mnist.yaml"


def _ft_by_hand(student: list[list[float]], teacher: list[list[float]], reduction: str) -> float:
    """The FT loss with p = 1 from plain Python lists (one flat factor per sample)."""
    per_sample, elements = [], []
    for s, t in zip(student, teacher):
        ns = math.sqrt(sum(v * v for v in s))
        nt = math.sqrt(sum(v * v for v in t))
        diffs = [abs(a / ns - b / nt) for a, b in zip(s, t)]
        per_sample.append(sum(diffs))
        elements.extend(diffs)
    if reduction == "batchmean":
        return sum(per_sample) / len(per_sample)
    return sum(elements) / len(elements)


# ---------------------------------------------------------------- loss values


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_ft_matches_hand_computation(reduction):
    s = [[3.0, 0.0, 4.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    t = [[0.0, 1.0, 0.0, 0.0], [2.0, -2.0, 1.0, 0.0]]
    loss = FTLoss(p=1, reduction=reduction)
    got = loss(torch.tensor(s).view(2, 1, 2, 2), torch.tensor(t).view(2, 1, 2, 2))
    assert got.item() == pytest.approx(_ft_by_hand(s, t, reduction), rel=1e-6)


def test_ft_first_sample_by_arithmetic():
    # sample 0: s/|s| = (.6, 0, .8, 0), t/|t| = (0, 1, 0, 0): L1 = .6 + 1 + .8 = 2.4
    s = torch.tensor([[[[3.0, 0.0], [4.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    assert FTLoss()(s, t).item() == pytest.approx(2.4, rel=1e-6)
    assert FTLoss(reduction="mean")(s, t).item() == pytest.approx(2.4 / 4, rel=1e-6)
    # p = 2: sqrt(.36 + 1 + .64) = sqrt(2)
    assert FTLoss(p=2)(s, t).item() == pytest.approx(math.sqrt(2.0), rel=1e-6)


def test_ft_zero_when_factors_are_proportional():
    torch.manual_seed(0)
    t = torch.randn(3, 4, 2, 2)
    assert FTLoss()(2.5 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert FTLoss()(-t, t).item() > 0.0


@pytest.mark.parametrize("p", [1.0, 2.0])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_ft_no_nan_for_zero_or_constant_features(p, value):
    s = torch.full((2, 3, 2, 2), value, requires_grad=True)
    t = torch.full((2, 3, 2, 2), value)
    loss = FTLoss(p=p)(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_ft_rejects_bad_params():
    with pytest.raises(ValueError):
        FTLoss(p=0.5)
    with pytest.raises(ValueError):
        FTLoss(reduction="sum")


# ---------------------------------------------------------------- connectors


def test_translator_and_paraphraser_agree_on_factor_shape():
    torch.manual_seed(0)
    para = Paraphraser(in_shape=(6, 3, 3), rate=0.5)
    trans = Translator(in_shape=(4, 3, 3), out_shape=(6, 3, 3), rate=0.5)
    assert para.factor_channels == trans.factor_channels == 3
    assert para(torch.randn(2, 6, 3, 3)).shape == trans(torch.randn(2, 4, 3, 3)).shape == (2, 3, 3, 3)
    # int() truncation, as in the reference: 0.5 * 7 -> 3
    assert Translator(in_shape=(4, 3, 3), out_shape=(7, 3, 3)).factor_channels == 3
    assert Translator(in_shape=(4, 3, 3), out_shape=(6, 3, 3), factor_channels=5).factor_channels == 5


def test_connector_shape_errors():
    with pytest.raises(kdcore.UserError, match="spatial"):
        Translator(in_shape=(4, 3, 3), out_shape=(6, 6, 6))
    with pytest.raises(kdcore.UserError, match="feature map"):
        Paraphraser(in_shape=(6,))
    with pytest.raises(ValueError, match="no factor channels"):
        Paraphraser(in_shape=(1, 3, 3), rate=0.5)
    with pytest.raises(ValueError):
        Paraphraser(in_shape=(6, 3, 3), reconstruction="huber")


def test_paraphraser_is_frozen_and_its_factor_has_no_graph():
    torch.manual_seed(0)
    para = Paraphraser(in_shape=(6, 3, 3))
    assert all(not p.requires_grad for p in para.parameters())
    out = para(torch.randn(2, 6, 3, 3, requires_grad=True))
    assert not out.requires_grad and out.shape == (2, 3, 3, 3)


# ---------------------------------------------------------------- the paraphraser stage


def _head(para: Paraphraser, trans: Translator, weight: float = 1.0) -> kdcore.DistillationHead:
    return kdcore.DistillationHead({"ft": (weight, FTLoss())}, student_connector=trans,
                                   teacher_connector=para, label="test head")


def test_paraphraser_declares_a_teacher_only_stage():
    para = Paraphraser(in_shape=(6, 3, 3), pretrain_epochs=3, pretrain_lr=0.02)
    head = _head(para, Translator(in_shape=(4, 3, 3), out_shape=(6, 3, 3)))
    stages = head.stages()
    assert len(stages) == 1
    stage = stages[0]
    assert stage.name == "ft_paraphraser"
    assert stage.epochs == 3 and stage.lr == 0.02 and stage.needs_student is False
    params = list(stage.parameters())
    assert {id(p) for p in params} == {id(p) for p in para.parameters()}
    assert all(p.requires_grad for p in params)


def test_paraphraser_must_be_the_teacher_connector():
    para = Paraphraser(in_shape=(6, 3, 3))
    head = kdcore.DistillationHead({"ft": (1.0, FTLoss())}, student_connector=para, label="h")
    with pytest.raises(kdcore.UserError, match="teacher_connector"):
        head.stages()


def test_stage_loss_decreases_then_paraphraser_freezes():
    torch.manual_seed(0)
    para = Paraphraser(in_shape=(6, 3, 3), pretrain_lr=0.01)
    stage = _head(para, Translator(in_shape=(4, 3, 3), out_shape=(6, 3, 3))).stages()[0]
    teacher = torch.relu(torch.randn(8, 6, 3, 3))
    opt = torch.optim.SGD(stage.parameters(), lr=stage.lr, momentum=0.9)
    losses = []
    for _ in range(60):
        loss = stage.loss(None, teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert any(p.grad is not None for p in para.parameters())
    # the first main-training forward freezes it and drops the stage's gradients
    before = [p.detach().clone() for p in para.parameters()]
    para(teacher)
    assert all(not p.requires_grad and p.grad is None for p in para.parameters())
    opt.step()  # a stale optimizer holding the weights cannot move them any more
    assert all(torch.equal(a, p) for a, p in zip(before, para.parameters()))


@pytest.mark.parametrize("kind", ["l1", "mse"])
def test_reconstruction_loss_is_the_chosen_error(kind):
    torch.manual_seed(0)
    para = Paraphraser(in_shape=(4, 2, 2), reconstruction=kind)
    teacher = torch.randn(2, 4, 2, 2)
    got = para.reconstruction_loss(teacher).item()
    with torch.no_grad():
        recon = para.decoder(para.encoder(teacher))
    diffs = [(a - b) for a, b in zip(recon.flatten().tolist(), teacher.flatten().tolist())]
    expected = sum(abs(d) if kind == "l1" else d * d for d in diffs) / len(diffs)
    assert got == pytest.approx(expected, rel=1e-5)
    assert recon.shape == teacher.shape


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("batch", [1, 3])
def test_gradients_reach_student_and_translator_not_teacher(batch):
    torch.manual_seed(0)
    student_net = nn.Conv2d(2, 4, 3, padding=1)
    teacher_net = nn.Conv2d(2, 6, 3, padding=1)  # deliberately not frozen
    para = Paraphraser(in_shape=(6, 4, 4))
    trans = Translator(in_shape=(4, 4, 4), out_shape=(6, 4, 4))
    head = _head(para, trans, weight=10.0)
    x = torch.randn(batch, 2, 4, 4, requires_grad=True)
    teacher_before = [p.detach().clone() for p in teacher_net.parameters()]
    para_before = [p.detach().clone() for p in para.parameters()]
    terms = head(student_net(x), teacher_net(x))
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    everything = [*student_net.parameters(), *trans.parameters(), *para.parameters(),
                  *teacher_net.parameters()]
    torch.optim.SGD(everything, lr=0.1, weight_decay=0.1).step()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trans.parameters())
    assert all(p.grad is None for p in teacher_net.parameters())
    assert all(p.grad is None for p in para.parameters())
    assert all(torch.equal(a, p) for a, p in zip(teacher_before, teacher_net.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(para_before, para.parameters()))


# ---------------------------------------------------------------- registration and preset


def test_registered_through_kdcore():
    assert "ft:ft" in [r.id for r in kdcore.components("loss")]
    ids = [r.id for r in kdcore.components("connector")]
    assert "ft:paraphraser" in ids and "ft:translator" in ids
    loss = kdcore.build("loss", "ft:ft", p=1)
    assert isinstance(loss, FTLoss)
    para = kdcore.build("connector", "ft:paraphraser", context={"in_shape": (8, 2, 2),
                                                                 "out_shape": (4, 2, 2)})
    trans = kdcore.build("connector", "ft:translator", context={"in_shape": (4, 2, 2),
                                                                 "out_shape": (8, 2, 2)})
    assert para.factor_channels == trans.factor_channels == 4
    with pytest.raises(kdcore.UserError, match="rat"):
        kdcore.build("connector", "ft:translator", context={"in_shape": (4, 2, 2),
                                                             "out_shape": (8, 2, 2)}, rat=0.5)


def _preset() -> dict:
    return yaml.safe_load(PRESET.read_text())


def test_preset_shares_the_default_job_blocks():
    assert default_job_differences(PRESET) == []


def test_preset_head_builds_on_the_default_models():
    torch.manual_seed(0)
    point = _preset()["teachers"][0]["distill"][0]
    head_cfg = point["head"]
    sample = torch.randn(2, 1, 28, 28)
    teacher, student = cnn_teacher(), cnn_student()
    t_shape = feature_shapes(teacher, sample)[point["teacher_module"]]
    s_shape = feature_shapes(student, sample)[point["student_module"]]

    def build(kind, cfg, in_shape, out_shape):
        params = {k: v for k, v in cfg.items() if k not in ("type", "weight", "name")}
        return kdcore.build(kind, cfg["type"], context={"in_shape": in_shape,
                                                         "out_shape": out_shape}, **params)

    para = build("connector", head_cfg["teacher_connector"], t_shape, s_shape)
    trans = build("connector", head_cfg["student_connector"], s_shape, t_shape)
    losses = {c["type"]: (c["weight"], build("loss", c, None, None)) for c in head_cfg["losses"]}
    head = kdcore.DistillationHead(losses, student_connector=trans, teacher_connector=para)
    feats = {}
    student.stage3.register_forward_hook(lambda m, i, o: feats.__setitem__("s", o))
    teacher.stage3.register_forward_hook(lambda m, i, o: feats.__setitem__("t", o))
    student(sample)
    with torch.no_grad():
        teacher(sample)
    terms = head(feats["s"], feats["t"])
    assert set(terms) == {"ft"} and torch.isfinite(terms["ft"])
    assert [s.name for s in head.stages()] == ["ft_paraphraser"]


# ---------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_ft", "fashion_mnist.yaml", tmp_path)
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and 0.0 <= summary["teacher"]["top1"] <= 100.0
    assert any(term.startswith("ft") for term in summary["last_train"]), summary["last_train"]
    assert any(line.startswith("stage ft_paraphraser") for line in summary["stdout"].splitlines())
