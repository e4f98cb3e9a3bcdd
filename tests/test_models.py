"""The built-in model zoo: shapes, module paths, pre-ReLU taps, sizes, torchvision by arch."""

from __future__ import annotations

import pytest
import torch

import kdcore
from kdcore.models import cifar_resnet, wide_resnet
from kdcore.taps import FeatureTaps, Tap

RESNETS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
           "resnet8x4", "resnet32x4"]
WRNS = ["wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]
FEATURES = {"resnet8x4": 256, "resnet32x4": 256, "wrn_16_1": 64, "wrn_16_2": 128, "wrn_40_1": 64,
            "wrn_40_2": 128}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny forwards: one thread avoids OpenMP spin overhead on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", RESNETS + WRNS)
def test_forward_shape_and_paths(name):
    torch.manual_seed(0)
    model = kdcore.build("model", name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    paths = dict(model.named_modules())
    for path in ("conv1", "layer1", "layer2", "layer3", "layer3.0.conv1", "layer3.0.bn2",
                 "avgpool", "embedding", "fc"):
        assert path in paths, path
    if name in RESNETS:
        for path in ("bn1", "relu", "layer3.0.out_relu", "layer1.0.relu1", "layer3.0.downsample"):
            assert path in paths, path
    else:
        for path in ("layer3.0.relu1", "layer3.0.shortcut", "bn_final", "relu"):
            assert path in paths, path
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    with FeatureTaps(model, [Tap("embedding")]) as taps, torch.no_grad():
        model(x)
        assert taps[Tap("embedding")].shape == (2, FEATURES.get(name, 64))


def test_default_factory_arguments():
    model = cifar_resnet.resnet8()
    assert model.fc.out_features == 100 and model.conv1.in_channels == 3
    gray = wide_resnet.wrn_16_1(num_classes=7, in_channels=1)
    assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_resnet_pre_relu_tap_is_the_residual_sum():
    torch.manual_seed(0)
    model = cifar_resnet.resnet8x4(num_classes=10).eval()
    pre, post, into = Tap("layer3.0.out_relu", io="input"), Tap("layer3.0.out_relu"), Tap("layer2")
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, [pre, post, into]) as taps, torch.no_grad():
        model(x)
        feat_pre, feat_post, block_in = taps[pre], taps[post], taps[into]
        block = model.layer3[0]
        # The residual sum recomputed by hand from the block's input.
        hidden = block.bn1(block.conv1(block_in)).clamp(min=0)
        expected = block.bn2(block.conv2(hidden)) + block.downsample(block_in)
    assert feat_pre.shape == (2, 256, 8, 8)
    assert feat_pre.min() < 0
    assert feat_post.min() >= 0
    torch.testing.assert_close(feat_pre, expected)
    torch.testing.assert_close(feat_post, expected.clamp(min=0))


def test_wrn_pre_relu_tap_is_the_bn_of_the_stage_output():
    torch.manual_seed(0)
    model = wide_resnet.wrn_16_2(num_classes=10).eval()
    pre, post, stage = Tap("layer3.0.relu1", io="input"), Tap("layer3.0.relu1"), Tap("layer2")
    final_pre = Tap("relu", io="input")
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, [pre, post, stage, final_pre, Tap("layer3")]) as taps, torch.no_grad():
        model(x)
        bn = model.layer3[0].bn1
        manual = (taps[stage] - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
            bn.running_var.view(1, -1, 1, 1) + bn.eps) * bn.weight.view(1, -1, 1, 1) \
            + bn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(taps[pre], manual)
        assert taps[pre].shape == (2, 64, 16, 16) and taps[pre].min() < 0
        assert taps[post].min() >= 0
        assert taps[final_pre].shape == (2, 128, 8, 8) and taps[final_pre].min() < 0
        torch.testing.assert_close(taps[final_pre], model.bn_final(taps[Tap("layer3")]))


# Published sizes: He et al. 2016 Table 6 (CIFAR-10, 10 classes) and the CRD paper's CIFAR-100
# tables (100 classes).
PUBLISHED = [
    ("resnet20", 10, 0.27e6), ("resnet32", 10, 0.46e6), ("resnet44", 10, 0.66e6),
    ("resnet56", 10, 0.85e6), ("resnet110", 10, 1.7e6),
    ("resnet56", 100, 0.86e6), ("resnet8x4", 100, 1.23e6), ("resnet32x4", 100, 7.43e6),
    ("wrn_40_2", 100, 2.26e6), ("wrn_16_2", 100, 0.70e6), ("wrn_40_1", 100, 0.57e6),
]


@pytest.mark.parametrize("name,classes,published", PUBLISHED)
def test_parameter_counts_match_published(name, classes, published):
    module = cifar_resnet if name.startswith("resnet") else wide_resnet
    count = _params(getattr(module, name)(num_classes=classes))
    assert abs(count - published) / published < 0.02, (name, count)


def test_resnet8_parameter_count_by_hand():
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    stem = conv(3, 16, 3) + bn(16)
    layer1 = conv(16, 16, 3) + conv(16, 16, 3) + 2 * bn(16)
    layer2 = conv(16, 32, 3) + conv(32, 32, 3) + 2 * bn(32) + conv(16, 32, 1) + bn(32)
    layer3 = conv(32, 64, 3) + conv(64, 64, 3) + 2 * bn(64) + conv(32, 64, 1) + bn(64)
    fc = 64 * 100 + 100
    assert _params(cifar_resnet.resnet8()) == stem + layer1 + layer2 + layer3 + fc


def test_bad_depth_is_an_error():
    with pytest.raises(kdcore.UserError, match="6n\\+2"):
        kdcore.build("model", "cifar_resnet", depth=21)
    with pytest.raises(kdcore.UserError, match="6n\\+4"):
        kdcore.build("model", "wide_resnet", depth=20)


def test_torchvision_model_by_name():
    torch.manual_seed(0)
    model = kdcore.build("model", "torchvision", arch="resnet18",
                         context={"num_classes": 10, "in_channels": 3}).eval()
    assert model.fc.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert "layer4.1.bn2" in dict(model.named_modules())


def test_torchvision_model_adapts_input_channels():
    model = kdcore.build("model", "torchvision", arch="resnet18",
                         context={"num_classes": 4, "in_channels": 1}).eval()
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 64
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_torchvision_weights_are_refused():
    with pytest.raises(kdcore.UserError) as info:
        kdcore.build("model", "torchvision", arch="resnet18", weights="IMAGENET1K_V1")
    message = str(info.value)
    assert "download" in message and "checkpoint" in message


def test_torchvision_unknown_name_suggests():
    with pytest.raises(kdcore.UserError, match="did you mean 'resnet18'"):
        kdcore.build("model", "torchvision", arch="resnet19")
    with pytest.raises(kdcore.UserError, match="fasterrcnn"):
        kdcore.build("model", "torchvision", arch="fasterrcnn_resnet50_fpn")  # not classification


def test_torchvision_bad_option_is_a_user_error():
    with pytest.raises(kdcore.UserError, match="resnet18"):
        kdcore.build("model", "torchvision", arch="resnet18", options={"no_such_option": 1})


def test_only_shape_errors_of_a_model_become_config_errors() -> None:
    import torch
    from torch import nn

    from kdcore.assemble import check_takes_inputs
    from kdcore.errors import UserError

    class Fails(nn.Module):
        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise self.error

    x = torch.zeros(2, 1, 28, 28)
    with pytest.raises(UserError, match=r"student: Fails cannot take this data's 1x28x28 inputs \(Given groups"):
        check_takes_inputs(Fails(RuntimeError("Given groups=1, expected input[2, 1, 28, 28] to have 3 channels")),
                           x, "student")
    with pytest.raises(RuntimeError, match="a bug in the model"):  # not the user's config
        check_takes_inputs(Fails(RuntimeError("a bug in the model")), x, "student")
    with pytest.raises(torch.OutOfMemoryError):
        check_takes_inputs(Fails(torch.OutOfMemoryError("CUDA out of memory, size 2 GiB")), x, "student")
