"""The CLI end to end on a slice of Fashion-MNIST, and its error contract (exit 2, one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from kdcore.cli import main

from cli_runs import error_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def run_cli(*args: str) -> "object":
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.fashion
@pytest.mark.e2e
def test_default_job_distills_and_writes_summary(tmp_path, tiny) -> None:
    result = run_cli("run", "--algo", "teacher_student", "--output-dir", str(tmp_path), *sets(*tiny))
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("run dir: ")
    run_dir = lines[-1][len("run dir: "):]
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0 <= summary["student"]["top1"] <= 100 and 0 <= summary["teacher"]["top1"] <= 100
    assert summary["student"]["params"] < summary["teacher"]["params"]
    rows = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert len(rows) == 1 and {"task", "kd", "loss"} <= set(rows[0]["train"])
    student = torch.load(os.path.join(run_dir, "student.pt"), weights_only=True)
    assert "fc.weight" in student and not any(k.startswith("distiller") for k in student)
    assert os.path.exists(os.path.join(run_dir, "config.yaml"))
    assert "teacher top1:" in result.output and "student top1:" in result.output

    # the teacher is cached: a second run reuses it and scores it identically
    again = run_cli("run", "--output-dir", str(tmp_path), *sets(*tiny))
    assert "using cached checkpoint" in again.output
    summary2 = json.load(open(os.path.join(again.output.strip().splitlines()[-1][9:], "summary.json")))
    assert summary2["teacher"]["top1"] == summary["teacher"]["top1"]
    assert summary2["teacher"]["sha256"] == summary["teacher"]["sha256"]


@pytest.mark.fashion
def test_vanilla_has_no_teacher(tmp_path, tiny) -> None:
    result = run_cli("run", "--algo", "vanilla", "--output-dir", str(tmp_path), *sets(*(s for s in tiny if not s.startswith("teachers."))))
    assert result.exit_code == 0, result.output
    summary = json.load(open(os.path.join(result.output.strip().splitlines()[-1][9:], "summary.json")))
    assert "teacher" not in summary and summary["algo"] == "vanilla"


@pytest.mark.parametrize("args, expected", [
    (["run", "--set", "trainer.epoch=2"], "config key trainer.epoch: unknown key (did you mean 'epochs'?)"),
    (["run", "--algo", "teacher_studnet"], "unknown algorithm 'teacher_studnet' (did you mean 'teacher_student'"),
    (["run", "--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist"),
    (["run", "--set", "teachers.0.distill.0.student_module=stage9"], "teachers[0].distill[0].student_module 'stage9' does not exist in SmallCNN"),
    (["run", "--set", "teachers.0.checkpoint=/missing/teacher.pt"], "teachers[0].checkpoint /missing/teacher.pt does not exist"),
    (["run", "--set", "teachers.0.distill.0.head.losses.0.temprature=3"], "losses[0].temprature: unknown key (did you mean 'temperature'?)"),
    (["run", "--set", "data.root=/nowhere"], "apt-get install dataset-fashion-mnist"),
    (["run", "--set", "teachers.0.distil.0.student_module=x"], "teachers[0].distil: unknown key (did you mean 'distill'?); keys of this block: checkpoint, distill,"),
    (["run", "--set", "data.trian_limit=5"], "data.trian_limit: unknown key (did you mean 'train_limit'?)"),
    (["run", "--set", "algorithm.task=1"], "algorithm.task: kdcore passes this value itself"),
    (["run", "--set", "data.type=mnist"], "data.root: required, missing"),
    (["run", "--set", "student.type=torchvision", "--set", "student.arch=alexnet"], "student: AlexNet cannot take this data's 1x28x28 inputs"),
    (["run", "--set", "trainer.checkpoint_every=-3"], "trainer.checkpoint_every: must be >= 0, got -3"),
    (["run", "--set", "teachers.0.distill.0.head.losses.0.type=cosine_feature"], "a plugin's loss needs its package installed"),
    (["run", "--set", "data.type=cifar10", "--set", "data.params.augment=true"], "data.augment: unknown key (did you mean 'sample_augment'?)"),
    (["list", "conector"], "unknown component kind 'conector' (did you mean 'connector'?)"),
    (["frobnicate"], "no command 'frobnicate'"),
    (["run", "--epochs", "3"], "no option '--epochs'; it is the config key trainer.epochs: --set trainer.epochs=VALUE"),
    (["plugins", "--jsn"], "No such option '--jsn'. Did you mean '--json'? (see 'kdcore plugins --help')"),
    (["list"], "Missing argument 'KIND' (see 'kdcore list --help')"),
    (["run", "--set", "optimizer.momentum=2"], "optimizer.momentum: must be in [0, 1), got 2.0"),
    (["run", "--set", "teachers.0.train.epochs=0"], "teachers[0].train.epochs: must be at least 1 when teachers[0].checkpoint is null"),
    (["run", "--set", "teachers.0.distill.0.head.losses.0.temperature=abc"],
     "kdcore: error: teachers[0].distill[0].head.losses[0].temperature: expected a number, got 'abc'"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, args, expected) -> None:
    result = CliRunner().invoke(main, args + (["--output-dir", str(tmp_path)] if args[0] == "run" else []))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert lines[-1].startswith("kdcore: error: ") and expected in lines[-1], lines
    assert not os.listdir(tmp_path) if os.path.isdir(tmp_path) else True  # no empty run dir left


def test_a_component_typo_is_one_line_before_any_data_or_run_dir(tmp_path) -> None:
    """Checked as --print-config checks it, before the data is read or a run dir is made (and
    removed again, with a line of its own)."""
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "--set", "distiller.type=nosuch", "--output-dir", str(out)])
    line = error_line(result, 2)
    assert "distiller: unknown distiller 'nosuch'" in line
    assert [l for l in result.output.splitlines() if l.strip()] == [line]
    assert not out.exists()


def test_usage_errors_are_one_line_too() -> None:
    """click's own errors (unknown option, missing argument) in kdcore's one-line form."""
    result = CliRunner().invoke(main, ["run", "--bogus"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "kdcore: error: No such option '--bogus' (see 'kdcore run --help')"]


def test_click_keeps_its_own_suggestions_and_bare_kdcore_shows_help() -> None:
    result = CliRunner().invoke(main, ["run", "--output_dir", "x"])
    assert "Did you mean '--output-dir'?" in result.output  # not "it is the config key output_dir"
    listing = CliRunner().invoke(main, ["list", "--epochs", "3"])  # list takes no --set
    assert "--set" not in listing.output
    bare = CliRunner().invoke(main, [])
    assert bare.output.startswith("Usage: kdcore [OPTIONS] COMMAND") and "kdcore: error" not in bare.output


def test_a_run_dir_taken_meanwhile_gets_the_next_suffix(tmp_path, monkeypatch) -> None:
    from kdcore.config import load_config
    from kdcore.engine import run as run_module

    config = load_config({"output_dir": str(tmp_path), "name": "x"}, [])
    monkeypatch.setattr(run_module.time, "strftime", lambda _: "stamp")
    (tmp_path / "x-stamp").symlink_to(tmp_path / "nowhere")  # exists() is False, makedirs fails
    assert run_module.new_run_dir(config) == str(tmp_path / "x-stamp-2")


def test_output_dir_that_is_a_file_is_a_user_error(tmp_path, tiny) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    sets = [arg for kv in tiny for arg in ("--set", kv)]
    result = CliRunner().invoke(main, ["run", *sets, "--output-dir", str(afile)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"kdcore: error: config key output_dir: {afile} is a file or lies under one; pass another "
        f"folder (--output-dir DIR)")


@pytest.mark.parametrize("extra", [["--output-dir", "elsewhere"], ["--name", "other"]])
def test_resume_refuses_options_it_would_ignore(tmp_path, extra) -> None:
    from kdcore.config import RunConfig, dump_yaml

    (tmp_path / "config.yaml").write_text(dump_yaml(RunConfig()))
    result = CliRunner().invoke(main, ["run", "--resume", str(tmp_path), *extra])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == (f"kdcore: error: --resume continues in {tmp_path} itself; "
                                     f"drop --output-dir and --name")


@pytest.mark.fashion
def test_shape_mismatch_names_both_shapes_and_the_connector(tmp_path, tiny) -> None:
    result = CliRunner().invoke(main, ["run", "--output-dir", str(tmp_path), *sets(
        *tiny, "teachers.0.distill.0.student_module=stage3", "teachers.0.distill.0.teacher_module=stage3",
        "teachers.0.distill.0.head.losses.0.type=kd")])
    assert result.exit_code == 2
    assert "student feature is (32, 7, 7) and the teacher feature is (96, 7, 7)" in result.output
    assert "add a student_connector" in result.output


def test_list_and_plugins_show_builtins_and_kd() -> None:
    listed = run_cli("list", "loss")
    assert "kdcore:kd" in listed.output and "pip install kdcore-plugin-NAME" in listed.output
    assert run_cli("list", "losses").stdout == listed.stdout  # a kind by its plural too
    assert run_cli("list", "models").stdout == run_cli("list", "model").stdout
    rows = json.loads(run_cli("plugins", "--json").output)
    names = {r["name"]: r for r in rows}
    assert names["kdcore"]["components"]["algorithm"] == ["teacher_student", "vanilla"]
    assert names["kd"]["distribution"] == "kdcore-plugin-kd" and names["kd"]["state"] == "ok"


def test_console_script_is_installed() -> None:
    out = subprocess.run([sys.executable, "-m", "kdcore", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "version" in out.stdout


def test_print_config_shows_every_key_resolved_and_runs_nothing(tmp_path) -> None:
    import yaml

    from kdcore.config import load_config

    result = CliRunner().invoke(main, ["run", "--print-config", "--output-dir", str(tmp_path),
                                       "--set", "trainer.epochs=3", "--teacher-cache"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["trainer"]["epochs"] == 3 and printed["trainer"]["teacher_cache"] is True
    assert printed["trainer"]["teacher_fold_bn"] is True  # defaults are spelt out
    assert printed["teachers"][0]["distill"][0]["head"]["losses"][0]["type"] == "kd"
    assert load_config(printed, []) is not None  # it is a config kdcore reads back
    assert not any(tmp_path.iterdir())  # no run directory

