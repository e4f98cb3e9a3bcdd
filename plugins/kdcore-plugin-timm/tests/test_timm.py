"""timm architectures as kdcore models: built for the data's shape, no download, in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kdcore
from kdcore.errors import UserError
from kdcore.taps import feature_shapes
from kdcore.testing import run_preset

CONTEXT = {"num_classes": 10, "in_channels": 1}


@pytest.fixture(autouse=True)
def offline(monkeypatch) -> None:
    """Any attempt to reach the Hugging Face hub fails the test instead of downloading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("arch, paths", [
    ("resnet10t", {"layer2": (128, 4, 4), "layer3": (256, 2, 2), "fc": (10,)}),
    ("mobilenetv3_small_050", {"blocks.1": (16, 4, 4), "blocks.2": (24, 2, 2), "classifier": (10,)}),
])
def test_two_small_models_take_fashion_mnist_inputs_with_the_documented_paths(arch, paths) -> None:
    net = kdcore.build("model", "timm", arch=arch, context=CONTEXT)
    shapes = feature_shapes(net, torch.zeros(2, 1, 28, 28))
    assert shapes["output"] == (10,)
    for path, shape in paths.items():
        assert shapes[path] == shape
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"`{arch}`" in readme


def test_pretrained_weights_come_from_a_local_file_only(tmp_path) -> None:
    with pytest.raises(UserError, match="never downloads weights; give pretrained_file"):
        kdcore.build("model", "timm", arch="resnet10t", pretrained=True, context=CONTEXT)
    source = kdcore.build("model", "timm", arch="resnet10t", context=CONTEXT)
    torch.save(source.state_dict(), tmp_path / "r10t.pt")
    loaded = kdcore.build("model", "timm", arch="resnet10t", pretrained_file=str(tmp_path / "r10t.pt"),
                          context=CONTEXT)
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match="does not exist"):
        kdcore.build("model", "timm", arch="resnet10t", pretrained_file=str(tmp_path / "no.pt"),
                     context=CONTEXT)


def test_an_unknown_arch_names_the_closest() -> None:
    with pytest.raises(UserError, match=r"'resnet10' is not a timm architecture \(did you mean 'resnet10t'"):
        kdcore.build("model", "timm", arch="resnet10", context=CONTEXT)


@pytest.mark.e2e
def test_a_timm_teacher_distills_into_a_timm_student(tmp_path) -> None:
    summary = run_preset("kdcore_plugin_timm", "fashion_mnist.yaml", tmp_path, extra=("data.batch_size=64",))
    assert summary["student"]["params"] == 578186 and summary["teacher"]["params"] == 4927186
    assert {"task", "kd"} <= set(summary["last_train"])
    config = (Path(summary["run_dir"]) / "config.yaml").read_text()
    assert "arch: mobilenetv3_small_050" in config


def test_imagenet_shaped_weights_are_adapted_to_the_data(tmp_path) -> None:
    import timm

    imagenet = timm.create_model("resnet10t", pretrained=False)  # 3 channels, 1000 classes
    torch.save(imagenet.state_dict(), tmp_path / "in1k.pt")
    net = kdcore.build("model", "timm", arch="resnet10t", pretrained=True,
                       pretrained_file=str(tmp_path / "in1k.pt"), context=CONTEXT)
    stem = imagenet.state_dict()["conv1.0.weight"]
    assert torch.allclose(net.state_dict()["conv1.0.weight"], stem.sum(1, keepdim=True))  # RGB summed
    assert torch.equal(net.state_dict()["layer3.0.conv1.weight"], imagenet.state_dict()["layer3.0.conv1.weight"])
    assert net.fc.out_features == 10
