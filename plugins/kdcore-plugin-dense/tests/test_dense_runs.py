"""Segmentation runs end to end: the headline metric is mIoU everywhere, the teacher cache stores
dense maps as float16 (exact enough for the losses) after saying how large it will be, and
mistakes are one line with exit code 2."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcore.testing.e2e import TINY_SETS
from kdcore_plugin_teacher_cache import teacher_cache  # the cache these runs turn on

from cli_runs import invoke_sets as invoke

pytestmark = pytest.mark.fashion

#: a seconds-long segmentation run: 64 training scenes, a 1-epoch teacher, CWD on the logits
SEG = ["data.type=fashion_scenes", "data.params.train_scenes=64", "data.params.test_scenes=32",
       "data.batch_size=32", "data.eval_batch_size=32", "student.type=seg_student",
       "teachers.0.type=seg_teacher", "teachers.0.train.epochs=1", "teachers.0.train.batch_size=32",
       "trainer.epochs=1", "algorithm.student_loss_weight=1.0"]
CWD_LOGITS = 'teachers.0.distill=[{student_module: classifier, teacher_module: classifier, ' \
             'head: {losses: [{type: cwd, weight: 3.0, tau: 1.0}]}}]'


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_segmentation_run_reports_miou_and_caches_float16_maps(tmp_path, cache) -> None:
    result = invoke(tmp_path, *SEG, CWD_LOGITS, "trainer.teacher_cache=true")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "top1" not in out and "top-1" not in out
    assert "teacher miou:" in out and "student miou:" in out and "test miou" in out
    # the size, in the stored dtype, before the fill
    assert "classifier 64 x 11 x 32 x 32 float16 (1.4 MB)" in out
    assert "output 64 x 11 x 64 x 64 float16 (5.8 MB)" in out
    run_dir = out.strip().splitlines()[-1][len("run dir: "):]
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["metric"] == "miou"
    assert {"miou", "pixel_acc", "best_test_miou"} <= set(summary["student"])
    assert not any("top1" in k for k in summary["student"]) and "top1" not in summary["teacher"]
    row = json.loads(open(os.path.join(run_dir, "metrics.jsonl")).readline())
    assert "miou" in row["student"]["test"] and "top1" not in row["student"]["test"]
    arrays = [np.load(p, mmap_mode="r") for p in cache.rglob("*.npy")]
    assert sorted(a.dtype.name for a in arrays) == ["float16", "float16"]


def test_float16_teacher_maps_change_the_losses_by_far_less_than_their_size() -> None:
    """Teacher logits of a trained net's range (|x| up to 27) and ReLU features, a student near
    the teacher (the hard case: the gradient is a small difference): with the teacher rounded
    to float16 the dense losses agree with float32 within 1e-3 and the student's gradient within
    1e-2 (measured: at most 3.4e-4 and 5.3e-3, CWD at tau 1 on the logits), far below the
    gradient's change from one batch to the next."""
    from kdcore_plugin_cwd.losses import ChannelWiseDivergence, PixelKD

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 11, 32, 32, generator=g) * 6
    features = torch.relu(torch.randn(8, 16, 32, 32, generator=g) * 3)
    cases = [(ChannelWiseDivergence(tau=1.0), logits), (ChannelWiseDivergence(tau=4.0), logits),
             (PixelKD(temperature=1.0), logits), (ChannelWiseDivergence(tau=1.0), features),
             (lambda s, t: F.mse_loss(s, t), features)]
    for loss, teacher in cases:
        student = (teacher + torch.randn(teacher.shape, generator=g)).requires_grad_(True)
        full = loss(student, teacher)
        (g_full,) = torch.autograd.grad(full, student)
        rounded = loss(student, teacher.half().float())
        (g_half,) = torch.autograd.grad(rounded, student)
        assert abs(rounded.item() - full.item()) <= 1e-3 * abs(full.item())
        assert (g_half - g_full).norm() <= 1e-2 * g_full.norm()


def test_a_cache_too_large_for_the_disk_is_refused_by_name(tmp_path, cache, monkeypatch) -> None:
    monkeypatch.setattr(teacher_cache, "DISK_MARGIN", 1 << 60)
    result = invoke(tmp_path, *SEG, CWD_LOGITS, "trainer.teacher_cache=true")
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("kdcore: error: trainer.teacher_cache: teacher teacher's outputs need 7.2 MB")
    assert "classifier 64 x 11 x 32 x 32 float16" in last and "turn trainer.teacher_cache off" in last
    assert not list(cache.rglob("*.npy"))


@pytest.mark.parametrize("sets, message", [
    (["student.type=cnn_student"], "student: this is a segmentation data set, which needs a model "
                                   "that outputs per-pixel class scores 11x64x64 per image, but it outputs 11"),
    ([CWD_LOGITS.replace("student_module: classifier", "student_module: output")],
     "cwd compares the maps position by position, but the student's is 64x64 and the teacher's 32x32"),
    (["teachers.0.expect_top1=50"], "teachers[0].expect_top1: this data set is scored by miou, not top-1; "
                                    "use teachers[0].expect_metric"),
])
def test_segmentation_mistakes_are_one_line(tmp_path, cache, sets, message) -> None:
    result = invoke(tmp_path, *SEG, CWD_LOGITS, *sets)
    assert result.exit_code == 2, result.output
    assert message in result.output.strip().splitlines()[-1]
    assert "Traceback" not in result.output


def test_a_segmentation_model_on_a_classification_data_set_is_one_line(tmp_path, cache) -> None:
    result = invoke(tmp_path, *TINY_SETS, "student.type=seg_student")
    assert result.exit_code == 2, result.output
    assert ("student: this is a classification data set, which needs a model that outputs (at "
            "least) 10 class scores per image, but it outputs 10x28x28") in result.output


@pytest.mark.parametrize("point", [
    "{student_module: dec1, teacher_module: dec1, head: {student_connector: {type: conv_reg}, "
    "losses: [{type: fitnet, weight: 10}]}}",
    "{student_module: enc3, teacher_module: enc3, head: {losses: [{type: at, weight: 1000}]}}",
])
def test_feature_methods_run_unchanged_on_the_segmentation_models(tmp_path, cache, point) -> None:
    result = invoke(tmp_path, *SEG, f"teachers.0.distill=[{point}]", "trainer.teacher_cache=true")
    assert result.exit_code == 0, result.output
    assert "student miou:" in result.output
