"""Detection runs end to end through the CLI: a run on scenes some of which hold no object
trains and scores (mAP@.5 is the headline, teacher and student printed), data.labelled hides
boxes, and mistakes are one line with exit code 2 (``kdcore draw``'s pictures: kdcore-plugin-draw)."""

from __future__ import annotations

import json
import os

import pytest
import torch

import kdcore
from kdcore import assemble
from kdcore.config import DataConfig
from kdcore.data import DataSource, TensorSplit
from kdcore_plugin_dense.detection import DetectionTask

from cli_runs import invoke_sets as invoke, run_dir_of

pytestmark = pytest.mark.fashion

#: a seconds-long detection run: 96 scenes of 0 to 2 items, a 1-epoch teacher, yolo_kd on the head
DET = ["data.type=fashion_scenes", "data.params.task=detection", "data.params.train_scenes=96",
       "data.params.test_scenes=32", "data.params.items=[0, 2]", "data.batch_size=32",
       "data.eval_batch_size=32", "student.type=yolo_student", "teachers.0.type=yolo_teacher",
       "teachers.0.train.epochs=1", "teachers.0.train.batch_size=32", "trainer.epochs=1",
       "algorithm.student_loss_weight=1.0", "optimizer.type=adam", "optimizer.lr=0.003",
       "optimizer.weight_decay=0.0", "teachers.0.train.optimizer.type=adam",
       "teachers.0.train.optimizer.lr=0.003", "teachers.0.train.optimizer.weight_decay=0.0"]
YOLO_KD = ('teachers.0.distill=[{student_module: head, teacher_module: head, '
           'head: {losses: [{type: yolo_kd, weight: 1.0}]}}]')


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_yolo_kd_run_with_empty_and_unlabelled_scenes(tmp_path, cache):
    result = invoke(tmp_path, *DET, YOLO_KD, "data.labelled=48")
    assert result.exit_code == 0, result.output
    assert "teacher map50:" in result.output and "student map50:" in result.output
    run_dir = run_dir_of(result.output)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert 0.0 <= summary["student"]["map50"] <= 100.0 and "map" in summary["teacher"]
    assert summary["labelled_images"] == 48 and "top1" not in summary["student"]
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert "yolo_kd" in rows[-1]["train"] and "map50" in rows[-1]["student"]["test"]


@pytest.mark.parametrize("sets, message", [
    (["student.type=cnn_student"], "student: this is a detection data set"),
    (["student.params.num_anchors=4"], "student: its head predicts 4 anchors per cell but data.anchors lists 3"),
    (['teachers.0.distill=[{student_module: neck, teacher_module: neck, '
      'head: {losses: [{type: yolo_kd}]}}]'], "yolo_kd needs the detector's raw head output"),
])
def test_mistakes_are_one_line(tmp_path, cache, sets, message):
    result = invoke(tmp_path, *DET, *sets)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("kdcore: error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


def test_a_data_set_with_bad_boxes_is_refused_when_loaded(monkeypatch):
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 20.0, 1.0], [30.0, 5.0, 10.0, 9.0, 2.0]]])
    source = DataSource(train=TensorSplit(torch.zeros(1, 1, 64, 64), boxes),
                        test=TensorSplit(torch.zeros(1, 1, 64, 64), boxes[:, :1]),
                        task=DetectionTask(10, (64, 64)), input_shape=(1, 64, 64), num_classes=10,
                        fingerprint="x", name="mine")
    monkeypatch.setattr(assemble, "build", lambda *a, **k: source)
    with pytest.raises(kdcore.UserError, match=r"data \(mine_boxes\) train split: scene 0 box 1 .* x2 <= x1"):
        assemble.load_data(DataConfig(type="mine_boxes"))
