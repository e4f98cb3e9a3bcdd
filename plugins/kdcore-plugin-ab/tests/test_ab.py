"""Tests of the activation-boundary plugin: loss values, its init stage, wiring, the preset."""

from __future__ import annotations

import importlib.resources
import importlib.util

import pytest
import torch
import yaml
from torch import nn

import kdcore
from kdcore.testing import default_job_differences, run_preset
from kdcore.builtin.connectors import Conv1x1BN
from kdcore.models.cnn import cnn_student, cnn_teacher
from kdcore.taps import Tap, FeatureTaps
from kdcore_plugin_ab.losses import ABLoss

PRESET = importlib.resources.files("kdcore_plugin_ab") / "presets" / "fashion_mnist.yaml"


def _ab_by_hand(student: list[list[float]], teacher: list[list[float]], margin: float,
                scale: float) -> float:
    """The AB loss from plain lists, one row per sample, element by element."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        for s, t in zip(s_row, t_row):
            if t > 0:  # teacher neuron active: the student should be above +margin
                if s <= margin:
                    total += (s - margin) ** 2
            else:      # teacher neuron inactive: the student should be below -margin
                if s > -margin:
                    total += (s + margin) ** 2
    return total / len(student) * scale


# ---------------------------------------------------------------- loss values


def test_ab_matches_hand_computation():
    s = [[0.5, -2.0, 1.5, -0.5], [0.0, 3.0, -1.0, 0.9]]
    t = [[1.0, -1.0, -0.3, 2.0], [0.0, 0.1, -5.0, 0.4]]
    for margin, scale in ((1.0, 3.0 / 1000.0), (0.5, 1.0)):
        loss = ABLoss(margin=margin, scale=scale)
        got = loss(torch.tensor(s).view(2, 4, 1, 1), torch.tensor(t).view(2, 4, 1, 1))
        assert got.item() == pytest.approx(_ab_by_hand(s, t, margin, scale), rel=1e-6)


def test_ab_single_values_by_arithmetic():
    loss = ABLoss(margin=1.0, scale=1.0)
    one = lambda v: torch.tensor([[v]])  # noqa: E731
    # teacher on, student 0.5: (0.5 - 1)^2 = 0.25
    assert loss(one(0.5), one(2.0)).item() == pytest.approx(0.25)
    # teacher off (t = 0 counts as off), student 0.5: (0.5 + 1)^2 = 2.25
    assert loss(one(0.5), one(0.0)).item() == pytest.approx(2.25)
    # on the right side by more than the margin: nothing
    assert loss(one(1.5), one(2.0)).item() == 0.0
    assert loss(one(-1.5), one(-2.0)).item() == 0.0
    # exactly at the boundary s = -m with the teacher off: indicator false, zero anyway
    assert loss(one(-1.0), one(-2.0)).item() == 0.0


def test_ab_zero_when_signs_agree_with_margin():
    torch.manual_seed(0)
    t = torch.randn(4, 3, 5, 5)
    s = torch.where(t > 0, 1.0 + torch.rand_like(t), -1.0 - torch.rand_like(t))
    assert ABLoss()(s, t).item() == 0.0
    assert ABLoss()(-s, t).item() > 0.0


def test_ab_is_divided_by_batch_size():
    torch.manual_seed(0)
    s, t = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    doubled = ABLoss()(torch.cat([s, s]), torch.cat([t, t]))
    assert doubled.item() == pytest.approx(ABLoss()(s, t).item(), rel=1e-6)


@pytest.mark.parametrize("value", [0.0, 1.0, -3.0])
def test_ab_no_nan_for_constant_features(value):
    s = torch.full((1, 2, 3, 3), value, requires_grad=True)
    t = torch.full((1, 2, 3, 3), value)
    loss = ABLoss()(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_ab_rejects_bad_params():
    with pytest.raises(ValueError):
        ABLoss(margin=-1.0)
    with pytest.raises(ValueError):
        ABLoss(init_epochs=-1)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("batch", [1, 4])
def test_gradients_reach_student_and_connector_not_teacher(batch):
    torch.manual_seed(0)
    student_net = nn.Conv2d(1, 2, 3, padding=1)
    teacher_net = nn.Conv2d(1, 3, 3, padding=1)  # deliberately not frozen
    connector = Conv1x1BN(in_shape=(2, 4, 4), out_shape=(3, 4, 4))
    head = kdcore.DistillationHead({"ab": (1.0, ABLoss())}, student_connector=connector)
    x = torch.randn(batch, 1, 4, 4, requires_grad=True)
    before = [p.detach().clone() for p in teacher_net.parameters()]
    total = sum(head(student_net(x), teacher_net(x)).values())
    total.backward()
    torch.optim.SGD([*student_net.parameters(), *connector.parameters(),
                     *teacher_net.parameters()], lr=0.1, weight_decay=0.1).step()
    assert torch.isfinite(total)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert connector.conv.weight.grad is not None and connector.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_net.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, teacher_net.parameters()))


# ---------------------------------------------------------------- the init stage


def _tiny_pair() -> tuple[nn.Module, nn.Module]:
    student = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2))
    teacher = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3))
    return student, teacher


def test_stage_declared_even_with_weight_zero():
    loss = ABLoss(init_epochs=5, init_lr=0.02, init_weight=0.5)
    head = kdcore.DistillationHead({"ab": (0.0, loss)},
                                   student_connector=Conv1x1BN((2, 4, 4), (3, 4, 4)))
    (stage,) = head.stages()
    assert stage.name == "ab_init"
    assert stage.epochs == 5 and stage.lr == 0.02
    assert stage.needs_student is True
    assert stage.parameters is None  # the student plus the head's connectors


def test_stage_loss_applies_connector_and_init_weight_and_decreases():
    torch.manual_seed(0)
    student, teacher = _tiny_pair()
    teacher.eval()
    connector = Conv1x1BN(in_shape=(2, 4, 4), out_shape=(3, 4, 4))
    loss = ABLoss(init_weight=0.5, init_lr=0.05)
    head = kdcore.DistillationHead({"ab": (0.0, loss)}, student_connector=connector)
    (stage,) = head.stages()
    x = torch.randn(16, 1, 4, 4)
    with torch.no_grad():
        t = teacher(x)
    s = student(x)
    assert stage.loss(s, t).item() == pytest.approx(0.5 * loss(connector(s), t).item(), rel=1e-5)
    # weight 0 in main training: the head's term is zero, the stage's loss is not
    assert head(s, t)["ab"].item() == 0.0 and stage.loss(s, t).item() > 0.0
    params = [*student.parameters(), *connector.parameters()]
    opt = torch.optim.SGD(params, lr=stage.lr, momentum=0.9)
    losses = []
    for _ in range(30):
        value = stage.loss(student(x), t)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- registration and preset


def test_registered_through_kdcore():
    assert "ab:ab" in [r.id for r in kdcore.components("loss")]
    loss = kdcore.build("loss", "ab:ab", margin=0.5, init_epochs=1)
    assert isinstance(loss, ABLoss) and loss.margin == 0.5 and loss.init_epochs == 1
    with pytest.raises(kdcore.UserError, match="margn"):
        kdcore.build("loss", "ab:ab", margn=0.5)


def _preset() -> dict:
    return yaml.safe_load(PRESET.read_text())


def test_preset_shares_the_default_job_blocks():
    assert default_job_differences(PRESET) == []


def test_preset_taps_pre_relu_with_reference_layer_weights():
    points = _preset()["teachers"][0]["distill"]
    ab_points = [p for p in points if p["head"]["losses"][0]["type"] == "ab"]
    assert [p["student_module"] for p in ab_points] == ["stage1.relu", "stage2.relu", "stage3.relu"]
    assert all(p["student_io"] == p["teacher_io"] == "input" for p in ab_points)
    weights = [p["head"]["losses"][0]["init_weight"] for p in ab_points]
    assert weights == [2.0 ** (i - 3 + 1) for i in range(3)]  # RepDistiller's w_i = 2^(i-n+1)
    assert all(p["head"]["losses"][0]["weight"] == 0 for p in ab_points)


def test_preset_heads_build_on_the_default_models():
    torch.manual_seed(0)
    points = _preset()["teachers"][0]["distill"]
    sample = torch.randn(2, 1, 28, 28)
    student, teacher = cnn_student(), cnn_teacher()
    taps_s = [Tap(p["student_module"], p.get("student_io", "output")) for p in points]
    taps_t = [Tap(p["teacher_module"], p.get("teacher_io", "output")) for p in points]
    rec_s, rec_t = FeatureTaps(student, taps_s), FeatureTaps(teacher, taps_t)
    rec_s.record_output(student(sample))
    with torch.no_grad():
        rec_t.record_output(teacher(sample))
    for p, ts, tt in zip(points, taps_s, taps_t):
        s, t = rec_s[ts], rec_t[tt]
        cfg = p["head"]
        connector = None
        if cfg.get("student_connector"):
            connector = kdcore.build("connector", cfg["student_connector"]["type"],
                                     context={"in_shape": tuple(s.shape[1:]),
                                              "out_shape": tuple(t.shape[1:])})
        losses = {}
        for c in cfg["losses"]:
            params = {k: v for k, v in c.items() if k not in ("type", "weight", "name")}
            losses[c.get("name", c["type"])] = (c["weight"], kdcore.build("loss", c["type"], **params))
        head = kdcore.DistillationHead(losses, student_connector=connector)
        terms = head(s, t)
        assert all(torch.isfinite(v) for v in terms.values())
        if c["type"] == "ab":
            (stage,) = head.stages()
            assert stage.epochs == c["init_epochs"] and stage.loss(s, t).item() > 0
            # pre-ReLU: the tapped teacher feature has negative values
            assert (t < 0).any()


# ---------------------------------------------------------------- end to end


@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_ab", "fashion_mnist.yaml", tmp_path)
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and 0.0 <= summary["teacher"]["top1"] <= 100.0
    assert any(term.startswith("ab") for term in summary["last_train"]), summary["last_train"]
    assert sum("stage ab_init" in line for line in summary["stdout"].splitlines()) >= 3  # one init stage per layer
