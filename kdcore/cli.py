"""The ``kdcore`` command line: run, plugins, list, new-plugin.

Mistakes a user can fix exit with code 2 and one line on stderr, never a traceback. kdcore's own
commands load plugins only when they need components; ``kdcore --help`` and a name that is not
kdcore's own load them to find the plugins' commands (``kdcore_commands``). A plugin that fails
is one line, and ``kdcore --help`` and ``kdcore plugins`` work whatever a plugin does.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from importlib import resources
from collections.abc import Collection
from typing import Any, Callable

import click

from .errors import UserError

EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3


#: an error line longer than this is cut (a value echoed from a 10 MB config is not shown whole)
MAX_ERROR_LINE = 2000


def _fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    if len(message) > MAX_ERROR_LINE:
        message = f"{message[:MAX_ERROR_LINE]}... ({len(message)} characters)"
    click.echo(f"kdcore: error: {message}", err=True)
    sys.exit(code)


def _show_cause(exc: BaseException) -> None:
    """Under ``KDCORE_DEBUG=1`` (or ``kdcore --debug``, which sets it), the traceback of what a
    one-line error wraps (a factory's bug) too."""
    if os.environ.get("KDCORE_DEBUG", "") not in ("", "0"):
        import traceback

        cause = exc.__cause__ or exc
        click.echo("".join(traceback.format_exception(type(cause), cause, cause.__traceback__)), err=True)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`UserError` (and a NaN stop) into one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .engine.loop import NonFiniteLoss

        from .engine.checkpoint import DISK_FULL

        try:
            return func(*args, **kwargs)
        except UserError as exc:
            _show_cause(exc)
            _fail(str(exc))
        except NonFiniteLoss as exc:
            _fail(str(exc), EXIT_NONFINITE)
        except OSError as exc:  # a full disk where kdcore did not name the file itself
            if exc.errno not in DISK_FULL:
                raise
            _show_cause(exc)
            where = f" writing {exc.filename}" if exc.filename else ""
            _fail(f"no space left on the device{where} ({exc.strerror}); free space and run again "
                  f"(a stopped run continues with --resume RUN_DIR)")
        except KeyboardInterrupt as exc:
            how = getattr(exc, "how", "Ctrl-C")
            run_dir = getattr(exc, "run_dir", None)
            then = (f"continue with: kdcore run --resume {run_dir}" if run_dir else
                    "no run directory was created, nothing to resume")
            click.echo(f"kdcore: stopped by {how}; {then}", err=True)
            sys.exit(143 if how == "SIGTERM" else 130)

    return wrapper


def _config_key(option: str) -> str | None:
    """The config key an option such as ``--epochs`` or ``--batch-size`` probably means
    (``trainer.epochs``, ``data.batch_size``), when exactly one key has that name: among the
    top-level keys and every key of the default config, as ``--print-config`` spells them."""
    import attrs

    from .config import RunConfig, flatten, unstructure

    leaf = option.lstrip("-").replace("-", "_")
    keys = {*attrs.fields_dict(RunConfig), *flatten(unstructure(RunConfig()))}
    found = [key for key in keys if key.split(".")[-1] == leaf]
    return found[0] if len(found) == 1 else None


def _usage_error(exc: click.UsageError) -> str:
    """click's usage errors as kdcore's one line, with the config key a missing option means."""
    message = exc.format_message().rstrip(".")
    takes_set = exc.ctx is not None and any(p.name == "overrides" for p in exc.ctx.command.params)
    if isinstance(exc, click.NoSuchOption) and not exc.possibilities and takes_set:
        key = _config_key(exc.option_name)
        if key is not None:
            message = f"no option {exc.option_name!r}; it is the config key {key}: --set {key}=VALUE"
    where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    return f"{message}{where}"


class KdcoreGroup(click.Group):
    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """click's own handling, except that usage errors are one ``kdcore: error:`` line."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `kdcore`: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            _fail(_usage_error(exc), exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        """kdcore's own command, else a plugin's (``kdcore_commands``) by name or ``PLUGIN:NAME``.
        Plugins are loaded only when the name is not kdcore's own."""
        return super().get_command(ctx, name) or plugin_command(name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands) + plugin_command_names(own=self.commands)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except BrokenCommand:
            raise
        except click.UsageError:
            from .errors import did_you_mean
            from .plugins import get_plugins
            from .registry import why_missing

            if args:
                hint = did_you_mean(args[0], self.list_commands(ctx))
                if not hint and args[0].replace("-", "_").isidentifier():
                    hint = why_missing("command", args[0], get_plugins())
                _fail(f"no command {args[0]!r}{hint}; see 'kdcore --help'")
            raise


def plugin_command_names(own: Collection[str]) -> list[str]:
    """The short names of the plugins' usable commands, sorted. One named like kdcore's own
    command (reachable as ``PLUGIN:NAME``), or one that cannot be loaded, is a warning of its
    plugin."""
    from .plugins import get_plugins
    from .registry import components

    plugins = get_plugins()
    names = set()
    for reg in components("command", plugins):
        if reg.component.name in own:
            plugins.warn(reg.plugin, f"command {reg.component.name!r} is kdcore's own; this "
                                     f"plugin's is reachable as 'kdcore {reg.id}'")
        elif isinstance(_load_command(reg, warn_of=plugins), click.Command):
            names.add(reg.component.name)
    return sorted(names)


def plugin_command(name: str) -> click.Command | None:
    """The plugin command ``name`` (short, or ``PLUGIN:NAME``); ``None`` when no plugin has it.
    Asked only for a name that is not kdcore's own (:meth:`KdcoreGroup.get_command`)."""
    from .plugins import get_plugins
    from .registry import UnknownName, lookup

    plugins = get_plugins()
    try:
        reg = lookup("command", name, plugins)
    except UnknownName:
        return None
    except UserError as exc:  # e.g. a plugin that declares the name twice
        raise BrokenCommand(str(exc)) from None
    command = _load_command(reg, warn_of=None)
    if isinstance(command, str):
        raise BrokenCommand(f"command {name!r} of plugin {reg.plugin!r} cannot be used: {command}")
    return command


class BrokenCommand(click.UsageError):
    """A plugin command that cannot be imported, or is not a :class:`click.Command`."""


def _load_command(reg: Any, warn_of: Any) -> click.Command | str:
    """The command ``reg`` names, or why it cannot be used (also a warning of its plugin in the
    plugin set ``warn_of``, unless ``None``: the caller reports it)."""
    try:
        command = reg.component.resolve()
    except Exception as exc:  # a broken plugin must not take the CLI down
        problem = f"it cannot be loaded ({type(exc).__name__}: {exc})"
    else:
        if isinstance(command, click.Command):
            return command
        problem = f"it is a {type(command).__name__}, not a click.Command"
    if warn_of is not None:
        warn_of.warn(reg.plugin, f"command {reg.component.name!r}: {problem}; skipped")
    return problem


@click.group(name="kdcore", cls=KdcoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdcore")
@click.option("--debug", is_flag=True, help="show the traceback behind an error line too (as KDCORE_DEBUG=1)")
def main(debug: bool) -> None:
    """Knowledge distillation for PyTorch: a small core plus plugins."""
    if debug:
        os.environ["KDCORE_DEBUG"] = "1"


def preset_path(algo: str) -> str | None:
    """The built-in preset for ``algo``, or one a plugin declares for its algorithm."""
    candidate = resources.files("kdcore") / "presets" / f"{algo}.yaml"
    if candidate.is_file():
        return str(candidate)
    from .registry import lookup

    return lookup("algorithm", algo, where="--algo").component.presets.get("default")


def find_preset(name: str, where: str) -> str:
    """The YAML file of the installed preset ``name`` (``kdcore list preset``)."""
    from .registry import lookup

    registered = lookup("preset", name, where=where)
    try:
        return registered.component.resolve()
    except Exception as exc:
        raise UserError(f"{where} {name}: preset {registered.id!r} cannot be read ({exc}); "
                        f"reinstall plugin {registered.plugin!r}") from None


def config_or_preset(config_file: str) -> str:
    """``--config`` takes a file, or the name of an installed preset when no such file exists."""
    if os.path.exists(config_file) or os.sep in config_file or config_file.endswith((".yaml", ".yml")):
        return config_file
    from .registry import UnknownName

    try:
        return find_preset(config_file, "--config")
    except UserError as exc:
        why = f"it is no installed {exc.what}" if isinstance(exc, UnknownName) else exc
        raise UserError(f"config file {config_file} does not exist, and {why}") from None


def resolve_config(algo: str | None, config_file: str | None, overrides: tuple[str, ...],
                   output_dir: str | None, name: str | None) -> Any:
    from .config import load_config, read_yaml

    notes = []
    if config_file:
        data = read_yaml(config_file)
    else:
        path = preset_path(algo or "teacher_student")
        if path is None:
            raise UserError(f"algorithm {algo!r} ships no default preset; pass --config FILE")
        data = read_yaml(path)
    if algo:
        current = data["algorithm"].get("type") if isinstance(data.get("algorithm"), dict) else None
        if current and current != algo:
            notes.append(f"--algo {algo} replaces algorithm {current!r} of the config (its "
                         f"parameters dropped)")
            data["algorithm"] = {"type": algo}
            if algo == "vanilla" and data.get("teachers"):
                data["teachers"] = []
                notes.append("--algo vanilla trains the student alone: teachers ignored")
        else:
            data.setdefault("algorithm", {})
            if isinstance(data["algorithm"], dict):
                data["algorithm"]["type"] = algo
    if output_dir:
        data["output_dir"] = output_dir
    if name:
        data["name"] = name
    config = load_config(data, list(overrides))
    config.import_paths = import_paths(config, config_file)
    return config, notes


def import_paths(config: Any, config_file: str | None) -> list[str]:
    """``import_paths`` as absolute folders (relative ones are relative to the config file),
    with the config file's folder (or the working directory) added when a model is
    ``type: import``, so that config.yaml resumes from anywhere."""
    base = os.path.dirname(os.path.abspath(config_file)) if config_file else os.getcwd()
    paths = [os.path.join(base, os.path.expanduser(p)) for p in config.import_paths]
    if any(m.type == "import" for m in [config.student, *config.teachers]) and base not in paths:
        paths.append(base)
    return paths


@main.command()
@click.option("--algo", help="algorithm to run (default: the config's, else teacher_student)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML config file, or the name of an installed preset")
@click.option("--preset", help="run an installed preset by name ('kdcore list preset')")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a config key, e.g. --set trainer.epochs=3 (repeatable)")
@click.option("--resume", "resume_dir", type=click.Path(), help="continue the run in this directory")
@click.option("--output-dir", help="where run directories are created (config: output_dir)")
@click.option("--name", help="run name prefix (config: name)")
@click.option("--teacher-cache", is_flag=True,
              help="compute teacher outputs once and read them back (trainer.teacher_cache; "
                   "needs kdcore-plugin-teacher-cache)")
@click.option("--print-config", is_flag=True,
              help="print the resolved config (every key, defaults included) as YAML and stop")
@user_errors
def run(algo: str | None, config_file: str | None, preset: str | None, overrides: tuple[str, ...],
        resume_dir: str | None, output_dir: str | None, name: str | None,
        teacher_cache: bool, print_config: bool) -> None:
    """Train (and distill) as configured; prints the run directory last."""
    from .config import dump_yaml, load_config, read_yaml
    from .engine.run import run as run_training

    if preset and config_file:
        raise UserError(f"--preset {preset} and --config {config_file} both name the config; give one")
    if resume_dir:
        saved = os.path.join(resume_dir, "config.yaml")
        if not os.path.isfile(saved):
            raise UserError(f"--resume {resume_dir}: no config.yaml there; is it a kdcore run directory?")
        if config_file or algo or preset:
            raise UserError("--resume takes the run's saved config; drop --config, --preset and --algo")
        if output_dir is not None or name is not None:
            raise UserError(f"--resume continues in {resume_dir} itself; drop --output-dir and --name")
        data = read_yaml(saved)
        if not data:
            raise UserError(f"--resume {resume_dir}: {saved} is empty, so the run's settings are "
                            f"lost; put back a copy (config.yaml.N there holds an earlier one, if "
                            f"any), or start a new run")
        config = load_config(data, list(overrides))
        notes: list[str] = []
    else:
        if preset:
            config_file = find_preset(preset, "--preset")
        elif config_file:
            config_file = config_or_preset(config_file)
        config, notes = resolve_config(algo, config_file, overrides, output_dir, name)
    if teacher_cache:
        config.trainer.teacher_cache = True
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if print_config:  # what the run would write to config.yaml, checked as the run checks it
        from .precheck import check_components

        check_components(config)
        click.echo(dump_yaml(config), nl=False)
        return
    run_dir = run_training(config, resume_dir=resume_dir, log=click.echo)
    if not run_dir:  # another rank of a torchrun job; rank 0 reports
        return
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    metric = summary.get("metric", "top1")  # the task's headline number: top1, miou, map50
    teachers = summary.get("teachers", {})
    for teacher_name, scores in teachers.items():  # every teacher by name when there are several
        label = "teacher" if len(teachers) == 1 else f"teacher {teacher_name}"
        click.echo(f"{label} {metric}: {scores[metric]:.2f}")
    for exit_name, scores in summary.get("exits", {}).items():
        click.echo(f"{exit_name} {metric}: {scores[metric]:.2f}")
    click.echo(f"student {metric}: {summary['student'][metric]:.2f}  ({summary['seconds']:.0f} s)")
    click.echo(f"run dir: {run_dir}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--strict", is_flag=True,
              help="exit with code 1 when a plugin failed, is incompatible or has warnings (for CI)")
def plugins(as_json: bool, strict: bool) -> None:
    """Installed plugins: distribution, version, kdcore range, components, load errors."""
    from .plugins import dist_label, get_plugins
    from .registry import check_factories, components
    from .specs import KINDS
    from .version import __version__

    loaded = get_plugins()
    plugin_command_names(own=main.commands)  # a command named like kdcore's own is a warning
    if strict:  # every "module:attr" imported and every preset file found, nothing built
        check_factories(loaded)
    by_plugin: dict[str, dict[str, list[str]]] = {}
    for kind in KINDS:
        for reg in components(kind, loaded):
            by_plugin.setdefault(reg.plugin, {}).setdefault(kind, []).append(reg.component.name)
    rows = [{"name": "kdcore", "distribution": "kdcore", "version": __version__, "state": "ok",
             "requires_kdcore": "", "error": "", "warnings": [],
             "components": by_plugin.get("kdcore", {})}]
    for status in sorted(loaded.status.values(), key=lambda s: s.name):
        rows.append({"name": status.name, "distribution": status.distribution,
                     "version": status.version, "state": status.state,
                     "requires_kdcore": status.requires_kdcore, "error": status.error,
                     "warnings": status.warnings, "components": by_plugin.get(status.name, {})})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            extra = f"  requires kdcore {row['requires_kdcore']}" if row["requires_kdcore"] else ""
            click.echo(f"{row['name']}  ({dist_label(row['distribution'], row['version'])})  "
                       f"{row['state']}{extra}")
            for kind, names in row["components"].items():
                click.echo(f"    {kind}: {', '.join(names)}")
            if row["error"]:
                click.echo(f"    {'note' if row['state'] == 'disabled' else 'error'}: {row['error']}")
            for warning in row.get("warnings", []):
                click.echo(f"    warning: {warning}")
    if strict:
        troubled = loaded.troubled()
        if loaded.unmatched_selection():  # each already said on stderr when the set was built
            troubled.append("KDCORE_PLUGINS")
        if troubled:
            click.echo(f"kdcore: --strict: {len(troubled)} plugin(s) with problems: {', '.join(troubled)}",
                       err=True)
            sys.exit(1)


@main.command(name="list")
@click.argument("kind")
@user_errors
def list_components(kind: str) -> None:
    """Components of KIND (algorithm, distiller, head, connector, loss, model, dataset, preset,
    model_transform, logger, command, callback)."""
    from .registry import components, own_plugins
    from .specs import KINDS

    plurals = {f"{k}es" if k.endswith("s") else f"{k}s": k for k in KINDS}  # losses, models ...
    kind = plurals.get(kind, kind)
    rows = components(kind)
    width = max((len(r.id) for r in rows), default=0)
    for reg in rows:
        click.echo(f"{reg.id:<{width}}  {reg.component.summary}")
    click.echo(f"(plugins add more: 'kdcore plugins' lists the installed ones; kdcore's own are "
               f"'pip install kdcore-plugin-NAME', NAME one of {', '.join(own_plugins())})", err=True)


@main.command(name="new-plugin")
@click.argument("name")
@click.option("--kind", type=click.Choice(["loss", "connector", "head", "distiller", "algorithm",
                                           "model", "dataset"]), default="loss", show_default=True,
              help="kind of the component the plugin starts with")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="folder in which kdcore-plugin-NAME/ is created")
@click.option("--component", "components", multiple=True, metavar="NAME",
              help="a component of KIND to create (repeatable; default: one named after the plugin)")
@user_errors
def new_plugin(name: str, kind: str, directory: str, components: tuple[str, ...]) -> None:
    """Create kdcore-plugin-NAME/: an installable plugin with working KIND components."""
    from .scaffold import new_plugin as create, next_steps

    target = create(name, kind, directory, components)
    for line in next_steps(target, name, kind, components):
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    main()
