"""Config loading: structure, defaults, overrides, and errors that name the exact key."""

from __future__ import annotations

import pytest

from kdcore.config import RunConfig, apply_override, dump_yaml, load_config, read_yaml, structure, unstructure
from kdcore.errors import UserError

PRESET = "kdcore/presets/teacher_student.yaml"


def preset() -> dict:
    import os

    return read_yaml(os.path.join(os.path.dirname(__file__), "..", PRESET))


def error_of(data: dict, overrides: list[str] = ()) -> str:
    with pytest.raises(UserError) as info:
        load_config(data, list(overrides))
    return str(info.value)


def test_preset_structures_with_flat_component_params() -> None:
    config = load_config(preset())
    loss = config.teachers[0].distill[0].head.losses[0]
    assert (loss.type, loss.weight, loss.params) == ("kd", 0.5, {"temperature": 4.0})
    assert config.student.type == "cnn_student" and config.student.params == {}


def test_round_trip_through_yaml_is_identity() -> None:
    import yaml

    config = load_config(preset())
    again = load_config(yaml.safe_load(dump_yaml(config)))
    assert unstructure(again) == unstructure(config)


def test_a_parameter_named_like_a_block_key_goes_under_params_and_round_trips() -> None:
    import yaml

    data = preset()
    data["data"]["params"] = {"augment": True, "root": "/data"}  # a data set's own "augment"
    data["teachers"][0]["distill"][0]["head"]["losses"][0]["params"] = {"weight": [1, 2]}
    config = load_config(data)
    loss = config.teachers[0].distill[0].head.losses[0]
    assert (loss.weight, loss.params) == (0.5, {"temperature": 4.0, "weight": [1, 2]})
    assert config.data.augment == [] and config.data.params["augment"] is True
    written = yaml.safe_load(dump_yaml(config))
    assert written["data"]["params"] == {"augment": True} and written["data"]["root"] == "/data"
    assert unstructure(load_config(written)) == unstructure(config)


def test_overrides_reach_nested_lists_and_parse_yaml_values() -> None:
    config = load_config(preset(), ["teachers.0.distill.0.head.losses.0.temperature=2",
                                    "trainer.epochs=3", "data.train_limit=null", "name=abc"])
    assert config.teachers[0].distill[0].head.losses[0].params["temperature"] == 2
    assert config.trainer.epochs == 3 and config.data.train_limit is None and config.name == "abc"


def test_misspelled_key_names_path_and_suggestion() -> None:
    message = error_of(preset(), ["trainer.epoch=3"])
    assert message.startswith("config key trainer.epoch: unknown key (did you mean 'epochs'?)")


def test_misspelled_nested_key_in_list_names_index() -> None:
    data = preset()
    data["teachers"][0]["distill"][0]["studnet_module"] = "stage1"
    assert "teachers[0].distill[0].studnet_module: unknown key (did you mean 'student_module'?)" in error_of(data)


def test_an_integer_beyond_any_float_is_not_a_number() -> None:
    assert error_of(preset(), ["optimizer.lr=" + "9" * 400]).startswith(
        "config key optimizer.lr: expected a finite number, got 999")


def test_wrong_type_and_bad_choice() -> None:
    assert error_of(preset(), ["trainer.epochs=many"]) == "config key trainer.epochs: expected an integer, got 'many'"
    assert "(did you mean 'cosine'?)" in error_of(preset(), ["schedule.type=cosin"])
    assert "expected true or false" in error_of(preset(), ["trainer.progress=3"])


def test_missing_required_key() -> None:
    data = preset()
    del data["teachers"][0]["distill"][0]["teacher_module"]
    assert error_of(data) == "config key teachers[0].distill[0].teacher_module: required, missing"


def test_override_errors() -> None:
    assert "expected KEY=VALUE" in error_of(preset(), ["trainer.epochs"])
    assert "out of range (the list has 1 item)" in error_of(preset(), ["teachers.4.name=x"])
    assert "use a number" in error_of(preset(), ["teachers.first.name=x"])


def test_semantic_checks() -> None:
    assert "must be at least 1" in error_of(preset(), ["data.batch_size=0"])
    # each field's rule holds wherever the field is, a teacher's own optimizer and schedule too
    assert error_of(preset(), ["teachers.0.train.optimizer.weight_decay=-1"]) == (
        "config key teachers[0].train.optimizer.weight_decay: must be >= 0, got -1.0")
    assert error_of(preset(), ["teachers.0.train.schedule.warmup_epochs=-2"]) == (
        "config key teachers[0].train.schedule.warmup_epochs: must be >= 0, got -2.0")
    assert error_of(preset(), ["trainer.threads=-1"]) == (
        "config key trainer.threads: must be >= 0 (0 or null: one per physical core), got -1")
    data = preset()
    data["teachers"].append(dict(data["teachers"][0]))
    assert "teachers[1].name: 'teacher' is used by teachers[0] too" in error_of(data)


def test_read_yaml_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_yaml(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(UserError, match=r"bad.yaml: .* at line \d+"):
        read_yaml(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="top level must be a mapping"):
        read_yaml(str(listy))


def test_numbers_with_an_exponent_are_numbers(tmp_path) -> None:
    """YAML 1.2 reads 1e-3 as a number; PyYAML's 1.1 rules read it as text (seen in an audit:
    'optimizer.lr: expected a number, got '1e-3'')."""
    path = tmp_path / "sci.yaml"
    path.write_text("optimizer: {type: sgd, lr: 1e-3, weight_decay: 5E-4}\ntrainer: {grad_clip: +2e0}\n")
    config = load_config(read_yaml(str(path)), ["schedule.gamma=1e-1"])
    assert (config.optimizer.lr, config.optimizer.weight_decay) == (0.001, 0.0005)
    assert (config.trainer.grad_clip, config.schedule.gamma) == (2.0, 0.1)
    assert load_config({}, ["name=1e3x"]).name == "1e3x"  # text that is not a number stays text


def test_a_key_written_twice_is_an_error_naming_both_lines(tmp_path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("trainer: {epochs: 1, progress: false}\ntrainer: {epochs: 2}\n")
    with pytest.raises(UserError) as err:
        read_yaml(str(path))
    assert str(err.value) == (f"config file {path}: key 'trainer' appears twice (first at line 1); "
                              f"merge the two into one at line 2, column 1")
    merged = tmp_path / "merge.yaml"  # a YAML merge key may be overridden: not a duplicate
    merged.write_text("base: &b {epochs: 1, progress: false}\ntrainer: {<<: *b, epochs: 2}\n")
    assert read_yaml(str(merged))["trainer"] == {"epochs": 2, "progress": False}
    nested = tmp_path / "nested.yaml"  # an anchored mapping that merges, merged again later
    nested.write_text("base: &sgd {type: sgd, lr: 0.1}\n"
                      "teachers: [{type: cnn_teacher, train: {optimizer: &slow {<<: *sgd, lr: 0.05}}}]\n"
                      "optimizer: {<<: *slow, weight_decay: 0.0}\n")
    assert read_yaml(str(nested))["optimizer"] == {"type": "sgd", "lr": 0.05, "weight_decay": 0.0}


def test_a_key_written_twice_in_a_set_value_is_named() -> None:
    with pytest.raises(UserError, match=r"^--set 'trainer=\{epochs: 1, epochs: 2\}': key 'epochs' appears twice"):
        load_config({}, ["trainer={epochs: 1, epochs: 2}"])


def test_saved_config_reads_back_as_it_was() -> None:
    """Text that now reads as a number (a run named 2e5) is written quoted, so --resume works."""
    from kdcore.config import load_yaml

    config = load_config({"name": "2e5", "optimizer": {"lr": 1e-4}}, [])
    again = load_config(load_yaml(dump_yaml(config)), [])
    assert (again.name, again.optimizer.lr) == ("2e5", 1e-4)


def test_defaults_without_any_keys() -> None:
    config = structure(RunConfig, {})
    assert config.algorithm.type == "teacher_student" and config.teachers == []


def test_apply_override_creates_missing_mappings() -> None:
    data: dict = {}
    apply_override(data, "trainer.threads=2")
    assert data == {"trainer": {"threads": 2}}


def test_a_field_type_structure_does_not_cover_is_the_one_line_error() -> None:
    """A plugin's config class may declare a type the YAML scalars do not cover: its value is
    refused with the key path (a UserError), not a KeyError from inside structure."""
    import attrs

    @attrs.define
    class Odd:
        raw: bytes = b""

    with pytest.raises(UserError, match=r"config key raw: expected .*, got 'x'"):
        structure(Odd, {"raw": "x"})
