"""Forward time of a frozen teacher as trained, and after kdcore's inference rewrites.

For each model of the zoo: the median time of ``model(x)`` under ``torch.no_grad()`` in eval
mode, (a) as trained (contiguous), (b) in channels_last, (c) channels_last with BatchNorms folded
into their convolutions (``kdcore.engine.frozen``), all on the same input, alternating, in one
process. Also the largest output difference to (a), so the speed is known to cost nothing.

Usage::

    python benchmarks/teacher_inference.py --device cpu --json teacher_inference.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from kdcore.components.distiller import freeze
from kdcore.engine.cpu import tune_cpu
from kdcore.engine.frozen import fold_batchnorm
from kdcore.models.cifar_resnet import resnet20, resnet32x4
from kdcore.models.cnn import cnn_teacher
from kdcore.models.torchvision_models import torchvision_model
from kdcore.models.wide_resnet import wrn_40_2

MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "cnn_teacher (default)": (cnn_teacher, (128, 1, 28, 28)),
    "resnet20": (lambda: resnet20(num_classes=100), (64, 3, 32, 32)),
    "wrn_40_2": (lambda: wrn_40_2(num_classes=100), (64, 3, 32, 32)),
    "resnet32x4": (lambda: resnet32x4(num_classes=100), (64, 3, 32, 32)),
    "torchvision resnet18": (lambda: torchvision_model("resnet18", num_classes=10), (16, 3, 224, 224)),
}


def trained_like(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give the BatchNorms non-trivial statistics (a few train-mode passes), then freeze."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    return freeze(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15, help="timed forwards per variant")
    parser.add_argument("--threads", type=int, default=None, help="default: kdcore's tune_cpu choice")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    threads = tune_cpu(args.threads) if device.type == "cpu" else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    print(f"teacher forward, {device}, threads {threads or torch.get_num_threads()}, torch {torch.__version__}\n")
    print("| model | batch | as trained ms | channels_last ms | + BN folded ms | speed-up | max abs diff |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.models.split(","):
        factory, shape = MODELS[name]
        torch.manual_seed(0)
        x = torch.randn(*shape, device=device)
        base = trained_like(factory().to(device), x)
        layout = copy.deepcopy(base).to(memory_format=torch.channels_last)
        folded = copy.deepcopy(base)
        fold_batchnorm(folded)
        folded.to(memory_format=torch.channels_last)
        variants = {"as trained": base, "channels_last": layout, "folded": folded}
        times: dict[str, list[float]] = {k: [] for k in variants}
        with torch.no_grad():
            reference = base(x)
            diff = max(float((m(x) - reference).abs().max()) for m in variants.values())
            for model in variants.values():  # warm-up
                model(x)
            for _ in range(args.repeats):
                for key, model in variants.items():
                    sync()
                    t0 = time.perf_counter()
                    model(x)
                    sync()
                    times[key].append(1e3 * (time.perf_counter() - t0))
        ms = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"model": name, "batch": shape[0], "ms": ms, "max_abs_diff": diff,
                     "speedup": ms["as trained"] / ms["folded"]})
        print(f"| {name} | {shape[0]} | {ms['as trained']:.1f} | {ms['channels_last']:.1f} | "
              f"{ms['folded']:.1f} | {ms['as trained'] / ms['folded']:.2f}x | {diff:.1e} |", flush=True)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"device": str(device), "threads": threads, "torch": torch.__version__, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
