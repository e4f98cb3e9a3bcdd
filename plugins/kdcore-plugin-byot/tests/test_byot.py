"""Tests of the BYOT self-distillation algorithm: exits, loss terms, gradients, and the CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from kdcore_plugin_byot.algorithms import SelfDistillation
from kdcore_plugin_byot.exits import ExitClassifier, ExitModel
from torch import nn

import kdcore
from kdcore.testing import run_preset
from kdcore.models.cnn import cnn_student

TASK = kdcore.ClassificationTask(10)


def make(**params) -> SelfDistillation:
    torch.manual_seed(0)
    return SelfDistillation(cnn_student(), TASK, None, input_shape=(1, 28, 28), num_classes=10, **params)


def batch(n: int = 6) -> kdcore.Batch:
    g = torch.Generator().manual_seed(1)
    return kdcore.Batch(torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10, torch.arange(n))


# --- registration ----------------------------------------------------------------------------

def test_registered_with_default_preset():
    found = [r for r in kdcore.components("algorithm") if r.component.name == "self_distillation"]
    assert [r.id for r in found] == ["byot:self_distillation"]
    preset = found[0].component.presets["default"]
    assert os.path.isfile(preset) and preset.endswith("fashion_mnist.yaml")
    algo = kdcore.build("algorithm", "self_distillation",
                        context={"student": cnn_student(), "task": TASK, "distiller": None,
                                 "input_shape": (1, 28, 28), "num_classes": 10})
    assert isinstance(algo, SelfDistillation) and algo.exits == ["stage1", "stage2"]
    with pytest.raises(kdcore.UserError, match="temperature"):
        kdcore.build("algorithm", "self_distillation", context={"student": cnn_student(), "task": TASK,
                     "input_shape": (1, 28, 28), "num_classes": 10}, temprature=2)


# --- the exit classifier ---------------------------------------------------------------------

def test_bottleneck_matches_the_deep_feature_shape():
    flat = ExitClassifier((8, 14, 14), (32,), target_hw=7, num_classes=10)
    strides = [m.stride for m in flat.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [(2, 2)]  # 14 -> 7 in one block
    feature, logits = flat(torch.randn(3, 8, 14, 14))
    assert feature.shape == (3, 32) and logits.shape == (3, 10)

    same = ExitClassifier((16, 7, 7), (32,), target_hw=7, num_classes=10)
    assert [m.stride for m in same.modules() if isinstance(m, nn.Conv2d)] == [(1, 1)]

    deep = ExitClassifier((16, 32, 32), (64, 8, 8), target_hw=8, num_classes=100)
    assert [m.stride for m in deep.modules() if isinstance(m, nn.Conv2d)] == [(2, 2), (2, 2)]
    feature, logits = deep(torch.randn(2, 16, 32, 32))
    assert feature.shape == (2, 64, 8, 8) and logits.shape == (2, 100)


def test_exit_model_stops_at_the_exit_and_matches_manual_forward():
    algo = make()
    algo.eval()
    x = torch.randn(4, 1, 28, 28)
    calls = []
    handle = algo.student.stage3.register_forward_hook(lambda *a: calls.append(1))
    exit1 = algo.evaluation_models()["exit_stage1"]
    with torch.no_grad():
        got = exit1(x)
        expected = algo.classifiers[0].fc(algo.classifiers[0].bottleneck(algo.student.stage1(x)).mean(dim=(2, 3)))
    handle.remove()
    assert calls == []  # nothing after the exit ran
    torch.testing.assert_close(got, expected)
    # after the training taps are removed (end of a run) the exit models still work
    algo.remove_taps()
    with torch.no_grad():
        torch.testing.assert_close(exit1(x), expected)


def test_evaluation_models_export_the_plain_network_first():
    algo = make()
    models = algo.evaluation_models()
    assert list(models) == ["student", "exit_stage1", "exit_stage2"]
    assert models["student"] is algo.student
    own = set(cnn_student().state_dict())
    assert set(models["student"].state_dict()) == own  # student.pt fits cnn_student exactly
    assert isinstance(models["exit_stage2"], ExitModel)


# --- the loss terms --------------------------------------------------------------------------

def _loop_ce(logits: list[list[float]], targets: list[int]) -> float:
    total = 0.0
    for row, y in zip(logits, targets):
        z = max(row)
        total += -(row[y] - z - math.log(sum(math.exp(v - z) for v in row)))
    return total / len(targets)


def _loop_kl(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    def softmax(row):
        z = max(v / t for v in row)
        e = [math.exp(v / t - z) for v in row]
        return [v / sum(e) for v in e]
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p, q = softmax(t_row), softmax(s_row)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return t * t * total / len(student)


def test_terms_match_loop_arithmetic():
    algo = make(temperature=3.0, ce_weight=0.7, kl_weight=0.3, feature_weight=0.03, deep_ce_weight=1.0)
    b = batch()
    terms = algo.training_step(b, epoch=0, step=0)
    assert set(terms) == {"ce", "ce_stage1", "kl_stage1", "l2_stage1", "ce_stage2", "kl_stage2", "l2_stage2"}
    # recompute every quantity with a manual forward in the same (train) mode: BN batch stats
    # of the same batch give the same numbers
    net = algo.student
    with torch.no_grad():
        s1 = net.stage1(b.inputs)
        s2 = net.stage2(s1)
        deep = net.pool(net.stage3(s2)).flatten(1)
        out = net.fc(deep)
        feats = {}
        for name, fmap, clf in (("stage1", s1, algo.classifiers[0]), ("stage2", s2, algo.classifiers[1])):
            pooled = clf.bottleneck(fmap).mean(dim=(2, 3))
            feats[name] = (pooled, clf.fc(pooled))
    y = b.targets.tolist()
    assert terms["ce"].item() == pytest.approx(_loop_ce(out.tolist(), y), rel=1e-5)
    for name, (feature, logits) in feats.items():
        assert terms[f"ce_{name}"].item() == pytest.approx(0.7 * _loop_ce(logits.tolist(), y), rel=1e-5)
        assert terms[f"kl_{name}"].item() == pytest.approx(
            0.3 * _loop_kl(logits.tolist(), out.tolist(), 3.0), rel=1e-4, abs=1e-7)
        l2 = sum(sum((a - c) ** 2 for a, c in zip(fr, dr)) for fr, dr in zip(feature.tolist(), deep.tolist()))
        assert terms[f"l2_{name}"].item() == pytest.approx(0.03 * l2 / len(y), rel=1e-5)


def test_step_keeps_no_features():
    """A step's tapped features live only in the step: nothing of them is held until the next
    one (they would keep activations alive through evaluation)."""
    algo = make()
    algo.training_step(batch(), epoch=0, step=0)
    assert algo.taps.features == {}


def test_zero_weights_drop_terms():
    terms = make(kl_weight=0.0, feature_weight=0.0).training_step(batch(), epoch=0, step=0)
    assert set(terms) == {"ce", "ce_stage1", "ce_stage2"}


def test_deep_side_is_detached():
    """KL and feature terms teach the exits; no gradient flows into the deepest layers."""
    algo = make()
    terms = algo.training_step(batch(), epoch=0, step=0)
    teach = sum(v for k, v in terms.items() if k.startswith(("kl_", "l2_")))
    teach.backward()
    deep_only = list(algo.student.stage3.parameters()) + list(algo.student.fc.parameters())
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in deep_only)
    assert algo.student.stage1.conv.weight.grad.abs().max() > 0
    assert algo.classifiers[0].fc.weight.grad.abs().max() > 0


def test_deep_feature_can_be_a_map():
    algo = make(deep_feature="stage3", exits=["stage1"])
    feature, _ = algo.classifiers[0](torch.randn(2, 8, 14, 14))
    assert feature.shape == (2, 32, 7, 7)
    assert "l2_stage1" in algo.training_step(batch(), epoch=0, step=0)


def test_user_errors():
    with pytest.raises(kdcore.UserError, match="stage9"):
        make(exits=["stage9"])
    with pytest.raises(kdcore.UserError, match="deepest side"):
        make(exits=["embedding"])
    with pytest.raises(kdcore.UserError, match=r"exits\[0\].*feature map"):
        make(exits=["fc"], deep_feature="stage3")
    with pytest.raises(kdcore.UserError, match="at least one"):
        make(exits=[])
    teacher = kdcore.Distiller({"teacher": cnn_student()}, [])
    with pytest.raises(kdcore.UserError, match="teachers: \\[\\]"):
        SelfDistillation(cnn_student(), TASK, teacher, input_shape=(1, 28, 28), num_classes=10)


# --- end to end ------------------------------------------------------------------------------

@pytest.mark.e2e
def test_cli_runs_default_preset(tmp_path):
    summary = run_preset("kdcore_plugin_byot", "fashion_mnist.yaml", tmp_path, algo="self_distillation",
                         sets=("data.train_limit=256", "data.test_limit=256", "trainer.epochs=1",
                               "trainer.progress=false", "trainer.threads=1"))
    run_dir = Path(summary["run_dir"])
    assert summary["algo"] == "self_distillation" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0
    assert set(summary["exits"]) == {"exit_stage1", "exit_stage2"}
    assert all(0.0 <= v["top1"] <= 100.0 for v in summary["exits"].values())
    assert "teacher" not in summary
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"ce", "kl_stage1", "l2_stage2"} <= set(row["train"]) and "exit_stage1" in row
    # student.pt is the plain network, loadable into the bare model
    state = torch.load(run_dir / "student.pt", weights_only=True)
    cnn_student().load_state_dict(state)
