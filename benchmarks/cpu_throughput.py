"""Training throughput on the CPU: the classic per-sample pipeline against kdcore's default path.

Every run is a fresh Python process, so each arm gets the process set-up it would have on its
own (allocator, threads). Runs alternate (classic, kdcore, kdcore + cache, classic, ...) on the
Hinton-KD default job (``cnn_teacher`` -> ``cnn_student``, batch 128), with the same initial
weights, the same images in the same order and the same number of steps:

* **classic**: ``torchvision.datasets.FashionMNIST`` (per-sample ``PIL.Image`` + ``ToTensor`` +
  ``Normalize``) in a ``DataLoader``, torch's default thread count, glibc's default allocator
  settings, and a hand-written KD loop (the one of ``overhead.py``; the teacher as trained,
  under ``no_grad``; ``torch.optim.SGD`` with its default implementation). torchvision's class wants its own folder layout
  (``<root>/FashionMNIST/raw/*-ubyte``, uncompressed), so the Debian files are decompressed
  into a temporary folder once, before timing.
* **kdcore**: what ``kdcore run`` does: ``tune_cpu`` (threads = physical cores unless
  ``OMP_NUM_THREADS`` is set, glibc ``mallopt``) first, the split decoded once into a normalised in-memory tensor
  (``TensorSplit``), batches by indexing it (``TrainBatches``), ``speed_up``'s rewrites (the
  teacher's layout and folded BatchNorms, kdcore's CPU max pooling), the built algorithm stepped by
  ``train_epochs`` (progress bar off, as in the classic arm).
* **kdcore + cache**: the same with ``trainer.teacher_cache: true``: the teacher's logits are
  read from the memory-mapped cache by sample index. The first such run fills the cache (one
  teacher pass over the split, timed and reported apart); later runs read it.

Reported per arm: images per second (wall clock, median over runs), CPU milliseconds per step
(process and DataLoader workers, ``getrusage``; insensitive to waiting for a core on a shared
machine) and minor page faults per step. Before timing, every run computes its loss on its
first batch without stepping; the parent checks that the arms saw the same batch (inputs
equal) and computed the same loss (float tolerance), so they do the same work.

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
import subprocess
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
from kdcore.engine.teachers import Teacher, weights_checksum
from kdcore_plugin_teacher_cache.teacher_cache import attach_teacher_cache  # kdcore-plugin-teacher-cache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import HandLoop, KdcoreSetup, log, machine_info

GOALS = {"kdcore": 2.0, "kdcore+cache": 4.0}
ARMS = ("classic", "kdcore", "kdcore+cache")
LABELS = {"classic": "classic (torchvision PIL + DataLoader, hand KD loop)",
          "kdcore": "kdcore default (in-memory split, tune_cpu, frozen-teacher rewrites)",
          "kdcore+cache": "kdcore + `trainer.teacher_cache: true`"}
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


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    numbers = [key for key, value in runs[0].items() if isinstance(value, float)]
    return {key: statistics.median(r[key] for r in runs) for key in numbers} | {"runs": runs}


# --- one run, in its own process ------------------------------------------------------------

def one_run(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    """Set ``arm`` up as it would be on its own, check its first batch, time ``args.steps`` steps."""
    device = torch.device("cpu")
    threads = args.threads
    if arm == "classic":
        if threads:
            torch.set_num_threads(threads)
    else:
        threads = tune_cpu(threads)  # first thing, as kdcore run does
    preset = str(resources.files("kdcore") / "presets" / "teacher_student.yaml")
    config = load_config(read_yaml(preset), [f"data.root={args.root}"])
    # the classic arm's hand loop copies these modules: it gets them as built (torch's pooling)
    kd = KdcoreSetup(config, load_data(config.data), device, rewrites=arm != "classic")
    bs = kd.batches.batch_size
    first = next(kd.batches.epoch(0))
    fill_s = None
    if arm == "classic":
        hand = HandLoop("kd", kd, fused=False)  # torch's default SGD, as a hand-written script has it
        kd.algorithm.remove_taps()
        dataset = classic_dataset(args.torchvision_root)
        indices = index_stream(len(dataset), bs, config.seed)
        x0 = torch.stack([dataset[i][0] for i in first.indices.tolist()])
        y0 = torch.tensor([dataset[i][1] for i in first.indices.tolist()])
        with torch.no_grad():
            loss0 = float(hand.loss(x0, y0))

        def steps(n: int) -> None:
            order = [i for _ in range(n) for i in next(indices)]
            for x, y in DataLoader(dataset, batch_size=bs, sampler=order, num_workers=args.workers):
                hand.step(x, y)
    else:
        if arm == "kdcore+cache":
            t0 = time.perf_counter()
            name = config.teachers[0].name
            model = kd.algorithm.distiller.teachers[name]
            record = Teacher(model, os.path.join(args.cache_root, "teacher.pt"), sha256="", params=0,
                             running_sha256=weights_checksum(model))  # what the cache reads of it
            attach_teacher_cache(kd.algorithm.distiller, kd.batches.data, {name: record}, device,
                                 progress=False, log=log)
            fill_s = time.perf_counter() - t0
        x0 = first.inputs
        with torch.no_grad():
            terms = kd.algorithm.training_step(first, epoch=0, step=0)
            loss0 = float(sum(terms.values()))

        def steps(n: int) -> None:
            kd.block(n, lambda *_: None)  # on_step gets the position
    torch.save(x0, os.path.join(args.scratch, f"first-{arm}.pt"))
    steps(args.warmup)
    result = run_arm(steps, args.steps, args.steps * bs)
    return result | {"arm": arm, "threads": threads or torch.get_num_threads(), "first_loss": loss0,
                     "setup_s": fill_s, "batch_size": bs}


def spawn(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--one-run", arm,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--workers", str(args.workers),
               "--root", args.root, "--torchvision-root", args.torchvision_root,
               "--cache-root", args.cache_root, "--scratch", args.scratch]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, alternating")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps at the start of a run")
    parser.add_argument("--workers", type=int, default=0,
                        help="classic DataLoader workers (0, DataLoader's default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for EVERY arm (default: torch's default for classic, "
                             "tune_cpu's choice for kdcore)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {ARMS}")
    parser.add_argument("--root", default=FASHION_MNIST_ROOT, help="folder of the IDX files")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT")
    parser.add_argument("--one-run", choices=ARMS, help=argparse.SUPPRESS)
    for hidden in ("--torchvision-root", "--cache-root", "--scratch"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_run:
        print(json.dumps(one_run(args.one_run, args)))
        return 0

    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or "classic" not in arms:
        raise SystemExit(f"--arms: choose from {ARMS}, classic included (got {args.arms!r})")
    tmp = tempfile.mkdtemp(prefix="kdcore-bench-")
    args.torchvision_root = torchvision_layout(args.root, os.path.join(tmp, "tv"))
    args.cache_root = os.path.join(tmp, "cache")
    args.scratch = os.path.join(tmp, "scratch")
    os.makedirs(args.cache_root)
    os.makedirs(args.scratch)
    load0 = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    fill_s = None
    try:
        for r in range(args.repeats):
            for arm in arms:
                run = spawn(arm, args)
                if arm == "kdcore+cache" and r == 0:
                    fill_s = run["setup_s"]
                runs[arm].append(run)
                log(f"repeat {r + 1}/{args.repeats} {arm}: {run['images_per_s']:.0f} img/s")
        firsts = {arm: torch.load(os.path.join(args.scratch, f"first-{arm}.pt")) for arm in arms}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    diff = max(float((firsts[a] - firsts["classic"]).abs().max()) for a in arms)
    losses = {arm: runs[arm][0]["first_loss"] for arm in arms}
    loss_gap = max(abs(v - losses["classic"]) / abs(losses["classic"]) for v in losses.values())
    if diff > 1e-4 or loss_gap > 1e-4:
        raise SystemExit(f"the arms did different work: first batches differ by {diff}, "
                         f"first losses {losses}")

    result = {arm: summarize(rs) for arm, rs in runs.items()}
    classic = result["classic"]
    info = machine_info(torch.device("cpu")) | {
        "threads": {arm: runs[arm][0]["threads"] for arm in arms}, "workers": args.workers,
        "batch_size": runs["classic"][0]["batch_size"], "steps": args.steps, "repeats": args.repeats,
        "loadavg_start": load0}
    print(f"CPU throughput, Hinton KD cnn_teacher -> cnn_student, batch {info['batch_size']}, "
          f"{args.steps} steps x {args.repeats} alternating runs, one process per run; threads "
          + ", ".join(f"{a} {t}" for a, t in info["threads"].items())
          + f"; {args.workers} DataLoader workers; torch {info['torch']}; "
          f"load {load0:.1f} -> {info['loadavg'][0]:.1f}\n")
    print("| pipeline | images/s (median) | CPU ms/step | minor faults/step | vs classic (img/s) | "
          "per-run ratios | vs classic (CPU/step) | goal |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |")
    ratios = {}
    for arm in arms:
        r = result[arm]
        ratios[arm] = r["images_per_s"] / classic["images_per_s"]
        pair = [a["images_per_s"] / c["images_per_s"] for a, c in zip(runs[arm], runs["classic"])]
        goal = GOALS.get(arm)
        verdict = "" if goal is None else (
            f">= {goal:g}x: {'met' if ratios[arm] >= goal else '**not met**'} "
            f"({sum(p >= goal for p in pair)} of {len(pair)} rounds; per-run median "
            f"{statistics.median(pair):.2f}x)")
        print(f"| {LABELS[arm]} | {r['images_per_s']:.0f} | {r['cpu_ms_per_step']:.1f} | "
              f"{r['minor_faults_per_step']:.1f} | {ratios[arm]:.2f}x | "
              f"{', '.join(f'{p:.2f}' for p in pair)} | "
              f"{classic['cpu_ms_per_step'] / r['cpu_ms_per_step']:.2f}x | {verdict} |")
    print(f"\nsame work: first batches differ by at most {diff:.1e}; first losses "
          + ", ".join(f"{a} {v:.6f}" for a, v in losses.items()))
    if fill_s is not None:
        print(f"filling the teacher cache (first kdcore+cache run, once): {fill_s:.1f} s")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "goals": GOALS, "ratios": ratios, "first_losses": losses,
                       "batch_max_input_diff": diff, "cache_fill_s": fill_s, **result}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
