"""``kdcore export``, the command line of :mod:`kdcore_plugin_export.export`."""

from __future__ import annotations

import click

from kdcore.cli import user_errors
from kdcore.errors import UserError


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), default="torchscript",
              show_default=True, help="file format")
@click.option("--out", help="the file to write (default: RUN_DIR/student.torchscript.pt or student.onnx)")
@click.option("--samples", type=int, default=256, show_default=True,
              help="test inputs on which the file's outputs are compared with the PyTorch student's")
@click.option("--no-fold", is_flag=True,
              help="leave the data set's normalisation out (the file then takes normalised inputs)")
@user_errors
def export(run_dir: str, fmt: str, out: str | None, samples: int, no_fold: bool) -> None:
    """Write the student of RUN_DIR as TorchScript or ONNX, checked against PyTorch."""
    from .export import export_run

    if samples < 1:
        raise UserError(f"--samples {samples}: must be at least 1")
    result = export_run(run_dir, fmt, out, samples=samples, fold=not no_fold)
    shape = ", ".join(map(str, result["input_shape"]))
    norm = result["normalisation"]
    takes = (f"(N, {shape}) images in [0, 1] (pixel / 255); normalisation with mean {norm['mean']}, "
             f"std {norm['std']} folded in" if norm else
             f"(N, {shape}) inputs as the data set gives them to the student")
    click.echo(f"wrote {result['file']} ({result['bytes'] / 1e6:.2f} MB), {result['params']:,} parameters")
    click.echo(f"input: {takes}")
    click.echo(f"checked: outputs match the PyTorch student on {result['samples']} test inputs "
               f"(largest difference {result['max_abs_diff']:.2g})")
