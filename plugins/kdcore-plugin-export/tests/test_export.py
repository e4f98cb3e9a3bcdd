"""kdcore export: TorchScript and ONNX files that compute what the PyTorch student computes, on
raw [0, 1] images (the data set's normalisation folded in), and safetensors weights."""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from cli_runs import error_line
from torch import nn

from kdcore.cli import main
from kdcore.errors import UserError
from kdcore.plugins import Plugins
from kdcore.testing import using_plugins
from kdcore_plugin_export.export import export_model

QUICK = ["data.train_limit=128", "data.test_limit=128", "trainer.epochs=1", "data.batch_size=64",
         "trainer.progress=false", "trainer.threads=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(main, ["run", "--algo", "vanilla", "--output-dir", str(out),
                                       *[a for i in QUICK for a in ("--set", i)]], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return Path(result.output.strip().splitlines()[-1][len("run dir: "):])


def student_and_raw_images(run_dir: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The PyTorch student, 64 raw test images in [0, 1] and the same images normalised."""
    import kdcore
    from kdcore.data.fashion_mnist import FASHION_MNIST_STATS, fashion_mnist

    student = kdcore.build("model", "cnn_student", context={"num_classes": 10, "in_channels": 1}).eval()
    student.load_state_dict(torch.load(run_dir / "student.pt", weights_only=True))
    normalised = fashion_mnist().test.inputs[-64:]  # not among the 128 the export was checked on
    mean, std = FASHION_MNIST_STATS
    return student, normalised * std + mean, normalised


@pytest.mark.fashion
def test_torchscript_takes_raw_images_and_matches_the_student(run_dir) -> None:
    result = CliRunner().invoke(main, ["export", str(run_dir)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    path = run_dir / "student.torchscript.pt"
    size = path.stat().st_size / 1e6
    assert lines[0] == f"wrote {path} ({size:.2f} MB), 6,274 parameters"
    assert "images in [0, 1] (pixel / 255)" in lines[1] and "mean [0.286], std [0.353]" in lines[1]
    assert lines[2].startswith("checked: outputs match the PyTorch student on 128 test inputs")
    student, raw, normalised = student_and_raw_images(run_dir)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(path))(raw), student(normalised), atol=1e-5)


@pytest.mark.fashion
def test_onnx_runs_in_onnx_and_matches_the_student(run_dir, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    out = tmp_path / "deploy" / "net.onnx"
    result = CliRunner().invoke(main, ["export", str(run_dir), "--format", "onnx", "--out", str(out),
                                       "--samples", "32"])
    assert result.exit_code == 0, result.output
    assert "on 32 test inputs" in result.output
    student, raw, normalised = student_and_raw_images(run_dir)
    got = ReferenceEvaluator(onnx.load(str(out))).run(None, {"input": raw.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), student(normalised), atol=1e-5)


@pytest.mark.fashion
def test_safetensors_weights_are_written_next_to_student_pt(run_dir) -> None:
    from safetensors.torch import load_file

    weights = load_file(run_dir / "student.safetensors")
    state = torch.load(run_dir / "student.pt", weights_only=True)
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], v) for k, v in state.items())


class Branchy(nn.Module):
    """Data-dependent control flow: tracing records one branch, so the export is wrong on the
    other; the check must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * 2 if x.mean() > 0 else x.flatten(1) * 3


def test_an_export_that_computes_something_else_is_refused_and_removed(tmp_path) -> None:
    inputs = torch.cat([torch.ones(2, 1, 2, 2), -torch.ones(2, 1, 2, 2) * 5])  # traced on the first 2
    path = tmp_path / "branchy.pt"
    with pytest.raises(UserError, match="outputs differ from the PyTorch student's on 4 test inputs"):
        export_model(Branchy(), inputs, "torchscript", str(path))
    assert not path.exists()


def test_onnx_without_the_package_says_what_to_install(tmp_path, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx":
            raise ImportError("no onnx")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(UserError, match=r"needs the onnx package: pip install 'kdcore-plugin-export\[onnx\]'"):
        export_model(nn.Flatten(), torch.zeros(2, 1, 2, 2), "onnx", str(tmp_path / "x.onnx"))


@pytest.mark.parametrize("setup, expected", [
    (lambda d: None, "no config.yaml there"),
    (lambda d: (d / "config.yaml").write_text("student: {type: cnn_student}\n"), "student.pt does not exist"),
])
def test_a_folder_that_is_not_a_finished_run_is_one_line(tmp_path, setup, expected) -> None:
    setup(tmp_path)
    result = CliRunner().invoke(main, ["export", str(tmp_path)])
    assert result.exit_code == 2 and expected in result.output, result.output


def test_a_failed_export_leaves_no_file_and_uses_the_checkpoint_temp_names(tmp_path, monkeypatch) -> None:
    """The temporary file has the name a resume cleans up (engine.checkpoint.TEMP_NAME)."""
    from kdcore.engine.checkpoint import TEMP_NAME

    seen = []

    def broken_save(obj, path, *args, **kwargs):
        seen.append(path)
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_model(nn.Flatten(), torch.zeros(2, 1, 2, 2), "torchscript", str(tmp_path / "net.pt"))
    assert len(seen) == 1 and TEMP_NAME.search(Path(seen[0]).name), seen
    assert Path(seen[0]).parent == tmp_path and list(tmp_path.iterdir()) == []


def export_without_the_plugin(plugins: Plugins) -> str:
    """``kdcore export x`` with ``plugins`` loaded: its one output line, exit code 2."""
    with using_plugins(plugins):
        result = CliRunner().invoke(main, ["export", "x"])
    assert len(result.output.strip().splitlines()) == 1, result.output
    return error_line(result, 2)


def test_without_the_plugin_kdcore_export_is_one_line_naming_it(monkeypatch) -> None:
    """Left out by ``KDCORE_PLUGINS`` (installing it would not help), or not installed."""
    monkeypatch.setenv("KDCORE_PLUGINS", "")
    assert export_without_the_plugin(Plugins()) == (
        "kdcore: error: no command 'export'; it comes from plugin 'export' (kdcore-plugin-export), "
        "which KDCORE_PLUGINS='' leaves out; see 'kdcore --help'")
    monkeypatch.delenv("KDCORE_PLUGINS")
    line = export_without_the_plugin(Plugins(load_entry_points=False))  # only kdcore installed
    assert line.startswith("kdcore: error: no command 'export'; it is provided by kdcore-plugin-export: "
                           "pip install kdcore-plugin-export (in this checkout: pip install -e "), line
    assert line.endswith("plugins/kdcore-plugin-export); see 'kdcore --help'"), line
