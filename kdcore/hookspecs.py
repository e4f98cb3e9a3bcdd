"""The hooks a kdcore plugin implements: one per component kind, and one for presets.

Each hook takes no arguments and returns a list of :class:`kdcore.specs.Component`
(:class:`kdcore.specs.Preset` for presets). A plugin
implements only the hooks it needs, marked with ``@kdcore.hookimpl``; the core's own components
are registered through these same hooks (see ``kdcore/builtin/``).

Factories are called with the parameters from the user's YAML (``type``, and for losses
``weight`` and ``name``, removed),
so a factory's keyword arguments *are* its config schema: kdcore checks user keys against the
factory signature and suggests the closest name on a typo. Reserved parameter names: ``plugins``,
``where`` and ``context`` are ``kdcore.build``'s own options, so a factory must not take a
parameter of one of those names (the contract kit flags it); ``kind`` and ``name`` are free
(positional-only in ``kdcore.build(kind, name, /, ...)``).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("kdcore")
hookimpl = pluggy.HookimplMarker("kdcore")


@hookspec
def kdcore_losses() -> list:
    """Return the distillation losses this plugin provides.

    A loss factory returns an ``nn.Module`` (usually a :class:`kdcore.Loss`) whose
    ``forward(student, teacher, **extra)`` returns a scalar tensor. ``extra`` holds the batch
    context: ``targets``, ``indices`` (sample ids), ``epoch`` and ``step``; take what you need
    and accept ``**extra`` for the rest. The loss's weight is applied by the head, not the loss.

    Called once per plugin set, when a command first needs this kind; the returned specs are not
    built until used.

    Example::

        @kdcore.hookimpl
        def kdcore_losses():
            return [kdcore.Component("my_l1", factory=MyL1, summary="L1 between features")]
    """


@hookspec
def kdcore_connectors() -> list:
    """Return the connectors this plugin provides.

    A connector factory returns an ``nn.Module`` mapping one feature tensor to another, used to
    make student and teacher features comparable. It is called with the user's parameters plus,
    when its signature accepts them, ``in_shape`` and ``out_shape`` (the per-sample shapes of the
    feature it receives and of the feature on the other side), so ``linear`` or ``conv1x1_bn``
    need no hand-written channel counts.

    Example::

        @kdcore.hookimpl
        def kdcore_connectors():
            return [kdcore.Component("pool", factory=lambda in_shape, out_shape: nn.Flatten())]
    """


@hookspec
def kdcore_heads() -> list:
    """Return the distillation heads this plugin provides.

    A head factory is called as ``factory(losses=..., student_connector=...,
    teacher_connector=..., **params)`` with already-built modules and returns a
    :class:`kdcore.DistillationHead`. Its ``forward(student_feature, teacher_feature, **extra)``
    returns ``{term_name: weighted_loss}``.

    Example::

        @kdcore.hookimpl
        def kdcore_heads():
            return [kdcore.Component("detached_teacher", factory=MyHead)]
    """


@hookspec
def kdcore_distillers() -> list:
    """Return the distillers this plugin provides.

    A distiller factory is called as ``factory(teachers=..., points=..., **params)`` and returns
    a :class:`kdcore.Distiller`, which owns the frozen teachers, their feature taps and heads.

    Example::

        @kdcore.hookimpl
        def kdcore_distillers():
            return [kdcore.Component("ensemble", factory=EnsembleDistiller)]
    """


@hookspec
def kdcore_algorithms() -> list:
    """Return the training algorithms this plugin provides (``kdcore run --algo NAME``).

    An algorithm factory is called as ``factory(student=..., distiller=..., task=...,
    **params)`` and returns a :class:`kdcore.Algorithm`, which computes the loss terms of one
    training step.

    Example::

        @kdcore.hookimpl
        def kdcore_algorithms():
            return [kdcore.Component("my_algo", factory=MyAlgorithm, summary="...")]
    """


@hookspec
def kdcore_models() -> list:
    """Return the model architectures this plugin provides.

    A model factory returns an ``nn.Module``. It receives the user's parameters plus, when its
    signature accepts them, ``num_classes`` and ``in_channels`` taken from the data set.

    Example::

        @kdcore.hookimpl
        def kdcore_models():
            return [kdcore.Component("tiny_mlp", factory=TinyMLP, summary="2-layer MLP")]
    """


@hookspec
def kdcore_datasets() -> list:
    """Return the data sets this plugin provides.

    A data set factory returns a :class:`kdcore.data.DataSource`: the train and test splits
    (in-memory tensors or a torch ``Dataset``), and the :class:`kdcore.Task` that says how
    targets are scored (the student's own loss and the metric).

    Example::

        @kdcore.hookimpl
        def kdcore_datasets():
            return [kdcore.Component("my_images", factory=load_my_images)]
    """


@hookspec
def kdcore_presets() -> list:
    """Return the run configs this plugin ships, by name (``kdcore run --preset NAME``).

    Each item is a :class:`kdcore.Preset` (or a :class:`kdcore.Component` whose factory is the
    path): its name, where the YAML file is, and one line for ``kdcore list preset``. Give the
    file as ``"package:relative/path.yaml"``: kdcore finds it inside the installed package with
    :mod:`importlib.resources`, so it works from a wheel; ship it as package data
    (``[tool.setuptools.package-data]``). Name a plugin's main preset after the plugin; preset
    names share one namespace across plugins, like every other kind.

    Called once per plugin set; the files are read only when a run uses one.
    ``kdcore plugins --strict`` checks that every file exists.

    Example::

        @kdcore.hookimpl
        def kdcore_presets():
            return [kdcore.Preset("rkd", "kdcore_plugin_rkd:presets/fashion_mnist.yaml",
                                  "RKD on Fashion-MNIST, CNN teacher to CNN student")]
    """


@hookspec
def kdcore_model_transforms() -> list:
    """Return the model transforms this plugin provides (``trainer.model_transforms``).

    A transform rewrites models in place for speed on some hardware, without changing what they
    compute beyond float rounding (a kernel swap, a layout). The core applies none unless the
    user lists it: ``trainer.model_transforms: [fast_max_pool]``. Its factory is called with the
    user's parameters and returns a callable ``transform(model, role) -> int``, called on the
    student (``role="student"``), on every frozen teacher once its weights are loaded
    (``"teacher"``) and on a teacher before its own training (``"teacher_training"``); it
    returns how many modules it changed (logged), and must keep module paths and hooks.

    Example::

        @kdcore.hookimpl
        def kdcore_model_transforms():
            return [kdcore.Component("fast_max_pool", "my_pkg.pool:FastMaxPool",
                                     "2x2 max pooling by a C kernel on the CPU")]
    """



@hookspec
def kdcore_loggers() -> list:
    """Return the experiment loggers this plugin provides (``trainer.loggers: [NAME]``).

    A logger factory returns an object with the methods of :class:`kdcore.loggers.Logger`
    (subclass it and override what you need): ``log_config(config)`` once before training,
    ``log_epoch(row)`` after every epoch with the ``metrics.jsonl`` row (loss terms, ``lr``,
    scores), ``log_summary(summary)`` once at the end and ``close()``, also when a run stops
    early. It is called on rank 0 only, with the user's parameters plus, when its signature
    names them, ``run_dir``, ``config`` (plain data) and ``first_epoch`` (above 1 after
    ``--resume``: rows from that epoch on are written again). ``metrics.jsonl`` is the built-in
    logger and always on; a logger that raises is named once and dropped, the run goes on.

    Example::

        @kdcore.hookimpl
        def kdcore_loggers():
            return [kdcore.Component("csv", factory=CsvLogger, summary="metrics.csv per run")]
    """


@hookspec
def kdcore_commands() -> list:
    """Return the CLI commands this plugin adds (``kdcore NAME ...``).

    Each component's factory is a :class:`click.Command`, or ``"module:attr"`` naming one so
    that kdcore's own commands (``kdcore run`` ...) never import it; ``kdcore --help`` imports
    every plugin command to show its line. kdcore's own commands (``run``, ``plugins``,
    ``list``, ``new-plugin``) keep their names; a plugin command with one of those names, or
    with a name an earlier-installed plugin's command has, is reachable as ``PLUGIN:NAME``.
    Decorate the command body with :func:`kdcore.cli.user_errors` so that a
    :class:`kdcore.errors.UserError` is one ``kdcore: error:`` line with exit code 2.
    ``kdcore compare``, ``inspect``, ``export`` and ``draw`` are plugins of this kind.

    Example::

        @click.command()
        @click.argument("run_dir")
        @kdcore.cli.user_errors
        def report(run_dir):
            '''Print the summary of a run.'''

        @kdcore.hookimpl
        def kdcore_commands():
            return [kdcore.Component("report", report, "print a run's summary")]
    """


@hookspec
def kdcore_callbacks() -> list:
    """Return the training callbacks this plugin provides (``trainer.callbacks: [NAME]``).

    A callback factory is called on every process (under torchrun too) with the user's
    parameters plus, when its signature names it, ``config`` (the resolved config as plain
    data, as loggers get it). It returns an object that may define either of two methods, each
    called on every callback that defines it, in the listed order:

    - ``check(splits, augment)``: before any model is built (and before the run dir exists), with
      the data splits (``splits.student_train``, ``splits.source.task`` ...) and the training
      augmentation (``None`` when there is none); raise :class:`kdcore.errors.UserError` to
      refuse the config in one line.
    - ``before_training(algorithm, batches, teachers, device, log)``: once the student's
      training batches exist, before the first epoch, also on ``--resume`` (where it runs before
      ``last.pt`` is restored, so the student's weights are not yet the resumed ones; a
      callback that needs them reads ``last.pt`` itself); ``teachers`` is
      the run's record of each teacher (:class:`kdcore.engine.teachers.Teacher`: its model,
      checkpoint and checksums) and ``log`` prints on rank 0.

    ``trainer.teacher_cache: true`` is short for the callback ``teacher_cache``
    (kdcore-plugin-teacher-cache), which fills ``Distiller.caches`` in ``before_training``.

    Example::

        class SayBatches:
            def before_training(self, algorithm, batches, teachers, device, log):
                log(f"{len(batches)} batches an epoch on {device}")

        @kdcore.hookimpl
        def kdcore_callbacks():
            return [kdcore.Component("say_batches", SayBatches, "log the epoch's batch count")]
    """
