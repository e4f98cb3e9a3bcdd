"""``kdcore export RUN_DIR``: the distilled student as a file to deploy, checked against PyTorch.

TorchScript (``torch.jit.trace``) or ONNX (torch's exporter; the ``onnx`` package, ``pip install
'kdcore-plugin-export[onnx]'``). For the built-in image data sets the input normalisation is folded in: the
exported model takes images scaled to [0, 1] (``pixel / 255``), ``(N, C, H, W)`` float32, and
normalises them itself as the data set did for training. Before the file is kept, its outputs on
real test images are compared with the PyTorch student's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from kdcore.errors import UserError

FORMATS = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}


def normalisation(data_type: str) -> tuple[Sequence[float], Sequence[float]] | None:
    """``(mean, std)`` per channel of a built-in data set that scales pixels to [0, 1] and then
    standardises them; ``None`` for others (their inputs are exported as they are)."""
    from kdcore.data.fashion_mnist import FASHION_MNIST_STATS, MNIST_STATS
    from kdcore.data.torchvision_sets import CIFAR10_STATS, CIFAR100_STATS

    stats = {"fashion_mnist": FASHION_MNIST_STATS, "mnist": MNIST_STATS,
             "cifar10": CIFAR10_STATS, "cifar100": CIFAR100_STATS}.get(data_type.split(":")[-1])
    if stats is None:
        return None
    mean, std = stats
    as_list = (lambda v: list(v) if isinstance(v, (tuple, list)) else [v])  # noqa: E731
    return as_list(mean), as_list(std)


class Normalised(nn.Module):
    """``model((x - mean) / std)``: the data set's normalisation in front of the student."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _write(path: str, save: Callable[[str], None]) -> None:
    """``save(tmp)`` then rename: a failed export leaves no half file under ``path``. The
    temporary name is the checkpoint writer's (``.kdcore-tmp-<pid>-<hex>.tmp``), so a resume
    of the run cleans one left by a kill the same way."""
    from kdcore.engine.checkpoint import TEMP_PREFIX
    from kdcore.files import temp_file

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = temp_file(folder, prefix=TEMP_PREFIX, suffix=".tmp")
    os.close(fd)  # torch.jit.save and torch.onnx.export write by path
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _torchscript(model: nn.Module, example: torch.Tensor, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    import warnings

    with warnings.catch_warnings():  # torch.jit's deprecation notice: the format still loads
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example)
        _write(path, lambda tmp: torch.jit.save(traced, tmp))
        loaded = torch.jit.load(path)
    return lambda x: loaded(x)


def _onnx(model: nn.Module, example: torch.Tensor, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnx
    except ImportError:
        raise UserError("--format onnx needs the onnx package: pip install "
                        "'kdcore-plugin-export[onnx]' (or pip install onnx)") from None
    import warnings

    def save(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), tmp, dynamo=False, input_names=["input"],
                              output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        onnx.checker.check_model(tmp)

    _write(path, save)
    try:  # the fast runtime when installed, else the onnx package's reference evaluator
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(onnx.load(path))
        return lambda x: torch.from_numpy(evaluator.run(None, {"input": x.numpy()})[0])


def export_model(model: nn.Module, inputs: torch.Tensor, fmt: str, path: str, *,
                 atol: float = 1e-4, rtol: float = 1e-4) -> dict[str, Any]:
    """Export ``model`` (in eval mode, on the CPU) to ``path`` and check that the file's outputs
    on ``inputs`` match the model's within ``atol + rtol * |expected|``; a file that does not
    is removed. Returns ``{file, bytes, params, samples, max_abs_diff}``."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    model = model.cpu().eval()
    inputs = inputs.float().cpu()
    with torch.no_grad():
        expected = model(inputs)
        if not torch.is_tensor(expected):
            raise UserError(f"the student returns a {type(expected).__name__}, not one tensor; "
                            f"only single-output models are exported")
        run = (_torchscript if fmt == "torchscript" else _onnx)(model, inputs[:2], path)
        got = run(inputs)
    same_shape = got.shape == expected.shape
    diff = float((got - expected).abs().max()) if same_shape else float("inf")
    if not (same_shape and torch.allclose(got, expected, atol=atol, rtol=rtol)):
        os.remove(path)
        raise UserError(f"the {fmt} export's outputs differ from the PyTorch student's on "
                        f"{len(inputs)} test inputs (largest difference {diff:.3g}, allowed "
                        f"{atol:g} + {rtol:g} * |output|); {path} was not kept")
    return {"file": path, "bytes": os.path.getsize(path), "samples": len(inputs), "max_abs_diff": diff,
            "params": sum(p.numel() for p in model.parameters())}


def export_run(run_dir: str, fmt: str, out: str | None = None, *, samples: int = 256,
               fold: bool = True, atol: float = 1e-4, rtol: float = 1e-4) -> dict[str, Any]:
    """Export the student of ``run_dir`` (``student.pt`` on the model ``student.type`` builds)."""
    from kdcore.finished_run import first_test_samples, load_run_student

    config, splits, model = load_run_student(run_dir)
    inputs, _ = first_test_samples(splits.test, samples)
    if len(inputs) == 0:
        raise UserError(f"{run_dir}: its data set has no test inputs to check the export on")
    stats = normalisation(config.data.type) if fold else None
    if stats is not None:  # the file takes [0, 1] images; the check feeds it those
        model = Normalised(model, *stats)
        inputs = inputs * model.std + model.mean
    path = out or os.path.join(run_dir, "student" + FORMATS.get(fmt, ""))
    result = export_model(model, inputs, fmt, path, atol=atol, rtol=rtol)
    result["normalisation"] = ({"mean": stats[0], "std": stats[1]} if stats is not None else None)
    result["input_shape"] = list(splits.source.input_shape)
    return result
