"""``kdcore inspect MODEL``: every module path a distill point can name, with its output shape;
``--pair TEACHER STUDENT``: both models side by side and the suggested points (:mod:`.pairing`).

Torch and the models are imported when the command runs, so ``kdcore --help`` stays fast."""

from __future__ import annotations

from typing import Any

import click

from kdcore.cli import user_errors
from kdcore.errors import UserError


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL | --pair TEACHER STUDENT")
@click.option("--pair", is_flag=True,
              help="two models, teacher then student: paths side by side and suggested distill points")
@click.option("--set", "params", multiple=True, metavar="KEY=VALUE",
              help="model parameter (with --pair: teacher.KEY=... or student.KEY=... for one side)")
@click.option("--dataset", default="fashion_mnist", show_default=True,
              help="data set whose input shape and classes to use")
@click.option("--root", "data_root", help="the data set's folder (as data.root in a config)")
@click.option("--data", "data_params", multiple=True, metavar="KEY=VALUE",
              help="a data set parameter (as data.params.KEY), e.g. --data task=detection")
@click.option("--input-shape", help="C,H,W instead of reading the data set, e.g. 3,32,32")
@click.option("--num-classes", type=int, default=10, show_default=True,
              help="classes, with --input-shape")
@user_errors
def inspect(models: tuple[str, ...], pair: bool, params: tuple[str, ...], dataset: str,
            data_root: str | None, data_params: tuple[str, ...], input_shape: str | None,
            num_classes: int) -> None:
    """Every addressable module path of MODEL with its output shape, for distill points.

    With --pair TEACHER STUDENT: both models side by side, stage ends of equal resolution
    paired, and the distill points as YAML to paste into a config."""
    import torch

    from kdcore.config import parse_override
    from kdcore.taps import feature_shapes

    from .pairing import pair_report, shapes_explained

    if len(models) != (2 if pair else 1):
        raise UserError("--pair takes two models, TEACHER then STUDENT" if pair else
                        f"inspect takes one MODEL (got {len(models)}); for two: --pair TEACHER STUDENT")
    kwargs = {}
    for text in params:
        keys, value = parse_override(text)
        kwargs[".".join(keys)] = value
    data_kwargs = {".".join(keys): value for keys, value in map(parse_override, data_params)}
    shape, context = _inspect_input(dataset, data_root, input_shape, num_classes, data_kwargs)
    if pair:
        sides = {"teacher": {}, "student": {}}
        for key, value in kwargs.items():
            side, _, rest = key.partition(".")
            for name in ([side] if side in sides and rest else sides):
                sides[name][rest if side in sides and rest else key] = value
        nets = [_inspect_model(name, sides[side], context) for name, side in zip(models, sides)]
        for line in pair_report(models[0], nets[0], models[1], nets[1], shape):
            click.echo(line)
        return
    model = models[0]
    net = _inspect_model(model, kwargs, context)
    with shapes_explained(f"model {model!r}", shape):
        shapes = feature_shapes(net, torch.zeros(2, *shape))
    params_count = sum(p.numel() for p in net.parameters())
    click.echo(f"{model}: {params_count:,} parameters, input {tuple(shape)}")
    modules = dict(net.named_modules())
    width = max(len(p) for p in shapes)
    for path, out in shapes.items():
        kind = "(model output)" if path == "output" else type(modules[path]).__name__
        click.echo(f"  {path:<{width}}  {str(out):<16} {kind}")


def _inspect_input(dataset: str, data_root: str | None, input_shape: str | None,
                   num_classes: int, data_kwargs: dict[str, Any] | None = None
                   ) -> tuple[tuple[int, ...], dict[str, int]]:
    """The per-sample input shape and the models' context (classes, channels) for inspect."""
    from kdcore.registry import build

    if input_shape:
        try:
            shape = tuple(int(x) for x in input_shape.split(","))
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1:
            raise UserError(f"--input-shape {input_shape!r}: expected positive sizes C,H,W such as 3,32,32")
        context = {"num_classes": num_classes, "in_channels": shape[0]}
    else:
        try:
            source = build("dataset", dataset, where="--dataset", **(data_kwargs or {}),
                           **({"root": data_root} if data_root else {}))
        except UserError as exc:
            raise UserError(f"{exc} (here: --root DIR; or --input-shape C,H,W, which reads no data)") from None
        shape, context = source.input_shape, {"num_classes": source.num_classes,
                                              "in_channels": source.input_shape[0]}
    return tuple(shape), context


def _inspect_model(model: str, kwargs: dict[str, Any], context: dict[str, int]) -> Any:
    from kdcore.registry import build

    context = {k: v for k, v in context.items() if k not in kwargs}  # --set num_classes=100 wins
    try:
        return build("model", model, where=f"model {model!r}", context=context, **kwargs)
    except UserError as exc:
        if str(exc).endswith("required, missing"):
            raise UserError(f"{exc}: give it with --set NAME=VALUE") from None
        raise

