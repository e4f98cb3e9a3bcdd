"""Built-in model families. Factories are "module:attr" strings so listing imports nothing heavy."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..specs import Component

_RESNET = "kdcore.models.cifar_resnet"
_WRN = "kdcore.models.wide_resnet"

#: name -> parameter count (millions) for 100 classes, shown by ``kdcore list model``.
_CIFAR_RESNETS = {"resnet8": 0.08, "resnet14": 0.18, "resnet20": 0.28, "resnet32": 0.47,
                  "resnet44": 0.67, "resnet56": 0.86, "resnet110": 1.74}
_WRNS = {"wrn_16_1": 0.18, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26}


@hookimpl
def kdcore_models() -> list[Component]:
    models = [
        Component("cnn", "kdcore.models.cnn:SmallCNN", "small CNN for 28x28 inputs (widths, depth)"),
        Component("import", "kdcore.models.imported:import_model",
                  "a model from your own code: target: 'module:function' or 'file.py:function'"),
        Component("cnn_teacher", "kdcore.models.cnn:cnn_teacher",
                  "default 28x28 teacher: CNN 24/48/96, 53k parameters"),
        Component("cnn_student", "kdcore.models.cnn:cnn_student",
                  "default 28x28 student: CNN 8/16/32, 6.3k parameters"),
        Component("cifar_resnet", f"{_RESNET}:cifar_resnet",
                  "CIFAR ResNet of any depth 6n+2 and widths (stem + 3 stages)"),
        Component("resnet8x4", f"{_RESNET}:resnet8x4",
                  "CIFAR ResNet-8x4, widths 64/128/256, 1.23M parameters (KD student)"),
        Component("resnet32x4", f"{_RESNET}:resnet32x4",
                  "CIFAR ResNet-32x4, widths 64/128/256, 7.43M parameters (KD teacher)"),
        Component("wide_resnet", f"{_WRN}:wide_resnet",
                  "Wide ResNet of any depth 6n+4 and widen_factor (pre-activation blocks)"),
        Component("torchvision", "kdcore.models.torchvision_models:torchvision_model",
                  "torchvision classification model by arch (e.g. resnet18), random init"),
        Component("torchvision_seg", "kdcore.models.torchvision_models:torchvision_segmentation",
                  "torchvision segmentation model by arch (lraspp_mobilenet_v3_large, fcn_resnet50, "
                  "deeplabv3_*), random init, returns the 'out' logits"),
    ]
    models += [Component(name, f"{_RESNET}:{name}",
                         f"CIFAR ResNet-{name[6:]}, widths 16/32/64, {size:.2f}M parameters")
               for name, size in _CIFAR_RESNETS.items()]
    models += [Component(name, f"{_WRN}:{name}",
                         f"Wide ResNet-{name[4:].replace('_', '-')}, {size:.2f}M parameters")
               for name, size in _WRNS.items()]
    return models
