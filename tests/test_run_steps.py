"""The run's steps around resuming: last.pt read once per resume, the advice for a damaged
student.pt of a finished run, every optimizer of an own-step algorithm saved and restored by
name, and the engine's import graph (no upward import into the assembly or the front ends)."""

from __future__ import annotations

import ast
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kdcore.engine.resume import CHECKPOINT, STUDENT_REMEDY, finished

from cli_runs import invoke_sets, only_run_dir, run_files, sets


def test_a_finished_runs_student_pt_with_python_objects_is_said_to_be_written_again(tmp_path) -> None:
    """student.pt is the run's own output: the advice is not to re-save it by hand."""
    (tmp_path / "summary.json").write_text(json.dumps({"epochs": 1}))
    torch.save({"w": torch.zeros(1), "when": datetime.date(2020, 1, 1)}, tmp_path / "student.pt")
    said: list[str] = []
    last = {"position": {"epoch": 1, "step_in_epoch": 0}}
    assert not finished(str(tmp_path), 1, last, said.append)
    (line,) = said
    assert line.startswith("the run is complete, but student.pt contains Python objects")
    assert STUDENT_REMEDY in line and "re-save" not in line and line.count(CHECKPOINT) == 1
    torch.save({"w": torch.full((1,), float("nan"))}, tmp_path / "student.pt")
    said.clear()
    assert not finished(str(tmp_path), 1, last, said.append)
    assert said == [f"the run is complete, but student.pt holds NaN/Inf (w); {STUDENT_REMEDY}"]
    torch.save({"w": torch.zeros(1)}, tmp_path / "student.pt")
    assert finished(str(tmp_path), 1, last, said.append) and len(said) == 1
    assert not finished(str(tmp_path), 1, None, said.append)  # no last.pt: not finished


@pytest.mark.fashion
def test_a_resume_reads_last_pt_once(tmp_path, monkeypatch) -> None:
    files = run_files(tmp_path / "files")
    args = sets(files, "trainer.epochs=1")
    values = [a for a in args if a != "--set"]
    assert invoke_sets(tmp_path, *values).exit_code == 0
    run_dir = only_run_dir(tmp_path / "runs")
    real, loads = torch.load, []

    def counting(path: Any, *a: Any, **k: Any) -> Any:
        if str(path).endswith(os.path.join("checkpoints", "last.pt")):
            loads.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(torch, "load", counting)
    from click.testing import CliRunner

    from kdcore.cli import main

    done = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert done.exit_code == 0 and "the run is complete" in done.output, done.output
    assert len(loads) == 1
    loads.clear()
    longer = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--set", "trainer.epochs=2"])
    assert longer.exit_code == 0 and "resumed at epoch 2" in longer.output, longer.output
    assert len(loads) == 1


# --- an algorithm that owns its step: every optimizer in last.pt by name ---------------------------

class TwoNets(torch.nn.Module):
    """A fake own-step algorithm: two networks, one optimizer each (or the engine's one)."""

    def __init__(self, own: bool = True) -> None:
        super().__init__()
        self.a, self.b, self.own = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2), own

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.parameters())

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": self.parameters()}]

    def optimizers(self, build: Any) -> dict[str, torch.optim.Optimizer] | None:
        if not self.own:
            return None
        return {"a": build([{"params": list(self.a.parameters())}]),
                "b": build([{"params": list(self.b.parameters())}])}


def built(own: bool, seed: int) -> tuple[TwoNets, dict[str, Any], dict[str, Any], bool]:
    """The algorithm, its optimizers and schedules as the run makes them, and whether they are
    its own (not the engine's one)."""
    from kdcore.config import load_config
    from kdcore.engine.loop import ENGINE_OPTIMIZER
    from kdcore.engine.run import make_optimizers

    torch.manual_seed(seed)
    algorithm = TwoNets(own)
    optimizers, schedulers = make_optimizers(algorithm, load_config({}, []), steps_per_epoch=4)
    return algorithm, optimizers, schedulers, ENGINE_OPTIMIZER not in optimizers


def test_two_named_optimizers_and_their_schedules_survive_last_pt(tmp_path) -> None:
    from kdcore.config import load_config
    from kdcore.engine.checkpoint import save_atomic
    from kdcore.engine.loop import TrainingState
    from kdcore.engine.resume import load_last, restore, run_state

    algorithm, optimizers, schedulers, own = built(True, seed=0)
    assert own and list(optimizers) == ["a", "b"] and set(schedulers) == {"a", "b"}
    for name, net, steps in (("a", algorithm.a, 1), ("b", algorithm.b, 3)):  # states that differ
        for _ in range(steps):
            optimizers[name].zero_grad()
            net(torch.ones(1, 3)).square().sum().backward()
            optimizers[name].step()
            schedulers[name].step()
    path = str(tmp_path / CHECKPOINT)  # read back as a resume reads it
    save_atomic(run_state(algorithm, optimizers, schedulers, None, TrainingState(global_step=3),
                          stages_done=True, checksums={}, metrics=[],
                          config=load_config({}, [])), path)
    state = load_last(str(tmp_path))
    assert set(state["optimizers"]) == set(state["schedulers"]) == {"a", "b"} and "optimizer" not in state

    fresh, again, schedules, _ = built(True, seed=1)
    position, _ = restore(path, fresh, again, schedules, {}, None, state=state)
    assert position.global_step == 3
    assert all(torch.equal(v, algorithm.state_dict()[k]) for k, v in fresh.state_dict().items())
    for name in ("a", "b"):
        assert schedules[name].last_epoch == schedulers[name].last_epoch
        assert again[name].param_groups[0]["lr"] == optimizers[name].param_groups[0]["lr"]
        mine, theirs = again[name].state_dict()["state"], optimizers[name].state_dict()["state"]
        assert mine.keys() == theirs.keys() and mine
        assert all(torch.equal(mine[i]["momentum_buffer"], theirs[i]["momentum_buffer"]) for i in mine)
    assert schedules["a"].last_epoch != schedules["b"].last_epoch

    # the engine's one optimizer is saved as every kdcore saved it, and a mismatch is named
    single, optimizer, schedule, own = built(False, seed=0)
    assert not own
    one = run_state(single, optimizer, schedule, None, TrainingState(), stages_done=True,
                    checksums={}, metrics=[], config=load_config({}, []))
    assert "optimizer" in one and "scheduler" in one and "optimizers" not in one
    restore(path, single, optimizer, schedule, {}, None, state=one)
    from kdcore.errors import UserError
    with pytest.raises(UserError, match="it holds the optimizers 'a', 'b', the algorithm now has the engine's one"):
        restore(path, single, optimizer, schedule, {}, None, state=state)


def test_optimizers_that_miss_a_parameter_are_refused() -> None:
    from kdcore.config import load_config
    from kdcore.engine.run import make_optimizers
    from kdcore.errors import UserError

    algorithm = TwoNets()
    algorithm.optimizers = lambda build: {"a": build([{"params": list(algorithm.a.parameters())}])}
    with pytest.raises(UserError, match=r"optimizers\(\) must hold every trainable parameter exactly "
                                        r"once \(missing \['b\.(weight|bias)', 'b\.(weight|bias)'\]"):
        make_optimizers(algorithm, load_config({}, []), steps_per_epoch=4)


@pytest.mark.fashion
def test_deep_mutual_learning_resumes_both_students_optimizers(tmp_path) -> None:
    pytest.importorskip("kdcore_plugin_dml")
    from click.testing import CliRunner

    from kdcore.cli import main
    from kdcore.engine.checkpoint import load_checkpoint

    files = run_files(tmp_path / "files")
    args = ["run", "--preset", "dml", "--output-dir", str(tmp_path / "runs")]
    for item in (f"data.root={files['root']}", "data.train_limit=256", "data.test_limit=256",
                 "data.batch_size=64", "trainer.epochs=1", "trainer.progress=false"):
        args += ["--set", item]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    run_dir = only_run_dir(tmp_path / "runs")
    state = load_checkpoint(str(run_dir / CHECKPOINT))
    assert set(state["optimizers"]) == {"student0", "student1"} and "optimizer" not in state
    longer = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--set", "trainer.epochs=2"])
    assert longer.exit_code == 0 and "resumed at epoch 2" in longer.output, longer.output
    again = load_checkpoint(str(run_dir / CHECKPOINT))
    assert {n: s["last_epoch"] for n, s in again["schedulers"].items()} == {"student0": 8, "student1": 8}


# --- the engine's import graph ---------------------------------------------------------------------

ENGINE = Path(__file__).resolve().parents[1] / "kdcore" / "engine"
#: the front ends and the assembly: they use the engine, never the other way round
ABOVE_THE_ENGINE = {"kdcore.assemble", "kdcore.cli", "kdcore.api"}


def imported(path: Path) -> set[str]:
    """Every module ``path`` (a module of kdcore.engine) imports, at module level or inside a
    function (a lazy import is a dependency too), as absolute names (``from .. import x``: both
    ``kdcore`` and ``kdcore.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(["kdcore", "engine"][: 3 - node.level] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_the_engine_imports_nothing_from_the_assembly_or_the_front_ends() -> None:
    """run.py is the one exception, for the assembly alone: it is where a run is put together
    (data, models, algorithm) and driven; every other engine module (teachers, loop, resume,
    checkpoints, ...) is given what it needs."""
    assert imported(ENGINE / "teachers.py") >= {"kdcore.data.splits", "kdcore.engine.checkpoint"}
    for path in sorted(ENGINE.glob("*.py")):
        allowed = {"kdcore.assemble"} if path.name == "run.py" else set()
        assert imported(path) & ABOVE_THE_ENGINE <= allowed, path.name
