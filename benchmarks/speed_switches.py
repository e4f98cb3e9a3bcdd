"""Epoch throughput of the default Hinton KD job under each speed switch, as real runs.

    python benchmarks/speed_switches.py --device cuda --epochs 3

Each row is a ``kdcore run`` of the default job with one switch on (the teacher is cached before
the first row); images/s is the mean over epochs after the first (warm-up, compilation).
Rows run one after another on the same machine, alternating (``--repeats`` rounds) to spread
drift. Per run it records images/s, the student's train seconds per epoch and the test
accuracies. The teacher rewrites' rows answer whether they pay in a real run on the CPU:

    nice -n 10 python benchmarks/speed_switches.py --device cpu --epochs 8 --repeats 3 \\
        --rows "baseline (fp32),teacher as trained"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

ROWS = {
    "baseline (fp32)": [],
    "amp bf16": ["trainer.amp=bf16"],
    "amp fp16": ["trainer.amp=fp16"],
    "channels_last": ["trainer.channels_last=true"],
    "teacher cache": ["trainer.teacher_cache=true"],
    "vanilla student (no teacher)": ["@vanilla"],
    "compile (inductor)": ["trainer.compile=true"],  # last: compiling takes the longest
    # the frozen teacher's rewrites (kdcore/engine/frozen.py); the baseline has both on, on the CPU
    "teacher as trained": ["trainer.teacher_memory_format=contiguous", "trainer.teacher_fold_bn=false"],
    "teacher channels_last only": ["trainer.teacher_memory_format=channels_last", "trainer.teacher_fold_bn=false"],
    "teacher BN folded only": ["trainer.teacher_memory_format=contiguous", "trainer.teacher_fold_bn=true"],
}


def run(device: str, epochs: int, extra: list[str], out: str) -> dict[str, float] | None:
    """One ``kdcore run``: mean images/s of epochs 2.., the student's train seconds per epoch
    (summary.json's ``train_seconds`` / epochs), the test accuracies and the run's CPU
    seconds; ``None`` (reason printed) if it failed."""
    cmd = [sys.executable, "-m", "kdcore", "run", "--output-dir", out,
           "--set", f"trainer.device={device}", "--set", f"trainer.epochs={epochs}",
           "--set", "trainer.progress=false"]
    for item in extra:
        if item == "@vanilla":
            cmd += ["--algo", "vanilla"]
        else:
            cmd += ["--set", item]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        print(f"{' '.join(cmd)} failed:\n{proc.stderr[-1500:]}", file=sys.stderr, flush=True)
        return None
    run_dir = proc.stdout.strip().splitlines()[-1][len("run dir: "):]
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    return {"images_per_second": statistics.mean(r["train"]["images_per_second"] for r in rows[1:] or rows),
            "train_s_per_epoch": summary["train_seconds"] / summary["epochs"],
            "student_top1": summary["student"].get("top1"),
            "teacher_top1": (summary.get("teacher") or {}).get("top1"), "run_dir": run_dir,
            # CPU seconds of the whole run (start-up and evaluation included): on a loaded
            # machine, wall time also counts the waits for a core
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", default="", help="comma list of row names (default: all)")
    parser.add_argument("--out", default="runs/speed")
    parser.add_argument("--json", default="")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run, e.g. trainer.threads=1")
    parser.add_argument("--no-warmup", action="store_true", help="the teacher is cached already: no first run")
    args = parser.parse_args()
    names = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
    rows = {n: ROWS[n] + args.set for n in names}  # in the order given: two calls can run in opposite orders
    if not args.no_warmup and run(args.device, 1, args.set, args.out) is None:  # train and cache the teacher first
        raise SystemExit("the default job does not run; see above")
    seen: dict[str, list[dict[str, float]]] = {k: [] for k in rows}
    for _ in range(args.repeats):
        for name, extra in rows.items():
            result = run(args.device, args.epochs, extra, args.out)
            if result is not None:
                seen[name].append(result)
            print(f"{name}: {'failed' if result is None else json.dumps(result)}", flush=True)
    base = statistics.mean(r["images_per_second"] for r in seen.get("baseline (fp32)") or [{"images_per_second": 1.0}])
    print("\n| switch | images/s | vs baseline | train s/epoch (runs) | run CPU s (runs) | student top-1 (runs) |"
          "\n|---|---|---|---|---|---|")
    for name, results in seen.items():
        if not results:
            print(f"| {name} | failed | | | | |")
            continue
        speed = statistics.mean(r["images_per_second"] for r in results)
        seconds = " / ".join(f"{r['train_s_per_epoch']:.1f}" for r in results)
        cpu = " / ".join(f"{r['cpu_s']:.0f}" for r in results)
        top1 = " / ".join(f"{r['student_top1']}" for r in results)
        print(f"| {name} | {speed:.0f} | {speed / base:.2f}x | {seconds} | {cpu} | {top1} |")
    if args.json:
        json.dump(seen, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
