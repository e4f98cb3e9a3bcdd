"""torchvision classification models by name (``arch: resnet18``, ``mobilenet_v2`` ...).

kdcore never downloads anything: models are built with random weights, and trained weights come
from a local file through the teacher's ``checkpoint`` key. Module paths are torchvision's own
(``layer4``, ``avgpool``, ``fc`` for ResNets; ``features.N`` for VGG/MobileNet); run
``kdcore inspect`` to list them. Note that torchvision uses inplace ReLUs shared within a block,
so prefer BN outputs (e.g. ``layer4.1.bn2``) for pre-activation features. ``inception_v3`` and
``googlenet`` return auxiliary outputs in training mode unless ``options: {aux_logits: false}``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import UserError, did_you_mean


def classification_names() -> list[str]:
    """Every classification model name torchvision registers (not detection/segmentation/video)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _replace_first_conv(model: nn.Module, in_channels: int, name: str) -> None:
    """Swap the first ``Conv2d`` for a fresh one taking ``in_channels`` (e.g. 1 for MNIST)."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                break
            new = nn.Conv2d(in_channels, module.out_channels, module.kernel_size, module.stride,
                            module.padding, module.dilation, 1, module.bias is not None,
                            module.padding_mode)
            parent_path, _, attr = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, attr, new)
            return
    raise UserError(f"torchvision model {name!r} has no plain first Conv2d to adapt to "
                    f"{in_channels} input channels; use a 3-channel data set")


def torchvision_model(arch: str, num_classes: int = 1000, weights: Any = None, in_channels: int = 3,
                      options: dict[str, Any] | None = None) -> nn.Module:
    """Build torchvision's classification model ``arch`` with random weights.

    The architecture parameter is ``arch``, not ``name``: ``name`` is taken by ``kdcore.build``'s
    own argument and by a teacher's ``name`` key in the job config.

    :param arch: a name from ``torchvision.models.list_models(module=torchvision.models)``.
    :param num_classes: size of the final layer (taken from the data set when not given).
    :param weights: must stay ``None``; pretrained weights would need a download.
    :param in_channels: input channels; when not 3 the first conv is replaced by a fresh one.
    :param options: extra keyword arguments for the torchvision builder (e.g. ``dropout``).
    """
    if weights is not None:
        raise UserError(
            f"torchvision model {arch!r}: weights={weights!r} is not supported: kdcore never "
            "downloads weights at run time. Download the weights yourself once, then pass the "
            "local file as the model's 'checkpoint' (e.g. teachers.0.checkpoint: "
            "/path/to/file.pth) and leave 'weights' unset")
    names = classification_names()
    if arch not in names:
        raise UserError(f"unknown torchvision classification model {arch!r}"
                        f"{did_you_mean(arch, names)}; {len(names)} are available, e.g. resnet18, "
                        "mobilenet_v2, vgg11_bn")
    import torchvision

    try:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                             **(options or {}))
    except (TypeError, ValueError) as exc:
        raise UserError(f"torchvision model {arch!r}: {exc}") from exc
    if in_channels != 3:
        _replace_first_conv(model, in_channels, arch)
    return model


def segmentation_names() -> list[str]:
    """torchvision's semantic segmentation builders (FCN, DeepLabV3, LR-ASPP)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


class SegmentationOutput(nn.Module):
    """A torchvision segmentation model whose forward returns the ``out`` logits alone.

    torchvision's segmentation models return ``{"out": logits}`` (plus ``"aux"`` with
    ``aux_loss``); a kdcore task and its losses take one tensor. Module paths are torchvision's
    under ``net.`` (``net.backbone.layer4``, ``net.classifier``)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Any) -> Any:
        return self.net(x)["out"]


def torchvision_segmentation(arch: str, num_classes: int = 21, weights: Any = None,
                             weights_backbone: Any = None, in_channels: int = 3,
                             options: dict[str, Any] | None = None) -> nn.Module:
    """Build torchvision's segmentation model ``arch`` with random weights, returning logits.

    :param arch: ``lraspp_mobilenet_v3_large``, ``fcn_resnet50``, ``deeplabv3_resnet50``,
        ``deeplabv3_mobilenet_v3_large`` ... (``torchvision.models.list_models`` of
        ``torchvision.models.segmentation``).
    :param num_classes: per-pixel classes, background included (taken from the data set).
    :param weights: must stay ``None`` (no downloads); load trained weights with ``checkpoint``.
    :param weights_backbone: must stay ``None`` too (torchvision would download ImageNet ones).
    :param in_channels: input channels; when not 3 the backbone's first conv is replaced.
    :param options: extra keyword arguments for the builder (e.g. ``aux_loss: false``).
    """
    for key, value in (("weights", weights), ("weights_backbone", weights_backbone)):
        if value is not None:
            raise UserError(
                f"torchvision segmentation model {arch!r}: {key}={value!r} is not supported: kdcore "
                "never downloads weights at run time. Download them once yourself and pass the local "
                "file as the model's 'checkpoint' (keys of torchvision's model, under 'net.'), "
                f"leaving '{key}' unset")
    names = segmentation_names()
    if arch not in names:
        raise UserError(f"unknown torchvision segmentation model {arch!r}{did_you_mean(arch, names)}; "
                        f"available: {', '.join(names)}")
    import torchvision

    try:
        net = torchvision.models.get_model(arch, weights=None, weights_backbone=None,
                                           num_classes=num_classes, **(options or {}))
    except (TypeError, ValueError) as exc:
        raise UserError(f"torchvision segmentation model {arch!r}: {exc}") from exc
    if in_channels != 3:
        _replace_first_conv(net.backbone, in_channels, arch)
    return SegmentationOutput(net)
