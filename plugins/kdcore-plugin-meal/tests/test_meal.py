"""Tests of MEAL V2: ensemble soft labels, the discriminator and its gradients, and the CLI
(including the multi-teacher teacher_student path)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from kdcore_plugin_meal.algorithms import MealV2, ensemble_kl
from kdcore_plugin_meal.discriminator import Discriminator

import kdcore
from kdcore.testing import run_preset
from kdcore.models.cnn import SmallCNN, cnn_student

TASK = kdcore.ClassificationTask(10)
HERE = Path(__file__).parent


def make(**params) -> MealV2:
    torch.manual_seed(0)
    teachers = {"a": cnn_student(), "b": SmallCNN((4, 8, 16))}
    for t in teachers.values():  # non-trivial BN statistics so the teachers differ
        t.train()
        with torch.no_grad():
            t(torch.randn(32, 1, 28, 28))
    distiller = kdcore.Distiller(teachers, [])
    return MealV2(cnn_student(), TASK, distiller, num_classes=10, **params)


def batch(n: int = 6, label_offset: int = 0) -> kdcore.Batch:
    g = torch.Generator().manual_seed(1)
    return kdcore.Batch(torch.randn(n, 1, 28, 28, generator=g), (torch.arange(n) + label_offset) % 10,
                        torch.arange(n))


def _softmax(row: list[float], t: float = 1.0) -> list[float]:
    z = max(v / t for v in row)
    e = [math.exp(v / t - z) for v in row]
    return [v / sum(e) for v in e]


# --- registration ----------------------------------------------------------------------------

def test_registered_with_default_preset():
    found = [r for r in kdcore.components("algorithm") if r.component.name == "meal_v2"]
    assert [r.id for r in found] == ["meal:meal_v2"]
    assert os.path.isfile(found[0].component.presets["default"])
    with pytest.raises(kdcore.UserError, match="at least one"):
        kdcore.build("algorithm", "meal_v2", context={"student": cnn_student(), "task": TASK,
                                                       "distiller": None, "num_classes": 10})
    with pytest.raises(kdcore.UserError, match="student_disc_grad"):
        make(student_disc_grad="adversarial")


# --- the KL to the ensemble ------------------------------------------------------------------

@pytest.mark.parametrize("t", [1.0, 2.0])
def test_ensemble_kl_matches_loop_arithmetic(t):
    s = [[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]]
    t1 = [[1.0, 0.0, 0.5], [-1.0, 2.0, 0.1]]
    t2 = [[0.2, 0.2, 3.0], [0.4, -0.5, 1.5]]
    expected = 0.0
    for i in range(2):
        p = [(a + b) / 2 for a, b in zip(_softmax(t1[i], t), _softmax(t2[i], t))]
        q = _softmax(s[i], t)
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = t * t * expected / 2
    got = ensemble_kl(torch.tensor(s), [torch.tensor(t1), torch.tensor(t2)], t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # zero when the student's distribution is the ensemble's (a logit of log p is exact)
    p = torch.tensor([[(a + b) / 2 for a, b in zip(_softmax(t1[i], t), _softmax(t2[i], t))] for i in range(2)])
    assert ensemble_kl(t * p.log(), [torch.tensor(t1), torch.tensor(t2)], t).item() == pytest.approx(0, abs=1e-6)


def test_labels_are_never_used():
    algo = make()
    a = algo.training_step(batch(label_offset=0), epoch=0, step=0)
    b = algo.training_step(batch(label_offset=3), epoch=0, step=0)
    assert set(a) == {"kl", "disc"}
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-6)


def test_kl_term_uses_the_mean_of_teacher_softmaxes():
    algo = make(disc_weight=0.0)
    b = batch()
    terms = algo.training_step(b, epoch=0, step=0)
    assert set(terms) == {"kl"}
    with torch.no_grad():
        s = algo.student(b.inputs).tolist()  # train-mode BN: batch stats, same as in the step
        ts = [t(b.inputs).tolist() for t in algo.distiller.teachers.values()]
    expected = 0.0
    for i in range(len(s)):
        p = [sum(col) / len(ts) for col in zip(*[_softmax(t[i]) for t in ts])]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, _softmax(s[i])))
    assert terms["kl"].item() == pytest.approx(expected / len(s), rel=1e-4)


# --- the discriminator -----------------------------------------------------------------------

def test_discriminator_shape():
    d = Discriminator(10, [64, 16])
    widths = [(m.in_features, m.out_features) for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [(10, 64), (64, 16), (16, 1)]
    assert d(torch.randn(5, 10)).shape == (5,)


def test_disc_loss_is_bce_student_zero_teacher_one():
    algo = make()
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    got = algo.disc_loss(s, t).item()
    with torch.no_grad():
        ds, dt = algo.discriminator(s).tolist(), algo.discriminator(t).tolist()
    sig = lambda x: 1 / (1 + math.exp(-x))
    bce = [-math.log(1 - sig(x)) for x in ds] + [-math.log(sig(x)) for x in dt]
    assert got == pytest.approx(sum(bce) / len(bce), rel=1e-5)


def _grads(mode: str, scale: float = 1.0) -> tuple[torch.Tensor | None, torch.Tensor]:
    algo = make(student_disc_grad=mode, disc_lr_scale=scale)
    s = torch.randn(4, 10, generator=torch.Generator().manual_seed(3), requires_grad=True)
    t = torch.randn(4, 10, generator=torch.Generator().manual_seed(4))
    algo.disc_loss(s, t).backward()
    return s.grad, algo.discriminator.net[0].weight.grad


def test_student_gradient_modes():
    same, d_same = _grads("same")
    reverse, d_rev = _grads("reverse")
    none, d_none = _grads("none")
    assert same is not None and same.abs().max() > 0
    torch.testing.assert_close(reverse, -same)  # gradient reversal: the student fools D
    assert none is None  # D trains on detached student logits
    # the discriminator itself always descends its BCE, whatever the student does
    torch.testing.assert_close(d_rev, d_same)
    torch.testing.assert_close(d_none, d_same)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_disc_lr_scale_is_the_discriminators_own_learning_rate(optimizer):
    from kdcore.config import OptimizerConfig
    from kdcore.engine.optim import make_optimizer

    def first_update(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        algo = make(disc_lr_scale=scale)
        opt = make_optimizer(algo.parameter_groups(), OptimizerConfig(type=optimizer, lr=0.1, weight_decay=0.0))
        before_s = algo.student.fc.weight.detach().clone()
        before_d = algo.discriminator.net[0].weight.detach().clone()
        algo.train()
        sum(algo.training_step(batch(), epoch=0, step=0).values()).backward()
        opt.step()
        return algo.student.fc.weight - before_s, algo.discriminator.net[0].weight - before_d

    assert [g["lr"] for g in make_optimizer(make(disc_lr_scale=0.01).parameter_groups(),
                                            OptimizerConfig(lr=0.1)).param_groups] == [0.1, 0.1 * 0.01]
    s1, d1 = first_update(1.0)
    s2, d2 = first_update(0.01)
    torch.testing.assert_close(s2, s1)  # the student's step does not change
    # the discriminator's step is 100x smaller, under AdamW too (a gradient scale would not be)
    torch.testing.assert_close(d2, 0.01 * d1, rtol=1e-3, atol=3e-8)  # float32 weights: ~1e-8 steps


def test_teachers_stay_frozen_and_discriminator_is_trained():
    algo = make()
    before = {k: v.clone() for k, v in algo.distiller.teachers.state_dict().items()}
    names = {n for n, p in algo.named_parameters() if p.requires_grad}
    assert any(n.startswith("discriminator.") for n in names)
    assert not any(n.startswith("distiller.teachers.") for n in names)
    opt = torch.optim.SGD(algo.trainable_parameters(), lr=0.1)
    algo.train()
    sum(algo.training_step(batch(), epoch=0, step=0).values()).backward()
    opt.step()
    for k, v in algo.distiller.teachers.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in algo.distiller.teachers.parameters())


# --- end to end ------------------------------------------------------------------------------

TINY = ["--set", "data.train_limit=128", "--set", "data.test_limit=128", "--set", "trainer.epochs=1",
        "--set", "teachers.0.train.epochs=1", "--set", "teachers.1.train.epochs=1",
        "--set", "teachers.0.train.train_limit=128", "--set", "teachers.1.train.train_limit=128",
        "--set", "trainer.progress=false", "--set", "trainer.threads=1"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One teacher cache for both runs: they share both teacher blocks, so the teachers are
    trained once."""
    return tmp_path_factory.mktemp("cache")


def _run_dir(stdout: str) -> Path:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("run dir: "), stdout
    return Path(last[len("run dir: "):].strip())


@pytest.mark.e2e
def test_cli_runs_default_preset(tmp_path, cache_dir):
    summary = run_preset("kdcore_plugin_meal", "fashion_mnist.yaml", tmp_path, algo="meal_v2",
                         sets=(*TINY[1::2], "algorithm.disc_lr_scale=0.5"))
    run_dir = Path(summary["run_dir"])
    assert summary["algo"] == "meal_v2" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0
    assert set(summary["teachers"]) == {"teacher", "cnn_deep"}
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(row["train"]) >= {"kl", "disc"} and "task" not in row["train"]
    student_lr, disc_lr = row["lr_groups"]  # the discriminator's own group is logged too
    assert row["lr"] == student_lr and disc_lr == pytest.approx(0.5 * student_lr)
    cnn_student().load_state_dict(torch.load(run_dir / "student.pt", weights_only=True))


@pytest.mark.e2e
def test_two_teachers_report_their_terms_separately(tmp_path, cache_dir, monkeypatch):
    """teacher_student with two teachers, each with a KD point: one term per teacher."""
    pytest.importorskip("kdcore_plugin_kd")
    from click.testing import CliRunner

    from kdcore.cli import main

    monkeypatch.setenv("KDCORE_CACHE_DIR", str(cache_dir))
    args = ["run", "--config", str(HERE / "two_teachers_kd.yaml"), *TINY, "--output-dir", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    run_dir = _run_dir(result.output)
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"task", "teacher.kd", "cnn_deep.kd"} <= set(row["train"])
    assert row["train"]["teacher.kd"] != row["train"]["cnn_deep.kd"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["teachers"]) == {"teacher", "cnn_deep"}
    shown = [line for line in result.output.splitlines() if line.startswith("teacher ")]
    assert [line.split(" top1:")[0] for line in shown[-2:]] == ["teacher teacher", "teacher cnn_deep"]
