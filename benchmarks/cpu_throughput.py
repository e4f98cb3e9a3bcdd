"""Training throughput on CPU: the classic per-sample pipeline against kdcore's default path.

Both arms run in this one process, alternating (classic, kdcore, classic, kdcore, ...), on the
Hinton-KD default job (``cnn_teacher`` -> ``cnn_student``, batch 128), with the same initial
weights, the same images in the same order and the same number of steps:

* **classic**: ``torchvision.datasets.FashionMNIST`` (per-sample ``PIL.Image`` + ``ToTensor`` +
  ``Normalize``) in a ``DataLoader``, torch's default thread count, and a hand-written KD loop
  (the one of ``overhead.py``). torchvision's class wants its own folder layout
  (``<root>/FashionMNIST/raw/*-ubyte``, uncompressed), so the Debian files are decompressed into
  a temporary folder once, before timing.
* **kdcore**: what ``kdcore run`` does: the split decoded once into a normalised in-memory
  tensor (``TensorSplit``), batches by indexing it (``TrainBatches``), ``tune_cpu`` threads, the
  built algorithm stepped by ``train_epochs`` (progress bar off, as in the classic arm).

Reported per arm: images per second (wall clock), CPU milliseconds per step (this process and its
DataLoader workers; insensitive to waiting for a core on a shared machine), and minor page faults
per step (``getrusage``). Both arms share the process's allocator (glibc malloc defaults): kdcore
sets no allocator options today; options that must be set before start-up (``MALLOC_*``
variables, a preloaded allocator) cannot differ between the arms of one process.

Usage::

    python benchmarks/cpu_throughput.py --steps 200 --repeats 3 --json throughput.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import torch
from torch.utils.data import DataLoader

from kdcore.assemble import load_data
from kdcore.config import load_config, read_yaml
from kdcore.data.fashion_mnist import FASHION_MNIST_ROOT, FASHION_MNIST_STATS
from kdcore.engine.batches import epoch_order
from kdcore.engine.cpu import tune_cpu

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import HandLoop, KdcoreSetup, log, machine_info

GOAL = 2.0
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def torchvision_layout(source_root: str, tmp: str) -> str:
    """Decompress the four IDX files into ``tmp/FashionMNIST/raw``; return ``tmp``."""
    raw = os.path.join(tmp, "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name in RAW_FILES:
        gz, plain = os.path.join(source_root, name + ".gz"), os.path.join(source_root, name)
        with (gzip.open(gz, "rb") if os.path.exists(gz) else open(plain, "rb")) as src, \
                open(os.path.join(raw, name), "wb") as dst:
            shutil.copyfileobj(src, dst)
    return tmp


def classic_dataset(root: str) -> Any:
    from torchvision import datasets, transforms  # the classic arm's own dependency

    mean, std = FASHION_MNIST_STATS
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    return datasets.FashionMNIST(root, train=True, transform=transform, download=False)


def index_stream(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """The batches' sample indices in kdcore's order (per-epoch permutation, last batch dropped)."""
    per_epoch = n // batch_size
    epoch = 0
    while True:
        order = epoch_order(n, seed, epoch)[: per_epoch * batch_size]
        for chunk in order.split(batch_size):
            yield chunk.tolist()
        epoch += 1


def usage() -> tuple[float, int, int]:
    """(CPU seconds, minor faults, major faults) of this process and its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
            me.ru_minflt + kids.ru_minflt, me.ru_majflt + kids.ru_majflt)


def run_arm(arm: Callable[[int], None], steps: int, images: int) -> dict[str, float]:
    """Run ``steps`` steps of ``arm``; its throughput, CPU time and page faults."""
    cpu0, minor0, major0 = usage()
    t0 = time.perf_counter()
    arm(steps)
    wall = time.perf_counter() - t0
    cpu1, minor1, major1 = usage()
    return {"images_per_s": images / wall, "wall_s": wall, "cpu_ms_per_step": 1e3 * (cpu1 - cpu0) / steps,
            "minor_faults_per_step": (minor1 - minor0) / steps, "major_faults_per_step": (major1 - major0) / steps}


def summarize(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]} | {"runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, alternating")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per arm first")
    parser.add_argument("--workers", type=int, default=0,
                        help="classic DataLoader workers (0, DataLoader's default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for BOTH arms (default: torch's default for "
                             "classic, tune_cpu's choice for kdcore)")
    parser.add_argument("--root", default=FASHION_MNIST_ROOT, help="folder of the IDX files")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT")
    args = parser.parse_args(argv)

    default_threads = torch.get_num_threads()
    classic_threads = args.threads or default_threads
    device = torch.device("cpu")
    preset = str(resources.files("kdcore") / "presets" / "teacher_student.yaml")
    config = load_config(read_yaml(preset), [f"data.root={args.root}"])
    splits = load_data(config.data)
    kd = KdcoreSetup(config, splits, device)
    hand = HandLoop("kd", kd)
    bs = kd.batches.batch_size
    tmp = tempfile.mkdtemp(prefix="kdcore-bench-")
    try:
        dataset = classic_dataset(torchvision_layout(args.root, tmp))
        indices = index_stream(len(dataset), bs, config.seed)

        # the two pipelines must produce the same batches
        first = next(kd.batches.epoch(0))
        classic_first = torch.stack([dataset[i][0] for i in first.indices.tolist()])
        diff = float((classic_first - first.inputs).abs().max())
        if diff > 1e-4 or not torch.equal(torch.tensor([dataset[i][1] for i in first.indices.tolist()]),
                                          first.targets):
            raise SystemExit(f"classic and kdcore batches differ (max input diff {diff})")

        def classic(steps: int) -> None:
            torch.set_num_threads(classic_threads)
            order = [i for _ in range(steps) for i in next(indices)]
            loader = DataLoader(dataset, batch_size=bs, sampler=order, num_workers=args.workers)
            for x, y in loader:
                hand.step(x, y)

        def kdcore_default(steps: int) -> None:
            tune_cpu(args.threads)
            kd.block(steps, lambda: None)

        arms = {"classic": classic, "kdcore": kdcore_default}
        for fn in arms.values():
            fn(args.warmup)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
        for r in range(args.repeats):
            for name, fn in arms.items():
                runs[name].append(run_arm(fn, args.steps, args.steps * bs))
                log(f"repeat {r + 1}/{args.repeats} {name}: {runs[name][-1]['images_per_s']:.0f} img/s")
        kdcore_threads = tune_cpu(args.threads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        kd.algorithm.remove_taps()

    # what a teacher-output cache could save at most: the teacher's forward per batch
    teacher = next(iter(kd.algorithm.distiller.teachers.values()))
    x = first.inputs
    with torch.no_grad():
        times = []
        for _ in range(11):
            t0 = time.process_time()
            teacher(x)
            times.append(time.process_time() - t0)
    teacher_ms = 1e3 * statistics.median(times[1:])

    result = {name: summarize(rs) for name, rs in runs.items()}
    ratio = result["kdcore"]["images_per_s"] / result["classic"]["images_per_s"]
    pair = [k["images_per_s"] / c["images_per_s"] for k, c in zip(runs["kdcore"], runs["classic"])]
    cpu_ratio = result["classic"]["cpu_ms_per_step"] / result["kdcore"]["cpu_ms_per_step"]
    info = machine_info(device) | {"classic_threads": classic_threads, "kdcore_threads": kdcore_threads,
                                   "workers": args.workers, "batch_size": bs, "steps": args.steps,
                                   "repeats": args.repeats}
    print(f"CPU throughput, Hinton KD cnn_teacher -> cnn_student, batch {bs}, {args.steps} steps x "
          f"{args.repeats} alternating runs; threads classic {classic_threads} / kdcore {kdcore_threads}, "
          f"{args.workers} DataLoader workers; torch {info['torch']}; load {info['loadavg'][0]:.1f}\n")
    print("| pipeline | images/s (median) | CPU ms/step | minor faults/step | vs classic (img/s) | "
          f"vs classic (CPU/step) | goal >= {GOAL}x |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    c, k = result["classic"], result["kdcore"]
    print(f"| classic (torchvision PIL + DataLoader, hand KD loop) | {c['images_per_s']:.0f} | "
          f"{c['cpu_ms_per_step']:.1f} | {c['minor_faults_per_step']:.1f} | 1.00x | 1.00x | |")
    print(f"| kdcore default (TensorSplit + TrainBatches + tune_cpu) | {k['images_per_s']:.0f} | "
          f"{k['cpu_ms_per_step']:.1f} | {k['minor_faults_per_step']:.1f} | {ratio:.2f}x | {cpu_ratio:.2f}x | "
          f"{'met' if ratio >= GOAL else 'NOT met'} |")
    print("| kdcore + teacher-output cache | TODO | TODO | TODO | TODO | TODO | TODO: no teacher-output "
          "cache in kdcore yet |")
    print(f"\nper-run ratios (kdcore / classic img/s): {', '.join(f'{p:.2f}' for p in pair)}")
    print(f"teacher forward alone: {teacher_ms:.1f} CPU ms per batch of {bs} "
          f"({100 * teacher_ms / k['cpu_ms_per_step']:.0f}% of a kdcore step; the most a teacher-output "
          f"cache can remove); batch parity: max input diff {diff:.1e}")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "goal": GOAL, "ratio": ratio, "ratio_runs": pair,
                       "cpu_ratio": cpu_ratio, "teacher_forward_cpu_ms": teacher_ms,
                       "batch_max_input_diff": diff, **result}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
