"""The segmentation task (loss, mIoU against a brute-force count) and the segmentation models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcore.errors import UserError
from kdcore.models.torchvision_models import torchvision_segmentation
from kdcore.task import ClassificationTask
from kdcore_plugin_dense.models import SegNet, seg_student, seg_teacher
from kdcore_plugin_dense.segmentation import SegmentationTask

IGNORE = 255


def brute_force(preds: torch.Tensor, targets: torch.Tensor, classes: int) -> dict[str, float]:
    """IoU by counting pixels one at a time, in plain Python."""
    inter = [0] * classes
    union = [0] * classes
    correct = scored = 0
    for p, t in zip(preds.flatten().tolist(), targets.flatten().tolist()):
        if t == IGNORE:
            continue
        scored += 1
        correct += p == t
        for c in range(classes):
            inter[c] += (p == c) and (t == c)
            union[c] += (p == c) or (t == c)
    ious = {c: 100.0 * inter[c] / union[c] for c in range(classes) if union[c]}
    return {"miou": sum(ious.values()) / len(ious), "pixel_acc": 100.0 * correct / scored,
            **{f"iou_{c}": v for c, v in ious.items()}}


def test_metric_matches_a_brute_force_count_over_batches() -> None:
    g = torch.Generator().manual_seed(0)
    task = SegmentationTask(num_classes=6, ignore_index=IGNORE)
    metric = task.new_metric()
    all_preds, all_targets = [], []
    for _ in range(3):
        logits = torch.randn(2, 6, 9, 7, generator=g)
        logits[:, 5] -= 100  # class 5 is never predicted ...
        targets = torch.randint(0, 5, (2, 9, 7), generator=g).to(torch.uint8)  # ... nor present
        targets[torch.rand(2, 9, 7, generator=g) < 0.2] = IGNORE
        metric.update(logits, targets)
        all_preds.append(logits.argmax(1))
        all_targets.append(targets)
    got = metric.compute()
    want = brute_force(torch.cat(all_preds), torch.cat(all_targets), 6)
    assert set(got) == set(want)  # iou_5 absent: an empty union does not count
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_miou_over_present_classes_only_and_ignored_pixels_do_not_count() -> None:
    task = SegmentationTask(num_classes=4, ignore_index=IGNORE)
    targets = torch.tensor([[[0, 1], [IGNORE, 1]]], dtype=torch.uint8)
    logits = F.one_hot(torch.tensor([[[0, 1], [3, 2]]]), 4).permute(0, 3, 1, 2).float()
    metric = task.new_metric()
    metric.update(logits, targets)
    scores = metric.compute()
    # class 0: 1/1; class 1: 1/2; class 2: predicted once, never true: 0/1; class 3 only on ignore
    assert scores["miou"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert scores["pixel_acc"] == pytest.approx(100 * 2 / 3)
    assert "iou_3" not in scores


def test_loss_is_the_mean_over_scored_pixels_and_takes_uint8_masks() -> None:
    g = torch.Generator().manual_seed(1)
    task = SegmentationTask(num_classes=5, ignore_index=IGNORE)
    logits = torch.randn(2, 5, 4, 4, generator=g, requires_grad=True)
    targets = torch.randint(0, 5, (2, 4, 4), generator=g).to(torch.uint8)
    targets[0, 0] = IGNORE
    loss = task.loss(logits, targets)
    keep = targets != IGNORE
    per_pixel = -F.log_softmax(logits, 1).gather(1, targets.long().clamp_max(4)[:, None])[:, 0]
    assert loss.item() == pytest.approx(per_pixel[keep].mean().item(), rel=1e-6)
    loss.backward()
    assert logits.grad[0, :, 0].abs().sum() == 0  # ignored pixels get no gradient
    assert task.loss(logits, torch.full_like(targets, IGNORE)).item() == 0.0  # nothing scored: 0


def test_tasks_refuse_a_model_of_the_other_kind_in_one_line() -> None:
    images = torch.zeros(2, 1, 64, 64)
    seg = SegmentationTask(num_classes=11)
    seg.check_output(torch.zeros(2, 11, 64, 64), images, "student")
    with pytest.raises(UserError, match="student: this is a segmentation data set.*outputs 11$|outputs 11;"):
        seg.check_output(torch.zeros(2, 11), images, "student")
    with pytest.raises(UserError, match="11x64x64 per image, but it outputs 11x32x32"):
        seg.check_output(torch.zeros(2, 11, 32, 32), images, "teachers[0]")
    cls = ClassificationTask(num_classes=10)
    cls.check_output(torch.zeros(2, 10), images, "student")
    with pytest.raises(UserError, match="classification data set.*outputs 11x64x64"):
        cls.check_output(torch.zeros(2, 11, 64, 64), images, "student")


def test_segnet_teacher_and_student_share_layout_and_resolution() -> None:
    teacher, student = seg_teacher(), seg_student()
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    assert 150_000 < n_t < 500_000 and 8 <= n_t / n_s <= 16
    x = torch.randn(2, 1, 64, 64)
    assert teacher(x).shape == student(x).shape == (2, 11, 64, 64)
    assert SegNet((4, 8), stride=1)(torch.randn(1, 1, 16, 16)).shape == (1, 11, 16, 16)
    assert student(torch.randn(1, 1, 40, 28)).shape == (1, 11, 40, 28)  # padded inside, cropped


def test_segnet_background_prior_starts_at_the_prior_and_refuses_bad_values() -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        probs = seg_student()(torch.randn(4, 1, 64, 64)).softmax(1).mean((0, 2, 3))
        random_start = SegNet((8, 8, 16, 32))(torch.randn(4, 1, 64, 64)).softmax(1).mean((0, 2, 3))
    assert abs(float(probs[0]) - 0.85) < 0.01  # background
    assert torch.allclose(probs[1:], torch.full((10,), 0.015), atol=0.002)  # the rest, evenly
    assert abs(float(random_start[0]) - 0.85) > 0.3  # without it the start is far from the prior
    with pytest.raises(UserError, match="background_prior: 1.5 must be between 0 and 1"):
        SegNet((4, 8), background_prior=1.5)


@pytest.mark.parametrize("arch", ["lraspp_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_torchvision_segmentation_builds_and_trains_one_step(arch: str) -> None:
    torch.manual_seed(0)
    model = torchvision_segmentation(arch, num_classes=11, in_channels=1)
    task = SegmentationTask(num_classes=11)
    x, y = torch.randn(2, 1, 64, 64), torch.randint(0, 11, (2, 64, 64), dtype=torch.uint8)
    out = model(x)
    assert out.shape == (2, 11, 64, 64)
    loss = task.loss(out, y)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    assert torch.isfinite(loss)


def test_torchvision_segmentation_refuses_downloads_and_unknown_names() -> None:
    with pytest.raises(UserError, match="weights_backbone=.*checkpoint"):
        torchvision_segmentation("fcn_resnet50", weights_backbone="DEFAULT")
    with pytest.raises(UserError, match="did you mean 'fcn_resnet50'"):
        torchvision_segmentation("fcn_resnet5")
