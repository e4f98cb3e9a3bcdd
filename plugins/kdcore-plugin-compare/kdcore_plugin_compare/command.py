"""``kdcore compare``, the command line of :mod:`kdcore_plugin_compare.compare`."""

from __future__ import annotations

import os
import sys

import click

from kdcore.cli import config_or_preset, user_errors
from kdcore.errors import UserError

#: the options whose values a resumed compare takes from its plan (compare.json), by parameter name
SAVED = {"config_file": "--config", "methods": "--methods", "seeds": "--seeds", "epochs": "--epochs",
         "out": "--out", "tune": "--tune", "overrides": "--set", "teacher_cache": "--teacher-cache"}


@click.command()
@click.option("--config", "config_file",
              help="your config (data, student, teachers): a YAML file or a preset name")
@click.option("--methods", default="vanilla,kd", show_default=True,
              help="comma list of methods (preset names, 'kdcore list preset') and vanilla")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="seeds per method (the config's seed on)")
@click.option("--epochs", type=int, help="training epochs of every run (default: the config's)")
@click.option("--parallel", type=int, default=1, show_default=True,
              help="runs at a time; each gets cores / K threads")
@click.option("--out", help="folder for the runs and the table (default: runs/compare-<time>)")
@click.option("--tune", multiple=True, metavar="METHOD.PARAM=V1,V2,...",
              help="choose a method parameter on the validation split, e.g. kd.temperature=1,2,4,8")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a key of your config")
@click.option("--teacher-cache", is_flag=True, help="distillation runs read teacher outputs from the cache")
@click.option("--resume", "resume_dir", type=click.Path(), help="continue the compare in this folder")
@user_errors
def compare(config_file: str | None, methods: str, seeds: int, epochs: int | None, parallel: int,
            out: str | None, tune: tuple[str, ...], overrides: tuple[str, ...], teacher_cache: bool,
            resume_dir: str | None) -> None:
    """Each method on your config over seeds: a table, a JSON of every run and a PNG of curves."""
    import time

    from .compare import Options
    from .compare import compare as run_compare

    source = click.get_current_context().get_parameter_source
    if resume_dir:
        given = [flag for name, flag in SAVED.items()
                 if source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise UserError(f"--resume {resume_dir} repeats the saved compare; drop {', '.join(given)}")
        out = resume_dir
        options = None
    else:
        if not config_file:
            raise UserError("compare needs --config FILE (your data, student and teachers), e.g. "
                            "--config teacher_student")
        out = out or os.path.join("runs", f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
        options = Options(config=os.path.abspath(config_or_preset(config_file)),
                          methods=[m.strip() for m in methods.split(",") if m.strip()], seeds=seeds,
                          overrides=list(overrides), epochs=epochs, parallel=parallel, tune=list(tune),
                          teacher_cache=teacher_cache)
    log = lambda message: click.echo(message, err=True)  # noqa: E731 - stdout carries the table
    given_parallel = source("parallel") == click.core.ParameterSource.COMMANDLINE
    try:
        report = run_compare(options, out, resume=bool(resume_dir),
                             parallel=parallel if given_parallel else None, log=log)
    except KeyboardInterrupt as exc:
        how = getattr(exc, "how", None) or ("SIGTERM" if "SIGTERM" in str(exc) else "Ctrl-C")
        click.echo(f"kdcore: compare stopped by {how}; finished runs are kept; continue with: "
                   f"kdcore compare --resume {out}", err=True)
        sys.exit(143 if how == "SIGTERM" else 130)
    click.echo(report, nl=False)
    click.echo(f"table: {os.path.join(out, 'table.md')}; every run: {os.path.join(out, 'runs.json')}; "
               f"curves: {os.path.join(out, 'curves.png')}")
