"""acme-kd-losses tests: kdcore's contract kit, plus the loss's value computed by hand.

Run after installing the distribution (``pip install -e .``): the contract tests look the
plugin up the way kdcore does, through its entry point.
"""

from __future__ import annotations

import math

import pytest
import torch

import kdcore
from kdcore import testing


class TestPlugin(testing.PluginContract):
    distribution = "acme-kd-losses"
    entry_point = "acme"
    components = {"loss": ["cosine_feature"]}


class TestCosinePerSample(testing.LossContract):
    component = "acme:cosine_feature"
    params = {"mode": "sample"}
    student_shape = (32,)
    more_shapes = [((8, 7, 7), (8, 7, 7))]


class TestCosinePerPosition(testing.LossContract):
    component = "acme:cosine_feature"
    params = {"mode": "position"}
    student_shape = (8, 7, 7)
    more_shapes = [((4, 2, 3), (4, 2, 3))]
    bad_shapes = [((32,), (32,))]  # no channels and positions in a flat feature


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_per_sample_value_by_hand() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 2, 2, 2), torch.randn(3, 2, 2, 2)
    loss = kdcore.build("loss", "acme:cosine_feature", mode="sample")
    expected = sum(1 - _cosine(s.flatten().tolist(), t.flatten().tolist())
                   for s, t in zip(student, teacher)) / 3
    assert float(loss(student, teacher)) == pytest.approx(expected, rel=1e-5)


def test_per_position_value_by_hand() -> None:
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    loss = kdcore.build("loss", "acme:cosine_feature", mode="position")
    terms = [1 - _cosine(student[n, :, i, j].tolist(), teacher[n, :, i, j].tolist())
             for n in range(2) for i in range(2) for j in range(2)]
    assert float(loss(student, teacher)) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_scale_does_not_matter_and_parallel_features_cost_nothing() -> None:
    feature = torch.randn(4, 16)
    loss = kdcore.build("loss", "acme:cosine_feature")
    assert float(loss(3.0 * feature, feature)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(-feature, feature)) == pytest.approx(2.0, abs=1e-6)
