"""``kdcore draw``, the command line of :mod:`kdcore_plugin_draw.draw`."""

from __future__ import annotations

import click

from kdcore.cli import user_errors


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False), metavar="RUN_DIR...")
@click.option("--out", default="predictions.png", show_default=True, help="the PNG to write")
@click.option("--count", type=int, default=6, show_default=True, help="test images, one row each")
@click.option("--min-score", type=float, default=0.3, show_default=True, help="boxes: lowest score drawn")
@user_errors
def draw(run_dirs: tuple[str, ...], out: str, count: int, min_score: float) -> None:
    """Test images with the ground truth, the teacher (of the first run that has one) and each run's student
    predictions (masks or boxes), from finished run directories of one data set."""
    from .draw import draw as draw_picture

    click.echo(f"picture: {draw_picture(list(run_dirs), out, count=count, min_score=min_score)}")
