"""The ``timm`` model: ``timm.create_model`` with the data's classes and input channels, and
weights only from a local file, so that a run never downloads."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from kdcore.errors import UserError, did_you_mean


def timm_model(arch: str, num_classes: int, in_channels: int, pretrained: bool = False,
               pretrained_file: str | None = None, **kwargs: Any) -> nn.Module:
    """A timm architecture, built for the data set's ``num_classes`` and ``in_channels``.

    :param arch: a timm model name (``timm.list_models()``), e.g. ``resnet18``, ``mobilenetv3_small_050``.
    :param pretrained: start from pretrained weights, read from ``pretrained_file`` (a
        ``state_dict`` or timm checkpoint for ``arch``; timm adapts the first convolution to
        ``in_channels`` and drops a classifier of another size). Nothing is downloaded.
    :param pretrained_file: the local weights file (``pretrained: true`` is implied).
    :param kwargs: passed to the architecture (``drop_rate``, ``drop_path_rate``, ...).
    """
    import timm

    if not timm.is_model(arch):
        raise UserError(f"arch: {arch!r} is not a timm architecture{did_you_mean(arch, timm.list_models())}"
                        f" (timm {timm.__version__}; see timm.list_models())")
    if pretrained and not pretrained_file:
        raise UserError("pretrained: kdcore never downloads weights; give pretrained_file: PATH "
                        "(a local checkpoint for this arch), or pretrained: false")
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    if not pretrained_file:
        return model
    path = os.path.abspath(os.path.expanduser(pretrained_file))
    if not os.path.isfile(path):
        raise UserError(f"pretrained_file: {path} does not exist")
    from timm.models import load_state_dict

    state = load_state_dict(path)
    mine = model.state_dict()
    if state.keys() == mine.keys() and all(state[k].shape == mine[k].shape for k in mine):
        model.load_state_dict(state)  # made for this very shape (a kdcore student.pt, say)
        return model
    # ImageNet-style weights: timm adapts the stem to in_channels and drops the classifier
    return timm.create_model(arch, pretrained=True, num_classes=num_classes, in_chans=in_channels,
                             pretrained_cfg_overlay={"file": path}, **kwargs)
