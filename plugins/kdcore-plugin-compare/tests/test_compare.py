"""kdcore compare: presets adapted to the user's models (or refused with the reason), tuning on
the validation split only, the table for any task's headline metric, and an interrupted compare
resumed end to end without rerunning finished runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from importlib import resources

import pytest
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.config import load_config, read_yaml, unstructure
from kdcore.errors import UserError
from kdcore_plugin_compare.compare import (Job, Options, Placer, Plan, method_config, read_result, table,
                                           trains_no_teacher)

DEFAULT = str(resources.files("kdcore") / "presets" / "teacher_student.yaml")


def user_config(*overrides: str) -> dict:
    return unstructure(load_config(read_yaml(DEFAULT), list(overrides)))


def points(config: dict) -> list[tuple[str, str, str]]:
    return [(p["student_module"], p["teacher_module"], p["head"]["losses"][0]["type"])
            for t in config["teachers"] for p in t["distill"]]


def test_vanilla_is_the_student_alone() -> None:
    config = method_config("vanilla", user_config(), Placer(user_config()))
    assert config["algorithm"] == {"type": "vanilla"} and config["teachers"] == []
    assert config["student"]["type"] == "cnn_student"


def test_the_presets_own_models_take_its_points_as_written() -> None:
    user = user_config()
    config = method_config("at", user, Placer(user))
    assert points(config) == [("stage1", "stage1", "at"), ("stage2", "stage2", "at"), ("stage3", "stage3", "at")]
    assert config["algorithm"]["student_loss_weight"] == 1.0  # the method's own loss mix
    assert config["teachers"][0]["train"] == user["teachers"][0]["train"]  # the user's teacher


def test_an_algorithm_preset_shares_the_users_teacher() -> None:
    """MEAL V2 keeps its algorithm and its second teacher; its first teacher is the user's
    block (same model), so the cached teacher is the other methods'."""
    user = user_config("teachers.0.train.epochs=1", "teachers.0.train.train_limit=256")
    config = method_config("meal", user, Placer(user))
    assert config["algorithm"]["type"] == "meal_v2"
    assert [t["type"] for t in config["teachers"]] == ["cnn_teacher", "cnn"]
    assert config["teachers"][0]["train"]["train_limit"] == 256 and config["teachers"][0]["train"]["epochs"] == 1


def test_data_free_opens_no_training_images_and_only_its_presets_data() -> None:
    user = user_config("data.val_split=5000", "data.labelled=2000", "data.train_limit=1000")
    config = method_config("datafree", user, Placer(user))
    assert config["algorithm"]["type"] == "data_free" and trains_no_teacher(config)
    assert {k: config["data"][k] for k in ("splits", "val_split", "labelled", "train_limit")} == \
        {"splits": ["test"], "val_split": 0, "labelled": None, "train_limit": None}
    assert config["teachers"][0]["train"] == user["teachers"][0]["train"]  # the user's teacher
    user["data"]["type"] = "cifar10"
    with pytest.raises(UserError, match="reads only the test split of its preset's data .fashion_mnist., not cifar10"):
        method_config("datafree", user, Placer(user))


@pytest.mark.fashion
def test_data_free_runs_get_the_teacher_the_other_methods_distil_from(tmp_path, monkeypatch) -> None:
    """compare trains the user's teacher into the cache once (or finds it there) and gives the
    data-free runs that checkpoint: the one a kd run of the same compare loads."""
    from kdcore.assemble import load_data
    from kdcore.engine.teachers import teacher_key

    cache = tmp_path / "cache"
    monkeypatch.setenv("KDCORE_CACHE_DIR", str(cache))
    sets = ["data.val_split=200", "data.labelled=100", "data.test_limit=64",
            "teachers.0.train.epochs=1", "teachers.0.train.train_limit=256"]
    logs: list[str] = []
    options = Options(config=DEFAULT, methods=["kd", "datafree"], seeds=1, overrides=sets)
    plan = Plan(str(tmp_path / "cmp"), options, logs.append)
    assert plan.refused == {}
    config = plan.config_for(Job("datafree-s0", "datafree", 0), {})
    kd = load_config(plan.config_for(Job("kd-s0", "kd", 0), {}))
    path = config["teachers"][0]["checkpoint"]
    assert path == str(cache / "teachers" / f"cnn_teacher-{teacher_key(kd.teachers[0], kd, load_data(kd.data))}.pt")
    assert os.path.isfile(path) and any("training cnn_teacher for 1 epochs on 256 images" in m for m in logs)
    splits = load_data(load_config(config).data)  # a valid run config that opens no training image
    assert len(splits.train) == 0 and splits.val is None and len(splits.test) == 64
    stamp, logs[:] = os.path.getmtime(path), []
    again = Plan(str(tmp_path / "cmp"), options, logs.append).config_for(Job("datafree-s1", "datafree", 1), {})
    assert again["teachers"][0]["checkpoint"] == path and os.path.getmtime(path) == stamp
    assert any("using cached checkpoint" in m for m in logs) and not any("training cnn_teacher" in m for m in logs)


@pytest.mark.fashion
def test_feature_methods_move_to_the_users_stages_or_are_refused() -> None:
    user = user_config("student.type=resnet8")  # stages layer1..3 at 28, 14, 7 pixels
    placer = Placer(user)
    assert points(method_config("kd", user, placer)) == [("output", "output", "kd")]
    assert points(method_config("at", user, placer)) == [("layer2", "stage1", "at"), ("layer3", "stage3", "at")]
    assert points(method_config("rkd", user, placer)) == [("embedding", "embedding", "rkd")]
    fitnet = method_config("fitnet", user, placer)  # the preset's middle stage; its connector kept
    assert points(fitnet) == [("layer2", "stage1", "fitnet")]
    assert fitnet["teachers"][0]["distill"][0]["head"]["student_connector"]["type"] == "conv_reg"
    with pytest.raises(UserError, match="taps 'stage1.bn', a layer inside a stage .* no 'layer2.bn'"):
        method_config("ofd", user, placer)
    with pytest.raises(UserError, match="names layers of its preset's student"):
        method_config("byot", user, placer)


@pytest.mark.fashion
def test_an_adapted_method_builds(tmp_path) -> None:
    """The moved points pass the run's own assembly check (paths, connectors, shapes)."""
    from kdcore.assemble import load_data
    from kdcore.engine.run import check_assembly

    user = user_config("student.type=cnn", "student.widths=[4,8,16]", "student.depth=2",
                       "data.train_limit=64", "data.test_limit=64")
    placer = Placer(user)
    for method in ("ofd", "at", "ft"):
        config = load_config(method_config(method, user, placer))
        check_assembly(config, load_data(config.data))


def test_plan_errors_name_the_option() -> None:
    def plan(**kw) -> Plan:
        options = Options(config=DEFAULT, **{"methods": ["vanilla", "kd"], "seeds": 1, **kw})
        return Plan("/nonexistent", options, lambda m: None)

    with pytest.raises(UserError, match="--methods: unknown preset 'kdd'"):
        plan(methods=["vanilla", "kdd"])
    with pytest.raises(UserError, match="--tune chooses on the validation split.*data.val_split"):
        plan(tune=["kd.temperature=1,4"])
    with pytest.raises(UserError, match="no loss of method kd .* takes a parameter 'temprature'"):
        plan(tune=["kd.temprature=1,4"], overrides=["data.val_split=100"])
    with pytest.raises(UserError, match="method 'dkd' is not in --methods"):
        plan(tune=["dkd.beta=1,8"], overrides=["data.val_split=100"])
    tuned = plan(tune=["kd.temperature=1,4"], overrides=["data.val_split=100"])
    assert [j.tag for j in tuned.tune_jobs] == ["tune-kd-temperature-1", "tune-kd-temperature-4"]
    assert all(j.seed == 0 for j in tuned.tune_jobs)


def fake_run(folder, tag: str, metric: str, test: list[float], val: list[float], seconds: float) -> None:
    run_dir = folder / "runs" / f"{tag}-20260101-000000"
    run_dir.mkdir(parents=True)
    scores = {"student": {metric: test[-1], "params": 10}, "seconds": seconds, "epochs": len(test),
              "metric": metric}
    (run_dir / "summary.json").write_text(json.dumps(scores))
    (run_dir / "config.yaml").write_text("{}")
    rows = [{"epoch": i + 1, "student": {"test": {metric: t}, "val": {metric: v}}}
            for i, (t, v) in enumerate(zip(test, val))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_table_reports_the_tasks_headline_metric(tmp_path) -> None:
    """A segmentation run's summary names miou: the table is in miou, the best-val column picks
    the test score at the epoch of the best validation score, not the best test score."""
    plan = Plan(str(tmp_path), Options(config=DEFAULT, methods=["vanilla", "kd"], seeds=2), lambda m: None)
    fake_run(tmp_path, "vanilla-s0", "miou", [40.0, 50.0], [45.0, 44.0], 10)
    fake_run(tmp_path, "vanilla-s1", "miou", [42.0, 52.0], [40.0, 47.0], 12)
    fake_run(tmp_path, "kd-s0", "miou", [55.0, 60.0], [50.0, 55.0], 20)
    results = [read_result(str(tmp_path), j) for j in plan.jobs]
    assert results[0]["test_at_best_val"] == 40.0 and results[0]["best_val_epoch"] == 1
    text = table(plan, results, {}, 60.0)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "test miou, last epoch" in rows["method"]
    assert "| 2 | 51.00 ± 1.41 |  | 46.00 ± 8.49 | 1, 2 | 11 |" in rows["vanilla"]
    assert "| 1 (1 failed) | 60.00 | +9.00 | 60.00 | 2 | 20 |" in rows["kd"]


def test_a_refusal_is_one_table_cell() -> None:
    plan = Plan("/nonexistent", Options(config=DEFAULT, methods=["vanilla", "kd"], seeds=1), lambda m: None)
    plan.refused["kd"] = "its point a|b\n  is  not here"
    rows = [line for line in table(plan, [], {}, 1.0).splitlines() if line.startswith("| kd ")]
    assert rows == ["| kd | 0 | refused: its point a/b is not here | | | | |"]


def poll(condition, timeout: float = 240) -> None:
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            raise AssertionError("timed out waiting for the compare")
        time.sleep(0.1)


def dirs(out: str, tag: str) -> list[str]:
    return sorted(d for d in os.listdir(os.path.join(out, "runs")) if d.startswith(tag + "-2"))


@pytest.mark.fashion
@pytest.mark.e2e
def test_compare_end_to_end_with_interrupt_and_resume(tmp_path) -> None:
    out = str(tmp_path / "cmp")
    sets = ["data.train_limit=256", "data.test_limit=128", "data.val_split=200", "data.batch_size=64",
            "trainer.epochs=3", "teachers.0.train.epochs=1", "teachers.0.train.train_limit=256"]
    cmd = [sys.executable, "-m", "kdcore", "compare", "--config", "teacher_student", "--methods", "vanilla,kd",
           "--seeds", "2", "--out", out, *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "KDCORE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)

    def summary(tag: str) -> str | None:
        found = dirs(out, tag) if os.path.isdir(os.path.join(out, "runs")) else []
        path = os.path.join(out, "runs", found[0], "summary.json") if found else ""
        return path if os.path.isfile(path) else None

    def second_started() -> bool:
        found = dirs(out, "vanilla-s1") if os.path.isdir(os.path.join(out, "runs")) else []
        metrics = os.path.join(out, "runs", found[0], "metrics.jsonl") if found else ""
        return bool(summary("vanilla-s0")) and os.path.isfile(metrics) and os.path.getsize(metrics) > 0

    poll(lambda: second_started() or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)  # vanilla-s1 is one epoch into three: stopped mid-run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert f"continue with: kdcore compare --resume {out}" in err
    finished = summary("vanilla-s0")
    stamp = os.path.getmtime(finished)
    interrupted = dirs(out, "vanilla-s1")
    assert len(interrupted) == 1 and summary("vanilla-s1") is None

    # --parallel may change on resume (two runs at a time, one thread each)
    resumed = CliRunner().invoke(main, ["compare", "--resume", out, "--parallel", "2"], env=env,
                                 catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    # the finished run is not redone; the interrupted one continues in its own directory
    assert os.path.getmtime(finished) == stamp and len(dirs(out, "vanilla-s0")) == 1
    assert dirs(out, "vanilla-s1") == interrupted and summary("vanilla-s1")
    log = open(os.path.join(out, "logs", "vanilla-s1.log")).read()
    assert f"--resume {os.path.join(out, 'runs', interrupted[0])}" in log
    assert open(os.path.join(out, "logs", "vanilla-s0.log")).read().count("$ ") == 1

    table_md = open(os.path.join(out, "table.md")).read()
    rows = [line for line in table_md.splitlines() if line.startswith("| vanilla") or line.startswith("| kd")]
    assert len(rows) == 2 and all(" | 2 | " in row for row in rows), table_md
    assert "test top1, last epoch" in table_md and table_md in resumed.output
    runs = json.load(open(os.path.join(out, "runs.json")))["runs"]
    assert sorted(r["tag"] for r in runs) == ["kd-s0", "kd-s1", "vanilla-s0", "vanilla-s1"]
    for r in runs:
        assert len(r["test_curve"]) == 3 and len(r["val_curve"]) == 3 and r["metric"] == "top1"
        assert r["final"] == r["test_curve"][-1] and os.path.isdir(r["run_dir"])
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(main, ["compare", "--config", "teacher_student", "--out", out])
    assert again.exit_code == 2 and f"continue it with --resume {out}" in again.output

