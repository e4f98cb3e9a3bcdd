"""Helpers the end-to-end test modules share: a small Fashion-MNIST root, ``--set`` lists for
seconds-long runs, in-process ``kdcore`` calls with test-only plugins, and reading what a run
printed. One copy, so a change to the CLI's output is mended in one place."""

from __future__ import annotations

import gzip
import os
import struct
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.data.fashion_mnist import FASHION_MNIST_ROOT, FILES
from kdcore.data.idx import read_idx
from kdcore.models.cnn import cnn_teacher
from kdcore.models.imported import use_import_paths
from kdcore.plugins import Plugins
from kdcore.testing import using_plugins


def write_idx(path: Path, array: torch.Tensor, compress: bool = True) -> bytes:
    """An IDX file of unsigned bytes (MNIST layout), gzip-compressed unless told; returns the
    bytes written."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.to(torch.uint8).numpy().tobytes()
    data = gzip.compress(raw, mtime=0) if compress else raw
    path.write_bytes(data)
    return data


def small_fashion(folder: Path, n: dict[str, int]) -> Path:
    """The first images of each Fashion-MNIST split as a data.root: decoding 60k images costs
    more than these tiny runs."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in n.items():
        for stem in FILES[split]:
            write_idx(folder / (stem + ".gz"), read_idx(os.path.join(FASHION_MNIST_ROOT, stem + ".gz"))[:count])
    return folder


def run_files(folder: Path) -> dict[str, Path]:
    """A 256+256-image data root and a randomly initialised teacher checkpoint, so no test
    trains a teacher unless it says so."""
    root = small_fashion(folder / "fashion", {"train": 256, "test": 256})
    torch.manual_seed(0)
    teacher = folder / "teacher.pt"
    torch.save(cnn_teacher().state_dict(), teacher)
    return {"root": root, "teacher": teacher, "folder": folder}


def sets(files: dict[str, Path], *extra: str) -> list[str]:
    """``--set`` arguments of a 2-epoch run on :func:`run_files` (4 steps an epoch)."""
    items = [f"data.root={files['root']}", "data.train_limit=256", "data.test_limit=256",
             "data.batch_size=64", "trainer.epochs=2", "trainer.progress=false", "trainer.threads=1",
             f"teachers.0.checkpoint={files['teacher']}", *extra]
    return [a for s in items for a in ("--set", s)]


def losses(*extra: str) -> str:
    """The default distill point's losses: KD plus ``extra`` (YAML flow mappings)."""
    return ("teachers.0.distill.0.head.losses=[{type: kd, weight: 0.5, temperature: 4.0}"
            + "".join(f", {e}" for e in extra) + "]")


def invoke_with(plugin: types.ModuleType, name: str, cli_args: list[str]) -> Any:
    """``kdcore CLI_ARGS`` in-process, with the installed plugins plus ``plugin`` (a test
    module's hook implementations) registered as ``name``."""
    loaded = Plugins()
    loaded.register(plugin, name)
    with using_plugins(loaded):
        return CliRunner().invoke(main, cli_args)


def invoke_sets(tmp_path: Path, *items: str) -> Any:
    """``kdcore run --output-dir TMP/runs --set ITEM ...`` in-process, installed plugins only."""
    args = ["run", "--output-dir", str(tmp_path / "runs")]
    for item in items:
        args += ["--set", item]
    return CliRunner().invoke(main, args)


def error_line(result: Any, code: int) -> str:
    """The one-line error of a failed command (and no traceback)."""
    assert result.exit_code == code, (result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("kdcore: error: "), lines
    return lines[-1]


def only_run_dir(output_dir: Path) -> Path:
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run_dir


def run_dir_of(output: str) -> str:
    """The run directory a run printed (``run dir: PATH``)."""
    return next(line[len("run dir: "):] for line in output.splitlines() if line.startswith("run dir: "))


@contextmanager
def own_imports(*packages: str) -> Iterator[None]:
    """A test's throw-away ``type: import`` packages (``mypkg``), imported from its own folder and
    forgotten after. A process runs one command, so ``type: import`` keeps the run's
    ``import_paths``, the folders it put on ``sys.path`` and the modules it imported; in one pytest
    process the next test's ``mypkg`` would be the last test's, or be searched for in its folder."""
    def forget() -> None:
        for name in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[name]
        use_import_paths([])

    path = list(sys.path)
    forget()
    try:
        yield
    finally:
        forget()
        sys.path[:] = path
