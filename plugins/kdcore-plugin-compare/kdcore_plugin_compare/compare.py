"""``kdcore compare``: every method on the user's own config, over seeds, in one table.

The config gives data, student and teacher(s); each method contributes its distill points and
losses from its plugin's preset (``kdcore list preset``), adapted to the user's models through
:mod:`kdcore_plugin_inspect.pairing` (what ``kdcore inspect --pair`` shows): a point on the
preset's logits goes to ``output``, one on its embedding to the user's flat feature, one on a
stage end to the matched stage of the same relative depth. A
point the pairing cannot place (a layer inside a stage the user's model does not have) refuses
the method with the reason, in the table. ``vanilla`` is the student alone. A method whose runs
open no training images (data-free) cannot train its teacher: its runs get the user's teacher
from the teacher cache (trained there once on the user's data if missing), the very checkpoint the
other methods distil from.

Output folder::

    OUT/compare.json        the plan (options, runs, refusals): what --resume reads
    OUT/configs/TAG.yaml    each run's resolved config (TAG: METHOD-sSEED, tune-...)
    OUT/runs/TAG-<stamp>/   ordinary run directories (kdcore run)
    OUT/logs/TAG.log        each run's output
    OUT/table.md, OUT/runs.json, OUT/curves.png

Each run is a ``kdcore run`` subprocess; ``--resume OUT`` skips runs with a summary.json and
continues interrupted ones with ``kdcore run --resume``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import attrs

from kdcore.cli import find_preset
from kdcore.config import dump_yaml, load_config, parse_override, read_yaml, unstructure
from kdcore.engine.checkpoint import write_json_atomic, write_text_atomic
from kdcore.engine.resume import metrics_rows
from kdcore.errors import UserError
from kdcore.precheck import check_components
from kdcore.taps import OUTPUT

PLAN = "compare.json"
#: headline metrics the core's tasks declare, in the order a summary is searched for one
KNOWN_METRICS = ("top1", "miou", "map50", "map")


@attrs.define
class Options:
    """What the user asked for; saved in compare.json so --resume repeats it."""

    config: str
    methods: list[str]
    seeds: int = 3
    overrides: list[str] = attrs.field(factory=list)
    epochs: int | None = None
    parallel: int = 1
    tune: list[str] = attrs.field(factory=list)
    teacher_cache: bool = False


@attrs.define
class Job:
    tag: str
    method: str
    seed: int
    tune: dict[str, Any] | None = None  # {"key": ..., "value": ...} for a tuning run


@attrs.define
class Tuning:
    method: str
    key: str
    values: list[Any]


# --- methods: presets adapted to the user's models ---------------------------------------

def _model_key(block: dict[str, Any]) -> Any:
    """What decides a model block's architecture: its type and parameters (not its name,
    checkpoint, training or distill points: the block's own declared keys)."""
    from kdcore.config import StudentConfig, TeacherConfig, block_keys

    declared = set(block_keys(TeacherConfig)) | set(block_keys(StudentConfig))
    params = {k: v for k, v in block.items() if k not in declared}
    params.update(block.get("params") or {})
    return json.dumps({"type": block.get("type"), **params}, sort_keys=True, default=str)


class Placer:
    """Maps a preset's distill points (written for the preset's models) onto the user's
    models, with :func:`kdcore_plugin_inspect.pairing.pair_models` on both; probes are built
    once."""

    def __init__(self, user: dict[str, Any]) -> None:
        self.user = user
        self._pairings: dict[Any, Any] = {}

    def pairing(self, data: dict[str, Any], student: dict[str, Any], teacher: dict[str, Any]) -> Any:
        import torch

        from kdcore.assemble import build_model
        from kdcore.config import RunConfig, structure
        from kdcore.registry import build
        from kdcore_plugin_inspect.pairing import pair_models

        key = (_model_key(data), _model_key(student), _model_key(teacher))
        if key not in self._pairings:
            cfg = structure(RunConfig, {"data": data, "student": student, "teachers": [teacher]})
            source = build("dataset", cfg.data.type, where="data", **cfg.data.params)
            with torch.random.fork_rng():
                s = build_model(cfg.student, source, "student")
                t = build_model(cfg.teachers[0], source, "teachers[0]")
            self._pairings[key] = pair_models(s, t, torch.zeros(2, *source.input_shape))
        return self._pairings[key]

    def place(self, method: str, preset: dict[str, Any], point: dict[str, Any],
              teacher: dict[str, Any]) -> dict[str, Any]:
        """``point`` moved onto the user's student and ``teacher``; UserError says why not."""
        ours = self.pairing(preset["data"], preset["student"], preset["teachers"][0])
        theirs = self.pairing(self.user["data"], self.user["student"], teacher)
        ps, pt = point["student_module"], point["teacher_module"]
        sio, tio = point.get("student_io", "output"), point.get("teacher_io", "output")
        moved = copy.deepcopy(point)

        def put(pair: Any, sub: str = "") -> dict[str, Any]:
            moved.update(student_module=pair.student.path + sub, teacher_module=pair.teacher.path + sub)
            if not sub:
                moved.update(student_io=pair.student.io, teacher_io=pair.teacher.io)
            return moved

        logits_layer = (ps != OUTPUT and ours.logits is not None and sio == tio == "output"
                        and ours.student.shape(ps) == ours.logits.student.shape
                        and ours.teacher.shape(pt) == ours.logits.teacher.shape)
        if (ps == OUTPUT and pt == OUTPUT) or logits_layer:  # the layer that makes the logits: them
            moved.update(student_module=OUTPUT, teacher_module=OUTPUT)
            if theirs.logits is None:
                raise UserError("the student's and the teacher's outputs differ in shape")
            return moved
        emb = ours.embedding
        if emb and (ps, sio, pt, tio) == (emb.student.path, emb.student.io, emb.teacher.path, emb.teacher.io):
            if theirs.embedding is None:
                raise UserError("it compares flat features, and no linear classifier was found to read them from")
            return put(theirs.embedding)
        for i, pair in enumerate(ours.stages):
            s, t = pair.student.path, pair.teacher.path
            sub = ps[len(s):] if ps.startswith(s + ".") else ""
            if (ps, pt) != (s, t) and not (sub and pt == t + sub):
                continue
            if not theirs.stages:
                raise UserError("it distills stage features, and the two models have no stages of "
                                "equal spatial resolution ('kdcore inspect --pair TEACHER STUDENT')")
            n, m = len(ours.stages), len(theirs.stages)
            target = theirs.stages[round(i * (m - 1) / (n - 1)) if n > 1 else m - 1]
            if sub:
                for side, model, path in (("student", theirs.student.model, target.student.path + sub),
                                          ("teacher", theirs.teacher.model, target.teacher.path + sub)):
                    if path not in dict(model.named_modules()):
                        raise UserError(f"it taps {ps!r}, a layer inside a stage of its preset's "
                                        f"models, and the {side} has no {path!r}")
            return put(target, sub)
        if ps in dict(theirs.student.model.named_modules()) and pt in dict(theirs.teacher.model.named_modules()):
            return moved  # not a stage, but your models have layers of the same names: as written
        raise UserError(f"its distill point {ps!r} -> {pt!r} is not a stage end, the embedding or "
                        f"the logits of its preset's models, and your models have no layers of "
                        f"those names")


def method_config(method: str, user: dict[str, Any], placer: Placer) -> dict[str, Any]:
    """The config of ``method`` on the user's data and models (raw YAML data, seed unset).
    UserError: the method cannot run on them (its message is the reason shown in the table)."""
    data = copy.deepcopy(user)
    if method == "vanilla":
        data["algorithm"] = {"type": "vanilla"}
        data["teachers"] = []
        return data
    preset = read_yaml(find_preset(method, "--methods"))
    algorithm = preset.get("algorithm") or {}
    if algorithm.get("type", "teacher_student") != "teacher_student":
        return _algorithm_preset(method, preset, data)
    points = [p for t in preset.get("teachers") or [] for p in t.get("distill") or []]
    if not points:
        raise UserError("its preset has no distill points")
    if not user.get("teachers"):
        raise UserError("the config has no teachers to distill from")
    data["algorithm"] = copy.deepcopy(algorithm)
    for teacher in data["teachers"]:
        if _model_key(teacher) == _model_key(preset["teachers"][0]) and \
                _model_key(user["student"]) == _model_key(preset["student"]) and \
                user.get("data", {}).get("type") == preset.get("data", {}).get("type"):
            teacher["distill"] = copy.deepcopy(points)  # the preset's own models: as written
            continue
        placed, seen = [], set()
        for point in points:
            moved = placer.place(method, preset, point, teacher)
            key = (moved["student_module"], moved["teacher_module"], moved.get("student_io"), moved.get("teacher_io"))
            if key not in seen:  # fewer user stages than preset stages: one point each
                seen.add(key)
                placed.append(moved)
        teacher["distill"] = placed
    return data


def _algorithm_preset(method: str, preset: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """A method that is an algorithm of its own (BYOT, MEAL V2, data-free): its parameters name
    layers and teachers of its preset, so it runs only on the preset's own models."""
    kind = preset["algorithm"]["type"]
    if _model_key(data["student"]) != _model_key(preset["student"]):
        raise UserError(f"algorithm {kind} names layers of its preset's student "
                        f"({preset['student'].get('type')}); run it with kdcore run --preset {method}")
    data["algorithm"] = copy.deepcopy(preset["algorithm"])
    # a teacher the user's config also has (same model) is the user's block: its checkpoint or
    # training settings, so the cached teacher is shared with the other methods
    mine = {_model_key(t): t for t in data.get("teachers") or []}
    data["teachers"] = [{**copy.deepcopy(mine.get(_model_key(t), t)), "name": t.get("name", "teacher"),
                         "distill": copy.deepcopy(t.get("distill") or [])} for t in preset.get("teachers") or []]
    splits = (preset.get("data") or {}).get("splits")
    if splits is not None and "train" not in splits:
        # data-free: the run opens no training images (so no validation split and no labels
        # either); its teachers come trained, from the cache the other methods share
        if data["data"].get("type") != preset["data"].get("type"):
            raise UserError(f"algorithm {kind} reads only the {'/'.join(splits)} split of its preset's "
                            f"data ({preset['data'].get('type')}), not {data['data'].get('type')}; "
                            f"run it with kdcore run --preset {method}")
        data["data"].update(splits=list(splits), val_split=0, labelled=None, train_limit=None,
                            drop_unlabelled=False)
    return data


def trains_no_teacher(config: dict[str, Any]) -> bool:
    """A run that opens no training images cannot train its teachers: compare gives it the
    cached teachers (:meth:`Plan.teacher_checkpoints`)."""
    splits = (config.get("data") or {}).get("splits")
    return splits is not None and "train" not in splits and any(
        not t.get("checkpoint") for t in config.get("teachers") or [])


def set_tuned(data: dict[str, Any], method: str, key: str, value: Any) -> None:
    """Set ``key`` on every loss of the method that takes it, else on its algorithm block."""
    from kdcore.registry import accepted_params, lookup

    hits = 0
    for teacher in data.get("teachers") or []:
        for point in teacher.get("distill") or []:
            for loss in point.get("head", {}).get("losses") or []:
                names, _ = accepted_params(lookup("loss", loss["type"]).component.resolve())
                if key in loss or key in names:
                    loss[key] = value
                    hits += 1
    if not hits and isinstance(data.get("algorithm"), dict):
        names, _ = accepted_params(lookup("algorithm", data["algorithm"]["type"]).component.resolve())
        if key in data["algorithm"] or key in names:
            data["algorithm"][key] = value
            hits += 1
    if not hits:
        raise UserError(f"--tune {method}.{key}: no loss of method {method} (and not its algorithm) "
                        f"takes a parameter {key!r}")


def parse_tune(texts: list[str], methods: list[str]) -> list[Tuning]:
    out = []
    for text in texts:
        keys, value = parse_override(text)
        if len(keys) != 2 or value is None:
            raise UserError(f"--tune {text!r}: expected METHOD.PARAMETER=V1,V2,..., e.g. kd.temperature=1,2,4,8")
        values = value if isinstance(value, list) else [parse_override(f"x={v}")[1] for v in str(value).split(",")]
        if keys[0] not in methods:
            raise UserError(f"--tune {text}: method {keys[0]!r} is not in --methods ({','.join(methods)})")
        if len(values) < 2:
            raise UserError(f"--tune {text}: give two or more values to choose from, separated by commas")
        out.append(Tuning(keys[0], keys[1], values))
    return out


# --- the plan -------------------------------------------------------------------------------

class Plan:
    """Every run of a compare, each method's config (or why it is refused), and the folder."""

    def __init__(self, out: str, options: Options, log: Callable[[str], None]) -> None:
        self.out, self.options, self.log = out, options, log
        user = read_yaml(options.config)
        checked = load_config(copy.deepcopy(user), list(options.overrides))  # the user's own mistakes first
        self.user = unstructure(checked)
        self.methods = list(dict.fromkeys(options.methods))
        self.tunings = parse_tune(options.tune, self.methods)
        if self.tunings and not checked.data.val_split:
            raise UserError("--tune chooses on the validation split, and the config has none: "
                            "--set data.val_split=N (training images held out, e.g. 5000)")
        self.configs: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, str] = {}
        self._checkpoints: dict[str, list[str | None]] = {}
        placer = Placer(self.user)
        for method in self.methods:
            if method != "vanilla":
                find_preset(method, "--methods")  # an unknown method is the user's mistake, not a refusal
            try:
                self.configs[method] = method_config(method, self.user, placer)
            except UserError as exc:
                self.refused[method] = str(exc)
        for tuning in self.tunings:
            if tuning.method in self.configs:
                set_tuned(copy.deepcopy(self.configs[tuning.method]), tuning.method, tuning.key, tuning.values[0])
        self.vanilla_epochs = self._vanilla_epochs(checked) if "vanilla" in self.configs else None
        seeds = range(self.options.seeds)
        first = checked.seed
        self.tune_jobs = [Job(f"tune-{t.method}-{t.key}-{_label(v)}", t.method, first, {"key": t.key, "value": v})
                          for t in self.tunings if t.method in self.configs for v in t.values]
        self.jobs = [Job(f"{m}-s{first + s}", m, first + s) for m in self.methods if m in self.configs for s in seeds]

    def _vanilla_epochs(self, checked: Any) -> int | None:
        """With ``data.labelled``, vanilla trains on the labelled images alone for as many optimizer
        steps as the distillation runs (which see every image): the transfer-set protocol."""
        if checked.data.labelled is None:
            return None
        from kdcore.assemble import load_data

        splits = load_data(checked.data)
        batch = checked.data.batch_size
        epochs = self.options.epochs or checked.trainer.epochs
        steps = max(1, checked.data.labelled // batch)
        return max(1, round(epochs * (len(splits.train) // batch) / steps))

    def teacher_checkpoints(self, method: str) -> list[str | None]:
        """The checkpoint of each teacher of ``method`` when its runs cannot train them (data-free):
        each trained once on the user's data (the training images the other methods see) and
        cached, so it is the very teacher the other methods distil from."""
        if method not in self._checkpoints:
            from kdcore.assemble import build_model, load_data
            from kdcore.config import RunConfig, structure
            from kdcore.engine.run import pick_device
            from kdcore.engine.teachers import prepare_teachers

            teachers = self.configs[method]["teachers"]
            raw = {**copy.deepcopy(self.user), "teachers": [{**t, "distill": []} for t in teachers]}
            raw["trainer"] = {**raw.get("trainer", {}), "progress": False}
            config = structure(RunConfig, raw)
            todo = ", ".join(t.name for t in config.teachers if not t.checkpoint)
            self.log(f"{method}: its runs open no training images, so they get your cached teacher "
                     f"({todo}), trained now on your data if it is not cached yet")
            prepared = prepare_teachers(config, load_data(config.data), pick_device(config.trainer.device),
                                        lambda m: self.log(f"{method}: {m}"), build_model=build_model)
            self._checkpoints[method] = [prepared[t.name].checkpoint for t in config.teachers]
        return self._checkpoints[method]

    def config_for(self, job: Job, chosen: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(self.configs[job.method])
        if trains_no_teacher(data):
            for teacher, path in zip(data["teachers"], self.teacher_checkpoints(job.method)):
                teacher["checkpoint"] = path
        data["seed"] = job.seed
        trainer = data.setdefault("trainer", {})
        if self.options.epochs:
            trainer["epochs"] = self.options.epochs
        trainer["progress"] = False
        if self.options.teacher_cache and data.get("teachers") and data["algorithm"].get("type") == "teacher_student":
            trainer["teacher_cache"] = True
        if job.method == "vanilla" and self.vanilla_epochs:
            trainer["epochs"] = self.vanilla_epochs
            data.setdefault("data", {})["drop_unlabelled"] = True
        tuned = job.tune or chosen.get(job.method)
        if tuned:
            set_tuned(data, job.method, tuned["key"], tuned["value"])
        data["output_dir"] = os.path.join(self.out, "runs")
        data["name"] = job.tag
        return data

    def write_config(self, job: Job, chosen: dict[str, Any]) -> str:
        """Each run's config, written once (a resumed compare keeps what it planned)."""
        path = os.path.join(self.out, "configs", f"{job.tag}.yaml")
        if not os.path.exists(path):
            config = load_config(self.config_for(job, chosen))
            check_components(config)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_text_atomic(dump_yaml(config), path)
        return path


def _label(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{value:g}" if isinstance(value, float) else str(value))


# --- running --------------------------------------------------------------------------------

_STAMP = r"-\d{8}-\d{6}(-\d+)?$"


def run_dir_of(out: str, tag: str) -> str | None:
    """The newest run directory of ``tag`` under OUT/runs (names are TAG-YYYYmmdd-HHMMSS[-N])."""
    folder = os.path.join(out, "runs")
    if not os.path.isdir(folder):
        return None
    found = [os.path.join(folder, d) for d in os.listdir(folder) if re.match(re.escape(tag) + _STAMP, d)]
    done = [d for d in found if os.path.isfile(os.path.join(d, "summary.json"))]
    pick = done or [d for d in found if os.path.isfile(os.path.join(d, "config.yaml"))]
    return max(pick, key=os.path.getmtime) if pick else None


def is_done(out: str, tag: str) -> bool:
    found = run_dir_of(out, tag)
    return bool(found) and os.path.isfile(os.path.join(found, "summary.json"))


def threads_per_run(parallel: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // parallel)


class Runner:
    """K ``kdcore run`` subprocesses at a time; progress with runs done / total and an ETA."""

    def __init__(self, out: str, parallel: int, total: int, done: int, log: Callable[[str], None]) -> None:
        self.out, self.parallel, self.log = out, parallel, log
        self.threads = threads_per_run(parallel)
        self.total, self.done = total, done
        self.durations: list[float] = []
        self.started = time.time()

    def command(self, tag: str, config_path: str) -> list[str]:
        found = run_dir_of(self.out, tag)
        how = ["--resume", found] if found else ["--config", config_path]
        return [sys.executable, "-m", "kdcore", "run", *how, "--set", f"trainer.threads={self.threads}"]

    def run(self, jobs: list[tuple[Job, str]], describe: Callable[[Job], str]) -> None:
        """Run ``jobs`` (each with its config file), K at a time; ``describe`` says how a
        finished one did."""
        from kdcore.engine.run import sigterm_as_interrupt

        pending = list(jobs)
        running: dict[subprocess.Popen, tuple[Job, float, Any]] = {}
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        try:
            with sigterm_as_interrupt():
                while pending or running:
                    while pending and len(running) < self.parallel:
                        job, config_path = pending.pop(0)
                        cmd = self.command(job.tag, config_path)
                        os.makedirs(os.path.join(self.out, "logs"), exist_ok=True)
                        logf = open(os.path.join(self.out, "logs", f"{job.tag}.log"), "a", encoding="utf-8")
                        logf.write(f"$ {' '.join(cmd)}\n")
                        logf.flush()
                        verb = "resuming" if "--resume" in cmd else "starting"
                        self.log(f"{verb} {job.tag} ({self.threads} thread{'s' if self.threads > 1 else ''})")
                        running[subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)] = \
                            (job, time.time(), logf)
                    for proc in [p for p in running if p.poll() is not None]:
                        job, began, logf = running.pop(proc)
                        logf.close()
                        self.durations.append(time.time() - began)
                        self.done += 1
                        self.log(f"[{self.done}/{self.total}] {job.tag}: {describe(job)}"
                                 f"{self.eta(len(pending) + len(running))}")
                    time.sleep(0.2)
        except KeyboardInterrupt:
            for proc in running:  # each saves its state and exits (kdcore run turns SIGTERM into a stop)
                if proc.poll() is None:
                    proc.terminate()
            for proc, (_, _, logf) in running.items():
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                logf.close()
            raise

    def eta(self, left: int) -> str:
        if not left or not self.durations:
            return ""
        seconds = statistics.mean(self.durations) * math.ceil(left / self.parallel)
        return f"; about {seconds / 60:.0f} min left" if seconds >= 90 else f"; about {seconds:.0f} s left"


# --- results --------------------------------------------------------------------------------

def primary_metric(summary: dict[str, Any]) -> str:
    """The task's headline metric of a run: the summary's ``metric`` when it says, else the
    first known metric the student's scores hold."""
    key = summary.get("metric")
    if isinstance(key, str):
        return key
    student = summary.get("student", {})
    return next((k for k in KNOWN_METRICS if k in student), "top1")


def read_result(out: str, job: Job) -> dict[str, Any]:
    """One run's scores from its summary.json and metrics.jsonl (or why it has none)."""
    base = {"tag": job.tag, "method": job.method, "seed": job.seed, "tune": job.tune}
    run_dir = run_dir_of(out, job.tag)
    if not run_dir or not os.path.isfile(os.path.join(run_dir, "summary.json")):
        return {**base, "run_dir": run_dir, "error": _last_error(out, job.tag)}
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    metric = primary_metric(summary)
    rows = metrics_rows(os.path.join(run_dir, "metrics.jsonl"))
    model = "student" if rows and "student" in rows[0] else next(
        (k for k, v in (rows[0] if rows else {}).items() if isinstance(v, dict) and "test" in v), "student")
    test = [r[model]["test"].get(metric) for r in rows if model in r]
    val = [r[model]["val"].get(metric) for r in rows if model in r and "val" in r[model]]
    best = max(range(len(val)), key=lambda i: val[i]) if val else None
    return {**base, "run_dir": run_dir, "metric": metric, "final": summary["student"].get(metric),
            "test_curve": test, "val_curve": val, "best_val_epoch": None if best is None else best + 1,
            "best_val": None if best is None else val[best],
            "test_at_best_val": None if best is None else test[best],
            "seconds": summary.get("seconds"), "epochs": summary.get("epochs"),
            "params": summary["student"].get("params"), "teacher": summary.get("teacher"),
            "device": summary.get("device")}


def _last_error(out: str, tag: str) -> str:
    path = os.path.join(out, "logs", f"{tag}.log")
    if not os.path.isfile(path):
        return "not run"
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith(("kdcore: error:", "kdcore: stopped"))]
    return (errors or lines or ["no output"])[-1]


def _cell(text: str) -> str:
    """A reason as one table cell: one line, no column bars."""
    return " ".join(text.split()).replace("|", "/")


def mean_std(values: list[float]) -> str:
    """``mean ± std`` to two decimals (the mean alone for one value, "" for none)."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(plan: Plan, results: list[dict[str, Any]], chosen: dict[str, Any], wall: float) -> str:
    """The markdown report: one row per method, notes on tuning and refusals."""
    main = [r for r in results if not r.get("tune")]
    ok = [r for r in main if "metric" in r]
    metric = ok[0]["metric"] if ok else "score"
    opts = plan.options
    user = plan.user
    teachers = ", ".join(t.get("type", "?") for t in user.get("teachers") or []) or "none"
    epochs = opts.epochs or (user.get("trainer") or {}).get("epochs")
    shown = os.path.relpath(opts.config)
    shown = opts.config if shown.startswith("..") else shown
    lines = [f"Config: `{shown}`{' ' + ' '.join('--set ' + o for o in opts.overrides) if opts.overrides else ''}"
             f" (data {user['data']['type']}, student {user['student']['type']}, teacher {teachers}); "
             f"{opts.seeds} seed{'s' if opts.seeds != 1 else ''}, {epochs} epoch{'s' if epochs != 1 else ''}, "
             f"{opts.parallel} run{'s' if opts.parallel != 1 else ''} at a time; "
             f"{wall / 60:.1f} min wall.",
             "",
             f"| method | runs | test {metric}, last epoch | vs vanilla | test {metric} at best val epoch "
             f"| best val epoch | time / run (s) |",
             "|---|---|---|---|---|---|---|"]
    base = [r["final"] for r in ok if r["method"] == "vanilla"]
    for method in plan.methods:
        if method in plan.refused:
            lines.append(f"| {method} | 0 | refused: {_cell(plan.refused[method])} | | | | |")
            continue
        rs = [r for r in ok if r["method"] == method]
        failed = [r for r in main if r["method"] == method and "metric" not in r]
        name = method
        if method in chosen:
            name += f" ({chosen[method]['key']}={chosen[method]['value']}, tuned on val)"
        if not rs:
            why = failed[0]["error"] if failed else "not run"
            lines.append(f"| {name} | 0 | failed: {_cell(why)} | | | | |")
            continue
        finals = [r["final"] for r in rs]
        delta = (f"{statistics.mean(finals) - statistics.mean(base):+.2f}"
                 if base and method != "vanilla" else "")
        at_best = [r["test_at_best_val"] for r in rs if r["test_at_best_val"] is not None]
        best_epochs = ", ".join(str(r["best_val_epoch"]) for r in rs if r["best_val_epoch"])
        runs = f"{len(rs)}" + (f" ({len(failed)} failed)" if failed else "")
        lines.append(f"| {name} | {runs} | {mean_std(finals)} | {delta} | {mean_std(at_best) or 'no val split'} "
                     f"| {best_epochs} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
    lines.append("")
    lines.append("mean ± standard deviation over seeds; 'vs vanilla' compares the last-epoch means. "
                 "'at best val epoch' takes each run's epoch with the best validation score "
                 "(data.val_split; the test split chooses nothing).")
    if plan.vanilla_epochs:
        lines.append(f"vanilla trains on the data.labelled images alone for the same number of optimizer "
                     f"steps ({plan.vanilla_epochs} epochs).")
    for tuning in plan.tunings:
        scores = {r["tune"]["value"]: r.get("best_val") for r in results
                  if r.get("tune") and r["method"] == tuning.method and r["tune"]["key"] == tuning.key}
        shown = ", ".join(f"{v}: {s:.2f}" if s is not None else f"{v}: failed" for v, s in scores.items())
        lines.append(f"{tuning.method}.{tuning.key} tuned on the validation split only (seed "
                     f"{plan.jobs[0].seed if plan.jobs else 0}, best val {metric} per value): {shown}"
                     f"{'; chosen ' + str(chosen[tuning.method]['value']) if tuning.method in chosen else ''}.")
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], methods: list[str], path: str) -> None:
    """Test curves per method: the mean over seeds, a band of +- one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    metric = "score"
    for i, method in enumerate(methods):
        curves = [r["test_curve"] for r in results if r["method"] == method and not r.get("tune")
                  and r.get("test_curve")]
        if not curves:
            continue
        metric = next(r["metric"] for r in results if r.get("test_curve"))
        n = min(len(c) for c in curves)
        xs = [(i + 1) / n for i in range(n)]
        mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
        std = [statistics.stdev(c[i] for c in curves) if len(curves) > 1 else 0.0 for i in range(n)]
        # the colour cycle has 10 colours: methods 11-20 dashed, so no two curves look alike
        (line,) = ax.plot(xs, mean, label=f"{method} ({len(curves)})", linestyle=("-", "--", ":")[i // 10 % 3])
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.2)
    ax.set_xlabel("fraction of training (epochs / total)")
    ax.set_ylabel(f"test {metric}, mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the command ----------------------------------------------------------------------------

def compare(options: Options | None, out: str, *, resume: bool = False,
            parallel: int | None = None, log: Callable[[str], None] = print) -> str:
    """Run (or continue) a compare in ``out``; returns the table's markdown."""
    plan_path = os.path.join(out, PLAN)
    state: dict[str, Any] = {}
    if resume:
        if not os.path.isfile(plan_path):
            raise UserError(f"--resume {out}: no {PLAN} there; is it a kdcore compare folder?")
        with open(plan_path, encoding="utf-8") as f:
            state = json.load(f)
        options = Options(**state["options"])
        if parallel:
            options.parallel = parallel
    elif os.path.isfile(plan_path):
        raise UserError(f"--out {out} already holds a compare; continue it with --resume {out}, or pass another --out")
    assert options is not None
    if options.parallel < 1 or options.seeds < 1:
        raise UserError("--parallel and --seeds must be at least 1")
    plan = Plan(out, options, log)
    os.makedirs(out, exist_ok=True)
    state.setdefault("wall_seconds", 0.0)
    state["options"] = attrs.asdict(options)
    state["refused"] = plan.refused
    state["runs"] = [attrs.asdict(j) for j in plan.tune_jobs + plan.jobs]
    write_json_atomic(state, plan_path)
    for method, why in plan.refused.items():
        log(f"{method}: refused: {why}")
    everything = plan.tune_jobs + plan.jobs
    done = sum(is_done(out, j.tag) for j in everything)
    log(f"compare: {len(everything)} runs ({len(plan.configs)} methods x {options.seeds} seeds"
        f"{f', {len(plan.tune_jobs)} tuning' if plan.tune_jobs else ''}), {done} done already; "
        f"{options.parallel} at a time, {threads_per_run(options.parallel)} thread(s) each; folder {out}")
    runner = Runner(out, options.parallel, len(everything), done, log)
    chosen: dict[str, dict[str, Any]] = {}
    started = time.time()
    try:
        tuned_methods = {t.method for t in plan.tunings}
        first = [j for j in plan.tune_jobs + plan.jobs if j.method not in tuned_methods or j.tune]
        later = [j for j in plan.jobs if j.method in tuned_methods and not j.tune]
        for phase in (first, later):
            if phase is later:
                chosen = choose(plan, [read_result(out, j) for j in plan.tune_jobs])
            todo = [(j, plan.write_config(j, chosen)) for j in phase if not is_done(out, j.tag)]
            runner.run(todo, lambda job: describe(read_result(out, job)))
    finally:
        state["wall_seconds"] += time.time() - started
        write_json_atomic(state, plan_path)
    results = [read_result(out, j) for j in plan.tune_jobs + plan.jobs]
    report = table(plan, results, chosen, state["wall_seconds"])

    write_text_atomic(report, os.path.join(out, "table.md"))
    write_json_atomic({"options": state["options"], "refused": plan.refused, "chosen": chosen,
                       "runs": results}, os.path.join(out, "runs.json"))
    plot(results, plan.methods, os.path.join(out, "curves.png"))
    failed = [r["tag"] for r in results if "metric" not in r]
    if failed:
        log(f"{len(failed)} run(s) failed ({', '.join(failed[:4])}{', ...' if len(failed) > 4 else ''}): "
            f"see {os.path.join(out, 'logs')}; 'kdcore compare --resume {out}' retries them")
    return report


def describe(result: dict[str, Any]) -> str:
    """One finished run in a progress line."""
    if "metric" not in result:
        return f"failed: {result['error']}"
    score = f"test {result['metric']} {result['final']:.2f}"
    if result.get("best_val") is not None:
        score += f", best val {result['best_val']:.2f} (epoch {result['best_val_epoch']})"
    return f"{score}, {result['seconds']:.0f} s"


def choose(plan: Plan, results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each tuned method's value with the best validation score (never the test split)."""
    chosen = {}
    for tuning in plan.tunings:
        scored = [(r["best_val"], r["tune"]["value"]) for r in results
                  if r["method"] == tuning.method and r.get("best_val") is not None]
        if not scored:
            raise UserError(f"--tune {tuning.method}.{tuning.key}: every tuning run failed; see "
                            f"{os.path.join(plan.out, 'logs')}")
        chosen[tuning.method] = {"key": tuning.key, "value": max(scored, key=lambda x: x[0])[1]}
    return chosen


