"""kdcore_plugin_inspect.pairing and `kdcore inspect --pair`: which teacher and student layers are
paired, the connector flag, and a YAML snippet that a run accepts as written."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from kdcore.cli import main, preset_path
from kdcore.config import DistillPointConfig, load_config, load_yaml, read_yaml, structure
from kdcore.errors import UserError
from kdcore.models.cifar_resnet import resnet8
from kdcore.models.cnn import SmallCNN, cnn_student, cnn_teacher
from kdcore_plugin_inspect.pairing import embedding, pair_models, probe, side_by_side, snippet, stage_ends

SAMPLE = torch.zeros(2, 1, 28, 28)


def paths(pairs) -> list[tuple[str, str]]:
    return [(p.student.path, p.teacher.path) for p in pairs]


def test_default_cnns_pair_stage_by_stage_with_connectors() -> None:
    pairing = pair_models(cnn_student(), cnn_teacher(), SAMPLE)
    assert paths(pairing.stages) == [("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3")]
    assert [p.student.shape for p in pairing.stages] == [(8, 14, 14), (16, 7, 7), (32, 7, 7)]
    assert all(p.needs_connector for p in pairing.stages)  # 8/16/32 against 24/48/96 channels
    assert (pairing.logits.student.shape, pairing.logits.teacher.shape) == ((10,), (10,))
    assert (pairing.embedding.student.path, pairing.embedding.student.shape) == ("embedding", (32,))
    assert pairing.embedding.teacher.shape == (96,)


def test_equal_widths_need_no_connector() -> None:
    pairing = pair_models(SmallCNN((8, 16, 32)), SmallCNN((8, 16, 32), depth=2), SAMPLE)
    assert paths(pairing.stages) == [("stage1", "stage1"), ("stage2", "stage2"), ("stage3", "stage3")]
    assert not any(p.needs_connector for p in pairing.stages)


def test_different_architectures_pair_by_resolution() -> None:
    # resnet8 on 28x28: layer1 28x28, layer2 14x14, layer3 7x7; the CNN: stage1 14x14,
    # stage2 and stage3 7x7. Leaves of the stem (conv1, bn1, relu) are no stages.
    teacher = resnet8(num_classes=10, in_channels=1)
    assert [f.path for f in stage_ends(probe(teacher, SAMPLE))] == ["layer1", "layer2", "layer3"]
    pairing = pair_models(cnn_student(), teacher, SAMPLE)
    # 14x14: one block each; 7x7: two student blocks against one: the ends of the stage
    assert paths(pairing.stages) == [("stage1", "layer2"), ("stage3", "layer3")]


class Backbone(nn.Module):
    """Blocks inside a ``features`` Sequential (as torchvision's MobileNets), pooling and
    flattening in forward, so the classifier's input is no module's output."""

    def __init__(self, width: int) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU())

        self.features = nn.Sequential(block(1, width, 2), block(width, width, 1), block(width, 2 * width, 2))
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_a_container_of_stages_is_looked_into_and_the_embedding_is_the_classifier_input() -> None:
    found = probe(Backbone(4), SAMPLE)
    assert [f.path for f in stage_ends(found)] == ["features.0", "features.1", "features.2"]
    flat = embedding(found)
    assert (flat.path, flat.io, flat.shape) == ("head", "input", (8,))
    pairing = pair_models(Backbone(4), Backbone(6), SAMPLE)
    assert paths(pairing.stages) == [("features.0", "features.0"), ("features.1", "features.1"),
                                     ("features.2", "features.2")]


class MultiScale(nn.Module):
    """A backbone returning several feature maps (as a detector's): no tensor output of its
    own, still a block whose stages are paired."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.stage1(x)
        return [a, self.stage2(a)]


class Detector(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.backbone = MultiScale(width)
        self.head = nn.Conv2d(2 * width, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[-1])


def test_a_backbone_with_several_outputs_is_looked_into() -> None:
    pairing = pair_models(Detector(4), Detector(8), SAMPLE)
    # the 1x1 head conv is a leaf, not a stage (blocks are, where a model has them)
    assert paths(pairing.stages) == [("backbone.stage1", "backbone.stage1"), ("backbone.stage2", "backbone.stage2")]
    assert pairing.logits.student.shape == (6, 7, 7) and pairing.embedding is None


def test_outputs_of_different_shape_give_no_logits_point() -> None:
    pairing = pair_models(SmallCNN((4, 8, 8), num_classes=5), cnn_teacher(), SAMPLE)
    assert pairing.logits is None and pairing.stages
    assert "student_module: output" not in snippet(pairing, {"type": "fitnet", "weight": 100})


def test_side_by_side_puts_each_pair_on_one_row() -> None:
    teacher = resnet8(num_classes=10, in_channels=1)
    lines = side_by_side(pair_models(cnn_student(), teacher, SAMPLE), "resnet8", "cnn_student")
    marked = [line.split("<->") for line in lines if "<->" in line]
    assert [(t.split()[0], s.split()[0]) for t, s in marked] == [("layer2", "stage1"), ("layer3", "stage3"),
                                                    ("output", "output")]


@pytest.mark.fashion
def test_snippet_is_a_config_a_run_accepts(tmp_path) -> None:
    """Pasted under the default job's teacher, the suggested points build (paths, connectors,
    losses and shapes checked as a run checks them, on untrained models)."""
    from kdcore.assemble import load_data
    from kdcore.engine.run import check_assembly

    pairing = pair_models(cnn_student(), cnn_teacher(), SAMPLE)
    text = snippet(pairing, {"type": "fitnet", "weight": 100})
    points = load_yaml(text)["distill"]
    parsed = [structure(DistillPointConfig, p, f"distill[{i}]") for i, p in enumerate(points)]
    assert [p.student_module for p in parsed] == ["output", "stage1", "stage2", "stage3"]
    assert all(p.head.student_connector.type == "conv1x1_bn" for p in parsed[1:])
    data = read_yaml(preset_path("teacher_student"))
    data["teachers"][0]["distill"] = points
    config = load_config(data, ["data.train_limit=64", "data.test_limit=64"])
    check_assembly(config, load_data(config.data))
    # without the connector the element-wise loss would compare 8 against 24 channels
    points[1]["head"].pop("student_connector")
    with pytest.raises(UserError, match="needs equal shapes"):
        check_assembly(load_config(data, ["data.train_limit=64", "data.test_limit=64"]), load_data(config.data))


def test_inspect_pair_cli() -> None:
    result = CliRunner().invoke(main, ["inspect", "--pair", "cnn_teacher", "cnn", "--input-shape", "1,28,28",
                                       "--set", "student.widths=[4,8,16]", "--set", "student.depth=2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "teacher cnn_teacher: 53,362 parameters" in out
    assert "(4, 14, 14) -> (24, 14, 14): channels differ" in out
    yaml_part = out[out.index("distill:"):]
    points = load_yaml(yaml_part)["distill"]
    assert [p["student_module"] for p in points] == ["output", "stage1", "stage2", "stage3"]
    # the same parameter for both sides without a prefix
    both = CliRunner().invoke(main, ["inspect", "--pair", "cnn", "cnn", "--input-shape", "1,28,28",
                                     "--set", "widths=[4,8,16]"])
    assert both.exit_code == 0 and "channels differ" not in both.output


@pytest.mark.parametrize("args, message", [
    (["inspect", "--pair", "cnn_teacher"], "--pair takes two models, TEACHER then STUDENT"),
    (["inspect", "cnn_teacher", "cnn_student"], "for two: --pair TEACHER STUDENT"),
    (["inspect", "--pair", "cnn_teacher", "cnn_student", "--input-shape", "1,1,1"], "cannot take inputs"),
])
def test_inspect_pair_errors_are_one_line(args, message) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
