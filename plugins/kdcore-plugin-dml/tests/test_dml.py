"""Tests of Deep Mutual Learning: the loss by hand, the turns, where gradients go, the cohort
built from the config, the refusal of teachers, and one end-to-end run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import kdcore
from kdcore.precheck import check_components
from kdcore.cli import main
from kdcore.config import load_config
from kdcore.data.fashion_mnist import FASHION_MNIST_ROOT
from kdcore.task import ClassificationTask
from kdcore.testing import run_preset
from kdcore_plugin_dml.algorithms import DeepMutualLearning, mutual_kl


class Fixed(nn.Module):
    """Logits that are a parameter, whatever the input: the predictions a test chooses."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits + 0 * x.sum()


def cohort(*logits: torch.Tensor, kl_weight: float = 1.0) -> DeepMutualLearning:
    nets = [Fixed(z) for z in logits]
    return DeepMutualLearning(nets[0], ClassificationTask(logits[0].shape[1]), num_classes=logits[0].shape[1],
                              input_shape=(1,), peers=nets[1:], kl_weight=kl_weight)


def sgd_update(algorithm: DeepMutualLearning, lr: float, seen: dict[str, torch.Tensor] | None = None):
    """The loop's ``update`` reduced to what these tests need: backward into one optimizer, step."""
    optimizers = algorithm.optimizers(lambda groups: torch.optim.SGD(groups, lr=lr))

    def update(loss: torch.Tensor, name: str) -> bool:
        if seen is not None:
            seen[name] = loss.detach().clone()
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()
        return True

    return update


BATCH = kdcore.Batch(torch.zeros(2, 1, dtype=torch.float64), torch.tensor([0, 2]), torch.arange(2))


# --- the loss by hand ------------------------------------------------------------------------

def test_loss_matches_hand_computation():
    # student 0 predicts p0, student 1 predicts p1 (2 samples, 3 classes); logits = log p
    p0 = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]], dtype=torch.float64)
    p1 = torch.tensor([[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]], dtype=torch.float64)
    # CE(y, p0) with labels 0 and 2: -(ln 0.5 + ln 0.5) / 2 = ln 2
    ce0 = math.log(2)
    # KL(p1 || p0) per sample = sum p1 ln(p1 / p0):
    #   sample 0: 0.25 ln(0.25/0.5) + 0.5 ln(0.5/0.25) + 0.25 ln(1) = 0.25 ln 2
    #   sample 1: 0.5 ln(0.5/0.2) + 0.25 ln(0.25/0.3) + 0.25 ln(0.25/0.5)
    kl0 = (0.25 * math.log(2) + 0.5 * math.log(2.5) + 0.25 * math.log(0.25 / 0.3) + 0.25 * math.log(0.5)) / 2
    assert mutual_kl(p0.log(), [p1.log()]).item() == pytest.approx(kl0, rel=1e-12)
    seen: dict[str, torch.Tensor] = {}
    algorithm = cohort(p0.log(), p1.log(), kl_weight=0.5)
    terms = algorithm.optimization_step(BATCH, epoch=0, step=0, update=sgd_update(algorithm, 0.0, seen))
    assert seen["student0"].item() == pytest.approx(ce0 + 0.5 * kl0, rel=1e-12)
    assert terms["student0_ce"].item() == pytest.approx(ce0, rel=1e-12)
    assert terms["student0_kl"].item() == pytest.approx(0.5 * kl0, rel=1e-12)
    # student 1 (lr 0: student 0 did not move): CE(y, p1) = -(ln 0.25 + ln 0.25) / 2 = 2 ln 2;
    # KL(p0 || p1): sample 0: 0.5 ln 2 + 0.25 ln 0.5 = 0.25 ln 2; sample 1: 0.2 ln 0.4 + 0.3 ln 1.2 + 0.5 ln 2
    kl1 = (0.25 * math.log(2) + 0.2 * math.log(0.4) + 0.3 * math.log(1.2) + 0.5 * math.log(2)) / 2
    assert seen["student1"].item() == pytest.approx(2 * math.log(2) + 0.5 * kl1, rel=1e-12)
    assert set(terms) == {"student0_ce", "student0_kl", "student1_ce", "student1_kl"}
    assert all(not v.requires_grad for v in terms.values())


def test_three_students_average_the_kl_over_their_peers():
    torch.manual_seed(0)
    logits = [torch.randn(2, 3, dtype=torch.float64) for _ in range(3)]
    seen: dict[str, torch.Tensor] = {}
    algorithm = cohort(*logits)
    algorithm.optimization_step(BATCH, epoch=0, step=0, update=sgd_update(algorithm, 0.0, seen))

    def kl(p: torch.Tensor, q: torch.Tensor) -> float:  # KL(p || q), batch mean
        return float((p * (p / q).log()).sum(1).mean())

    probs = [z.softmax(1) for z in logits]
    for k in range(3):
        ce = float(torch.nn.functional.cross_entropy(logits[k], BATCH.targets))
        others = [kl(probs[l], probs[k]) for l in range(3) if l != k]
        assert seen[f"student{k}"].item() == pytest.approx(ce + sum(others) / 2, rel=1e-12)


def test_identical_students_have_no_kl_and_any_batch_size_works():
    z = torch.randn(5, 4)
    assert mutual_kl(z, [z.clone()]).item() == pytest.approx(0.0, abs=1e-6)
    assert mutual_kl(z[:1], [torch.randn(1, 4)]).item() > 0


# --- the turns and the gradients -------------------------------------------------------------

def test_student1_learns_from_student0_after_its_update():
    torch.manual_seed(1)
    z0, z1 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    seen: dict[str, torch.Tensor] = {}
    algorithm = cohort(z0, z1)
    before = algorithm.student.logits.detach().clone()
    algorithm.optimization_step(BATCH, epoch=0, step=0, update=sgd_update(algorithm, 1.0, seen))
    after = algorithm.student.logits.detach()
    assert not torch.allclose(before, after)

    def loss1(peer: torch.Tensor) -> float:
        ce = torch.nn.functional.cross_entropy(z1, BATCH.targets)
        return float(ce + mutual_kl(z1, [peer]))

    assert seen["student1"].item() == pytest.approx(loss1(after), rel=1e-12)
    assert abs(loss1(after) - loss1(before)) > 1e-3  # the check can tell the two apart


def test_gradients_reach_only_the_student_being_updated():
    torch.manual_seed(2)
    algorithm = cohort(*(torch.randn(2, 3, dtype=torch.float64) for _ in range(3)))
    checked = []

    def update(loss: torch.Tensor, name: str) -> bool:
        algorithm.zero_grad(set_to_none=True)
        loss.backward()
        for k, model in enumerate(algorithm.students):
            grad = model.logits.grad
            if name == f"student{k}":
                assert grad is not None and grad.abs().sum() > 0
            else:
                assert grad is None, f"{name}'s loss reached student{k}"
        checked.append(name)
        return True

    algorithm.optimization_step(BATCH, epoch=0, step=0, update=update)
    assert checked == ["student0", "student1", "student2"]


def test_one_optimizer_per_student_holding_exactly_its_parameters():
    algorithm = cohort(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    optimizers = algorithm.optimizers(lambda groups: torch.optim.SGD(groups, lr=0.1))
    assert list(optimizers) == ["student0", "student1", "student2"]
    held = [p for opt in optimizers.values() for g in opt.param_groups for p in g["params"]]
    assert sorted(map(id, held)) == sorted(map(id, algorithm.trainable_parameters()))
    assert list(algorithm.evaluation_models()) == ["student", "student1", "student2"]


def test_through_kdcores_loop_every_student_steps_every_batch():
    """The engine's side of the contract: train_epochs calls optimization_step with its update,
    every optimizer steps once per batch, the terms are logged, the default path is untouched."""
    from kdcore.engine.batches import TrainBatches
    from kdcore.engine.loop import LoopSettings, TrainingState, train_epochs
    from kdcore.testing import random_split

    torch.manual_seed(4)
    algorithm = _build({"type": "cnn_student"})
    optimizers = algorithm.optimizers(lambda groups: torch.optim.SGD(groups, lr=0.05))
    steps = {name: 0 for name in optimizers}
    for name, optimizer in optimizers.items():
        optimizer.register_step_post_hook(lambda opt, args, kwargs, name=name: steps.update({name: steps[name] + 1}))
    schedulers = {n: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0) for n, o in optimizers.items()}
    batches = TrainBatches(random_split(32), 8, 0, device=torch.device("cpu"))
    rows: list[dict[str, float]] = []
    train_epochs(algorithm, batches, TrainingState(),
                 LoopSettings(epochs=1, optimizers=optimizers, schedulers=schedulers, progress=False,
                              on_epoch_end=lambda state, summary: rows.append(summary)))
    assert steps == {"student0": 4, "student1": 4}
    assert {"student0_ce", "student0_kl", "student1_ce", "student1_kl"} <= set(rows[0])
    assert kdcore.Algorithm.optimizers(algorithm, lambda groups: None) is None  # the default path


# --- the cohort from the config, and bad parameters ------------------------------------------

def _build(config_student: dict, **params):
    config = load_config({"student": config_student, "teachers": [], "algorithm": {"type": "dml"}})
    student = kdcore.build("model", config.student.type, context={"num_classes": 10, "in_channels": 1},
                           **config.student.params)
    return kdcore.build("algorithm", "dml", where="algorithm", context={
        "student": student, "task": ClassificationTask(10), "distiller": None, "num_classes": 10,
        "input_shape": (1, 28, 28), "config": config}, **params)


def test_peers_are_new_networks_of_the_student_block():
    torch.manual_seed(3)
    algorithm = _build({"type": "cnn_student"}, students=3)
    s, p1, p2 = algorithm.students
    assert type(p1) is type(s) and type(p2) is type(s)
    assert not torch.equal(s.fc.weight, p1.fc.weight) and not torch.equal(p1.fc.weight, p2.fc.weight)
    other = _build({"type": "cnn_student"}, peers=[{"type": "cnn_teacher"}])
    assert other.peers[0].fc.in_features == 96  # another architecture, from its block


@pytest.mark.parametrize("params, expected", [
    ({"students": 1}, "algorithm.students: mutual learning needs at least 2 students, got 1"),
    ({"peers": []}, "algorithm.peers: give a list of one or more model blocks"),
    ({"peers": ["cnn_student"], "students": 3}, "algorithm.students: 3 does not match the 2 students"),
    ({"peers": [{"type": "cnn_studnet"}]}, "unknown model 'cnn_studnet' (did you mean 'cnn_student'"),
    ({"kl_weight": -1}, "algorithm.kl_weight: must be >= 0"),
])
def test_bad_parameters_are_named(params, expected):
    with pytest.raises(kdcore.UserError) as info:
        _build({"type": "cnn_student"}, **params)
    assert expected in str(info.value)


# --- teachers refused ------------------------------------------------------------------------

def test_the_algorithm_declares_it_takes_no_teachers():
    assert DeepMutualLearning.takes_teachers is False and kdcore.Algorithm.takes_teachers is True
    with_teacher = load_config({"student": {"type": "cnn_student"}, "algorithm": {"type": "dml"},
                                "teachers": [{"name": "teacher", "type": "cnn_teacher"}]})
    with pytest.raises(kdcore.UserError, match=r"^config key teachers: algorithm 'dml' learns without") as info:
        check_components(with_teacher)
    assert info.value.key_path == "teachers"
    with_teacher.algorithm.type = "teacher_student"
    check_components(with_teacher)  # distilling algorithms take them


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_ROOT), reason="needs dataset-fashion-mnist")
def test_a_config_with_teachers_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["run", "--preset", "dml", "--output-dir", str(tmp_path),
                                       "--set", "teachers=[{name: teacher, type: cnn_teacher}]",
                                       "--set", "trainer.progress=false"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("kdcore: error: ")]
    assert lines == ["kdcore: error: config key teachers: algorithm 'dml' learns without teachers, but the "
                     "config gives 1; set teachers: [] (--set teachers=[]), or pick an algorithm that "
                     "distils (teacher_student)"]
    assert not any(tmp_path.iterdir())  # no run dir left behind, nothing trained


def test_print_config_refuses_teachers_too():
    result = CliRunner().invoke(main, ["run", "--preset", "dml", "--print-config",
                                       "--set", "teachers=[{name: teacher, type: cnn_teacher}]"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "kdcore: error: config key teachers: algorithm 'dml' learns without teachers")


def test_preset_loads():
    result = CliRunner().invoke(main, ["run", "--preset", "dml", "--print-config"])
    assert result.exit_code == 0, result.output
    assert "type: dml" in result.output and "teachers: []" in result.output


# --- end to end ------------------------------------------------------------------------------

@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_dml", "fashion_mnist.yaml", tmp_path,
                         sets=("data.train_limit=256", "data.test_limit=256", "trainer.epochs=1",
                               "trainer.progress=false"))
    assert summary["algo"] == "dml" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and "student1" in summary["exits"]
    assert {"student0_ce", "student0_kl", "student1_ce", "student1_kl"} <= set(summary["last_train"])


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_ROOT), reason="needs dataset-fashion-mnist")
def test_resume_restores_every_optimizer_and_schedule(tmp_path):
    """One epoch, then --resume to two, ends with the metrics of two epochs in one go: both
    students, both optimizers' momentum and both schedules come back from last.pt. (A step
    schedule, so the first epoch does not depend on the total.)"""
    sets = ["data.train_limit=256", "data.test_limit=256", "data.batch_size=64", "trainer.progress=false",
            "trainer.threads=1", "schedule={type: step, milestones: [1], gamma: 0.1}"]

    def run(out: Path, *extra: str) -> list[dict]:
        args = ["run", "--preset", "dml", "--output-dir", str(out)]
        result = CliRunner().invoke(main, args + [a for s in [*sets, *extra] for a in ("--set", s)])
        assert result.exit_code == 0, result.output
        return rows(next(out.iterdir()))

    def rows(run_dir: Path) -> list[dict]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        out = [json.loads(line) for line in lines if line]
        for row in out:
            row["train"] = {k: v for k, v in row["train"].items() if k not in ("seconds", "images_per_second")}
        return out

    whole = run(tmp_path / "whole", "trainer.epochs=2")
    run(tmp_path / "split", "trainer.epochs=1")
    run_dir = next((tmp_path / "split").iterdir())
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--set", "trainer.epochs=2"])
    assert result.exit_code == 0, result.output
    assert "resumed at epoch 2, step 0" in result.output  # not trained again from the start
    assert len(whole) == 2 and rows(run_dir) == whole
