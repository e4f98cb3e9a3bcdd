"""Host work per training step, counted in CPU instructions: kdcore against the hand-written loop.

On a launch-bound GPU step (tiny models) the step's time is the host's: Python, the dispatcher
and kernel launches. ``overhead.py --set data.batch_size=1`` times that on the CPU, but on a
shared machine single blocks move by 5-10%, which hides a 1-3% difference. Instructions do not
move: this script runs each arm of ``overhead.py`` (the same models, batches and optimizer) in
its own process under valgrind's callgrind, counts only the timed steps (instrumentation is
switched on at the end of the first step and off at the end of the last, by callgrind's client
requests from a tiny C library built here with ``cc``), and prints instructions per step and
the ratio kdcore / hand. Counts say nothing about caches or branch prediction, so they are a
floor for the time ratio, not the time ratio itself.

Needs valgrind (Debian: ``apt-get install -y valgrind``) and a C compiler. Each arm takes about
a minute and a half (torch's start-up under valgrind); two run at a time.

Usage::

    python benchmarks/host_instructions.py --steps 20 --json host-instructions.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kdcore.engine.native_kernels import _build

HERE = os.path.dirname(os.path.abspath(__file__))

CLIENT_REQUESTS = r"""
#include <valgrind/callgrind.h>
void count_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void count_stop(void) { CALLGRIND_DUMP_STATS; CALLGRIND_STOP_INSTRUMENTATION; }
"""


def child(method: str, arm: str, steps: int, overrides: list[str], library: str) -> None:
    """Build both arms as overhead.py does, warm up, and count ``steps`` steps of ``arm``."""
    import ctypes

    import torch

    sys.path.insert(0, HERE)
    import overhead
    from kdcore.assemble import load_data
    from kdcore.config import load_config, read_yaml
    from kdcore.engine.cpu import tune_cpu

    tune_cpu(1)
    config = load_config(read_yaml(overhead.preset_path(method)), overrides)
    kd = overhead.KdcoreSetup(config, load_data(config.data), torch.device("cpu"))
    hand = overhead.HandLoop(method, kd)
    kd.block(5, lambda *_: None)
    hand.block(5, lambda *_: None)
    counter = ctypes.CDLL(library)
    ends = [0]

    def stamp(*_position: Any) -> None:  # the end of a step: count from the first to the last
        if ends[0] == 0:
            counter.count_start()
        elif ends[0] == steps:
            counter.count_stop()
        ends[0] += 1

    (kd.block if arm == "kdcore" else hand.block)(steps + 1, stamp)


# a rough cost model, in cycles, from the valgrind manual's orders of magnitude (an L1 miss
# "around 10", a last-level miss "as much as 200", a mispredicted branch "10 to 30"): 10 per L1
# miss, 100 per last-level miss, 15 per mispredicted branch; real cores overlap much of it
MISS_COST = {"I1mr": 10, "D1mr": 10, "D1mw": 10, "ILmr": 100, "DLmr": 100, "DLmw": 100,
             "Bcm": 15, "Bim": 15}


def count(method: str, arm: str, steps: int, overrides: list[str], library: str, folder: str,
          simulate: bool = False) -> dict[str, int]:
    """Events per counted step: ``Ir`` (instructions); with ``simulate`` also callgrind's cache
    and branch-predictor events and ``cycles``, the cost model :data:`MISS_COST` applied."""
    out = os.path.join(folder, f"callgrind.{method}.{arm}")
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if simulate else []
    command = ["valgrind", "--tool=callgrind", *sim, "--instr-atstart=no", f"--callgrind-out-file={out}",
               sys.executable, os.path.abspath(__file__), "--child", method, arm, "--steps", str(steps),
               "--library", library, *[f"--set={o}" for o in overrides]]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    dumps = [f for f in os.listdir(folder) if f.startswith(f"callgrind.{method}.{arm}.")]
    if done.returncode or len(dumps) != 1:
        raise SystemExit(f"{method} {arm}: valgrind failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with open(os.path.join(folder, dumps[0]), encoding="utf-8") as f:
        lines = f.read().splitlines()
    names = next(line.split()[1:] for line in lines if line.startswith("events:"))
    totals = next(line.split()[1:] for line in lines if line.startswith("totals:"))
    events = {name: int(value) // steps for name, value in zip(names, totals)}
    if simulate:
        events["cycles"] = events["Ir"] + sum(cost * events.get(name, 0) for name, cost in MISS_COST.items())
    return events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="counted steps per arm")
    parser.add_argument("--methods", default="kd,ofd", help="comma-separated: kd, ofd")
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                        help="config override (default: data.batch_size=1 data.train_limit=2000)")
    parser.add_argument("--simulate", action="store_true",
                        help="also simulate caches and branch prediction and report estimated cycles "
                             "(MISS_COST; about twice as slow)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "ARM"), help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    overrides = args.overrides if args.overrides is not None else ["data.batch_size=1", "data.train_limit=2000"]
    if args.child:
        child(*args.child, args.steps, overrides, args.library)
        return 0
    for tool, how in (("valgrind", "apt-get install -y valgrind"),
                      (shlex.split(os.environ.get("CC") or "cc")[0], "apt-get install -y gcc")):
        if shutil.which(tool) is None:
            raise SystemExit(f"host_instructions.py needs {tool!r} on PATH ({how})")
    methods = [m.strip() for m in args.methods.split(",")]
    with tempfile.TemporaryDirectory(prefix="kdcore-instructions-") as folder:
        # built the way kdcore builds its own C kernels (from stdin, into a private folder)
        library = _build(CLIENT_REQUESTS.encode(), "count", ("-O1",),
                         tuple(shlex.split(os.environ.get("CC") or "cc")), folder)
        if library is None:
            raise SystemExit("building the client-request library failed (valgrind's headers: "
                             "apt-get install -y valgrind)")
        jobs = [(m, a) for m in methods for a in ("kdcore", "hand")]
        with ThreadPoolExecutor(max_workers=2) as pool:
            counts = dict(zip(jobs, pool.map(lambda job: count(*job, args.steps, overrides, library, folder,
                                                                   args.simulate), jobs)))
    print(f"host instructions per step (callgrind), {args.steps} steps per arm, "
          f"overrides: {' '.join(overrides)}\n")
    measures = ["Ir", "cycles"] if args.simulate else ["Ir"]
    print("| method | measure | kdcore | hand | kdcore / hand | kdcore - hand |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    results = []
    for m in methods:
        k, h = counts[(m, "kdcore")], counts[(m, "hand")]
        results.append({"method": m, "kdcore": k["Ir"], "hand": h["Ir"], "ratio": k["Ir"] / h["Ir"],
                        "events": {"kdcore": k, "hand": h}})
        for measure in measures:
            label = "instructions" if measure == "Ir" else "estimated cycles"
            print(f"| {m} | {label} | {k[measure]:,} | {h[measure]:,} | {k[measure] / h[measure]:.4f} | "
                  f"{k[measure] - h[measure]:+,} |")
        if args.simulate:
            results[-1]["cycles_ratio"] = k["cycles"] / h["cycles"]
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"steps": args.steps, "overrides": overrides, "simulate": args.simulate,
                       "miss_cost": MISS_COST if args.simulate else None, "results": results}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
