"""Tests of data-free distillation: the inversion losses, synthesis, the synthetic pool, and an
end-to-end run on a data root that holds only the test files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from kdcore_plugin_datafree.algorithms import (
    DataFree,
    SyntheticBatches,
    balanced_labels,
    kd_loss,
)
from kdcore_plugin_datafree.inversion import (
    BNStatistics,
    InversionSettings,
    bn_statistics_loss,
    jitter_flip,
    synthesize,
    total_variation,
)
from torch import nn

import kdcore
from kdcore.testing import run_preset
from kdcore.models.cnn import cnn_student, cnn_teacher

TASK = kdcore.ClassificationTask(10)
FASHION = Path("/usr/share/datasets/fashion-mnist")


def calibrated(model: nn.Module, n: int = 64) -> nn.Module:
    """A model whose BN running statistics are those of some inputs (a stand-in for training)."""
    torch.manual_seed(0)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: exact statistics of what it saw
    with torch.no_grad():
        model(torch.randn(n, 1, 28, 28) * 0.5 + 0.2)
    return model.eval()


def tiny_teacher() -> nn.Module:
    """Conv-BN-ReLU twice, pooling, linear: enough BatchNorm layers to invert, cheap to run."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def make(**params) -> DataFree:
    torch.manual_seed(0)
    distiller = kdcore.Distiller({"teacher": calibrated(tiny_teacher())}, [])
    defaults = {"num_classes": 10, "input_shape": (1, 28, 28), "batch_size": 10, "iterations": 1}
    defaults.update(params)
    return DataFree(cnn_student(), TASK, distiller, **defaults)


# --- registration ----------------------------------------------------------------------------

def test_registered_with_default_preset():
    found = [r for r in kdcore.components("algorithm") if r.component.name == "data_free"]
    assert [r.id for r in found] == ["datafree:data_free"]
    preset = found[0].component.presets["default"]
    assert os.path.isfile(preset)
    with pytest.raises(kdcore.UserError, match="teacher"):
        kdcore.build("algorithm", "data_free", context={"student": cnn_student(), "task": TASK,
                     "distiller": None, "num_classes": 10, "input_shape": (1, 28, 28), "batch_size": 8})
    with pytest.raises(kdcore.UserError, match="refresh_per_epoch"):
        make(pool_size=2, refresh_per_epoch=3)
    no_bn = kdcore.Distiller({"teacher": nn.Sequential(nn.Flatten(), nn.Linear(784, 10))}, [])
    with pytest.raises(kdcore.UserError, match="BatchNorm2d"):
        DataFree(cnn_student(), TASK, no_bn, num_classes=10, input_shape=(1, 28, 28), batch_size=8)


# --- the BatchNorm statistics loss -----------------------------------------------------------

def _loop_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    n, c, h, w = x.shape
    values = [[float(x[i, k, a, b]) for i in range(n) for a in range(h) for b in range(w)] for k in range(c)]
    means = [sum(v) / len(v) for v in values]
    variances = [sum((u - m) ** 2 for u in v) / len(v) for v, m in zip(values, means)]
    return means, variances


def test_bn_loss_is_zero_at_the_running_statistics_and_matches_loops():
    x = torch.randn(3, 2, 4, 5, generator=torch.Generator().manual_seed(0)) * 2 + 1
    means, variances = _loop_stats(x)
    rm, rv = torch.tensor(means), torch.tensor(variances)
    assert bn_statistics_loss(x, rm, rv).item() == pytest.approx(0.0, abs=1e-5)
    shifted_m, shifted_v = [m + 0.3 for m in means], [v * 2 for v in variances]
    expected = (math.sqrt(sum((v - s) ** 2 for v, s in zip(variances, shifted_v)))
                + math.sqrt(sum((m - s) ** 2 for m, s in zip(means, shifted_m))))
    got = bn_statistics_loss(x, torch.tensor(shifted_m), torch.tensor(shifted_v)).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_bn_hooks_read_each_layer_input_only_inside_the_with_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2))
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    # set every BN's running statistics to the batch statistics of its input (from loops)
    with torch.no_grad():
        a = model[0](x)
        model[1].running_mean[:], model[1].running_var[:] = (torch.tensor(v) for v in _loop_stats(a))
        b = model[3](model[2](model[1](a)))
        model[4].running_mean[:], model[4].running_var[:] = (torch.tensor(v) for v in _loop_stats(b))
    with BNStatistics(model) as stats:
        model(x)
        assert len(stats.layers) == 2
        assert stats.loss().item() == pytest.approx(0.0, abs=1e-4)
        model(x + 1.0)  # a different batch: the first layer's input moves, the loss too
        first, second = (v.item() for v in stats.losses)
        assert first > 0.1
        assert stats.loss(first_multiplier=10).item() == pytest.approx(10 * first + second, rel=1e-5)
    stats.losses = [None, None]
    model(x)
    assert stats.losses == [None, None]  # the hooks stay, but record nothing after the with block
    assert all(layer._forward_hooks for layer in stats.layers)


def test_the_runs_batchnorm_folding_leaves_the_inverted_teachers_layers():
    """DataFree hooks the teacher's BatchNorms when it is built, before the run folds frozen
    teachers' BatchNorms into their convolutions (trainer.teacher_fold_bn, on by default): the
    hooked layers are passed over, so synthesis still reads every one."""
    from kdcore.config import load_config
    from kdcore.engine.run import speed_up

    algo = make()
    speed_up(algo, load_config({}, []), torch.device("cpu"))
    assert [type(algo.teacher[i]) for i in (1, 4)] == [nn.BatchNorm2d, nn.BatchNorm2d]
    algo.synthesize_batch(torch.device("cpu"))  # BNStatistics.loss: every layer ran


# --- image priors ----------------------------------------------------------------------------

def test_total_variation_by_hand():
    x = torch.tensor([[[[1.0, 2.0, 0.0], [4.0, 8.0, 1.0]]]])  # one 2x3 image
    # right:   1-2, 2-0, 4-8, 8-1          -> -1, 2, -4, 7
    # down:    1-4, 2-8, 0-1               -> -3, -6, -1
    # diag /:  x[1,0]-x[0,1], x[1,1]-x[0,2] -> 4-2, 8-0 = 2, 8
    # diag \:  x[0,0]-x[1,1], x[0,1]-x[1,2] -> 1-8, 2-1 = -7, 1
    expected = math.sqrt(1 + 4 + 16 + 49) + math.sqrt(9 + 36 + 1) + math.sqrt(4 + 64) + math.sqrt(49 + 1)
    assert total_variation(x).item() == pytest.approx(expected, rel=1e-6)
    assert total_variation(torch.full((2, 1, 4, 4), 3.0)).item() == 0.0


def test_jitter_and_flip():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(jitter_flip(x, g, jitter=0, flip=False), x)
    seen = {tuple(jitter_flip(x, g, jitter=1, flip=True).flatten().tolist()) for _ in range(40)}
    assert len(seen) > 4  # several shifts and flips
    for v in seen:  # each is a permutation of the pixels (roll and flip lose nothing)
        assert sorted(v) == list(range(16))


# --- synthesis -------------------------------------------------------------------------------

def test_synthesis_decreases_the_inversion_loss():
    teacher = calibrated(tiny_teacher())
    for p in teacher.parameters():
        p.requires_grad_(False)
    labels = torch.arange(10)
    settings = InversionSettings(iterations=15, lr=0.1, jitter=0, flip=False)
    images, history = synthesize(BNStatistics(teacher), labels, (1, 28, 28), settings,
                                 torch.Generator().manual_seed(0))
    assert images.shape == (10, 1, 28, 28) and not images.requires_grad
    assert len(history) == 15
    assert history[-1] < 0.5 * history[0], history[::10]
    assert all(p.grad is None for p in teacher.parameters())  # only the images were optimised


def test_pixel_range_is_enforced():
    teacher = calibrated(tiny_teacher())
    s = InversionSettings(iterations=3, lr=1.0, pixel_range=(-0.5, 0.5))
    images, _ = synthesize(BNStatistics(teacher), torch.arange(10), (1, 28, 28), s,
                           torch.Generator().manual_seed(0))
    assert images.min() >= -0.5 and images.max() <= 0.5


def test_balanced_labels():
    labels = balanced_labels(25, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(labels, minlength=10).tolist()
    assert sorted(counts) == [2] * 5 + [3] * 5


# --- pool and batches ------------------------------------------------------------------------

class _Untouchable:
    """Stands for the training split's batches: any use fails the test."""

    device = torch.device("cpu")

    def epoch(self, *a, **k):
        raise AssertionError("the training split was read")

    def __len__(self):
        raise AssertionError("the training split was read")


def test_pool_grows_then_refreshes_and_never_reads_the_training_split(tmp_path):
    algo = make(batches_per_epoch=2, pool_size=3, refresh_per_epoch=1, grid_path=str(tmp_path / "g.png"))
    batches = algo.train_batches(_Untouchable())
    assert isinstance(batches, SyntheticBatches) and len(batches) == 2
    counts = []
    for epoch in range(3):
        got = list(batches.epoch(epoch))
        assert len(got) == 2 and all(b.inputs.shape == (10, 1, 28, 28) for b in got)
        counts.append((len(algo.pool), len(algo.synthesis_history)))
    assert counts == [(2, 2), (3, 3), (3, 4)]  # 2 new, then 1 to fill, then 1 refreshed
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resuming mid-epoch skips the steps already done
    assert len(list(batches.epoch(3, start_step=1))) == 1


def test_a_resumed_run_trains_on_the_pool_the_uninterrupted_run_had():
    settings = dict(batches_per_epoch=2, pool_size=3, refresh_per_epoch=1, grid_path=None)
    straight = make(**settings)
    batches = straight.train_batches(_Untouchable())
    expected = [[b.inputs for b in batches.epoch(e)] for e in range(3)]

    first = make(**settings)
    list(first.train_batches(_Untouchable()).epoch(0))
    saved = {k: v for k, v in first.state_dict().items() if not k.startswith("distiller.teachers.")}
    resumed = make(**settings)  # a new process: empty pool, fresh generator
    resumed.load_state_dict(saved, strict=False)
    again = resumed.train_batches(_Untouchable())
    for epoch in (1, 2):
        got = [b.inputs for b in again.epoch(epoch)]
        assert all(torch.equal(a, b) for a, b in zip(got, expected[epoch])), epoch
    # a checkpoint taken mid-epoch resumes without synthesising that epoch's batches again
    mid = make(**settings)
    mid.load_state_dict({k: v for k, v in resumed.state_dict().items()
                         if not k.startswith("distiller.teachers.")}, strict=False)
    synthesised = len(mid.synthesis_history)
    assert len(list(mid.train_batches(_Untouchable()).epoch(2, start_step=1))) == 1
    assert len(mid.synthesis_history) == synthesised
    # a pre-training stage's epochs (run_stage iterates epochs 0.. too) do not use up the main
    # training's refreshes: every epoch that starts at step 0 refreshes
    staged = make(**settings)
    batches = staged.train_batches(_Untouchable())
    for epoch in range(3):  # the stage
        list(batches.epoch(epoch))
    before = len(staged.synthesis_history)
    list(batches.epoch(0))  # main training, epoch 1
    assert len(staged.synthesis_history) == before + 1


def test_a_resume_that_no_longer_fits_the_saved_pool_names_the_key():
    settings = dict(batches_per_epoch=2, pool_size=3, refresh_per_epoch=1, grid_path=None)
    first = make(**settings)
    list(first.train_batches(_Untouchable()).epoch(0))  # 2 batches of 10 images
    saved = {k: v for k, v in first.state_dict().items() if not k.startswith("distiller.teachers.")}
    with pytest.raises(kdcore.UserError, match=r"algorithm.pool_size: .* holds 2 batches, pool_size is now 1"):
        make(**{**settings, "pool_size": 1, "refresh_per_epoch": 1}).load_state_dict(saved, strict=False)
    with pytest.raises(kdcore.UserError, match=r"data.batch_size: .* batches of 10 images, data.batch_size is now 20"):
        make(**settings, batch_size=20).load_state_dict(saved, strict=False)
    grown = make(**{**settings, "pool_size": 4})  # a larger pool continues the saved one and grows
    grown.load_state_dict(saved, strict=False)
    assert len(grown.pool) == 2


def test_a_pool_grown_on_resume_still_refreshes_its_oldest_batch_first():
    settings = dict(batches_per_epoch=1, pool_size=2, refresh_per_epoch=1, grid_path=None)
    first = make(**settings)
    batches = first.train_batches(_Untouchable())
    for epoch in range(3):  # grows to [e0, e1], then e2 replaces e0: the ring is [e2, e1]
        list(batches.epoch(epoch))
    e2, e1 = (x for x, _ in first.pool)
    saved = {k: v for k, v in first.state_dict().items() if not k.startswith("distiller.teachers.")}
    grown = make(**{**settings, "pool_size": 3})
    grown.load_state_dict(saved, strict=False)
    again = grown.train_batches(_Untouchable())
    list(again.epoch(3))  # grows: e3 joins
    e3 = grown.pool[-1][0]

    def holds(x):
        return any(torch.equal(x, y) for y, _ in grown.pool)

    list(again.epoch(4))  # full: e1, the oldest, goes
    assert not holds(e1) and holds(e2) and holds(e3)
    list(again.epoch(5))  # then e2, not the newer e3
    assert not holds(e2) and holds(e3)

def test_kd_term_matches_loop_arithmetic():
    s = [[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]]
    t = [[1.0, 0.0, 0.5], [-1.0, 2.0, 0.1]]

    def softmax(row, temp):
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]
    expected = sum(sum(p * math.log(p / q) for p, q in zip(softmax(tr, 4), softmax(sr, 4)))
                   for sr, tr in zip(s, t)) / 2 * 16
    assert kd_loss(torch.tensor(s), torch.tensor(t), 4.0).item() == pytest.approx(expected, rel=1e-5)
    algo = make(kd_weight=2.0, temperature=4.0)
    b = kdcore.Batch(torch.randn(6, 1, 28, 28), torch.arange(6), torch.arange(6))
    terms = algo.training_step(b, epoch=0, step=0)
    assert set(terms) == {"kd"} and terms["kd"].item() > 0


# --- end to end ------------------------------------------------------------------------------

@pytest.fixture
def test_only_root(tmp_path):
    """A data root holding only the t10k (test) files: opening the training split would fail."""
    if not (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed in /usr/share/datasets/fashion-mnist")
    root = tmp_path / "t10k-only"
    root.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (root / name).symlink_to(FASHION / name)
    return root


@pytest.mark.e2e
def test_cli_run_without_training_files(tmp_path, test_only_root):
    teacher = tmp_path / "teacher.pt"
    torch.save(calibrated(cnn_teacher()).state_dict(), teacher)
    grid = tmp_path / "grid.png"
    summary = run_preset("kdcore_plugin_datafree", "fashion_mnist.yaml", tmp_path, algo="data_free", sets=(
        f"data.root={test_only_root}", f"teachers.0.checkpoint={teacher}", "data.test_limit=256",
        "data.batch_size=32", "algorithm.iterations=3", "algorithm.batches_per_epoch=2",
        "algorithm.pool_size=2", f"algorithm.grid_path={grid}", "trainer.epochs=1",
        "trainer.progress=false", "trainer.threads=1"))
    run_dir = Path(summary["run_dir"])
    assert summary["algo"] == "data_free" and summary["train_images"] == 0
    assert 0.0 <= summary["student"]["top1"] <= 100.0
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(row["train"]) >= {"kd"}
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_teacher_checkpoint_is_a_clear_error(tmp_path, test_only_root, monkeypatch):
    from click.testing import CliRunner

    from kdcore.cli import main

    monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["run", "--algo", "data_free", "--set", f"data.root={test_only_root}",
                                       "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "teachers[0].checkpoint" in result.output and "no training images" in result.output
