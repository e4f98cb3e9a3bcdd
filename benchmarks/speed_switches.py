"""Epoch throughput of the default Hinton KD job under each speed switch, as real runs.

    python benchmarks/speed_switches.py --device cuda --epochs 3

Each row is a ``kdcore run`` of the default job with one switch on (the teacher is cached before
the first row); images/s is the mean over epochs after the first (warm-up, compilation).
Rows run one after another on the same machine, alternating twice to spread drift.
"""

from __future__ import annotations

import argparse
import json
import os
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
}


def run(device: str, epochs: int, extra: list[str], out: str) -> float | None:
    """Mean images/s of epochs 2.. of one ``kdcore run``; ``None`` (reason printed) if it failed."""
    cmd = [sys.executable, "-m", "kdcore", "run", "--output-dir", out,
           "--set", f"trainer.device={device}", "--set", f"trainer.epochs={epochs}",
           "--set", "trainer.progress=false"]
    for item in extra:
        if item == "@vanilla":
            cmd += ["--algo", "vanilla"]
        else:
            cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"{' '.join(cmd)} failed:\n{proc.stderr[-1500:]}", file=sys.stderr, flush=True)
        return None
    run_dir = proc.stdout.strip().splitlines()[-1][len("run dir: "):]
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return statistics.mean(r["train"]["images_per_second"] for r in rows[1:] or rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", default="", help="comma list of row names (default: all)")
    parser.add_argument("--out", default="runs/speed")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rows = {k: v for k, v in ROWS.items() if not args.rows or k in args.rows.split(",")}
    if run(args.device, 1, ["trainer.epochs=1"], args.out) is None:  # train and cache the teacher first
        raise SystemExit("the default job does not run; see above")
    seen: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.repeats):
        for name, extra in rows.items():
            speed = run(args.device, args.epochs, extra, args.out)
            if speed is not None:
                seen[name].append(speed)
            print(f"{name}: {'failed' if speed is None else f'{speed:.0f} img/s'}", flush=True)
    base = statistics.mean(seen.get("baseline (fp32)") or [1.0])
    print("\n| switch | images/s | vs baseline |\n|---|---|---|")
    for name, values in seen.items():
        if not values:
            print(f"| {name} | failed | |")
            continue
        print(f"| {name} | {statistics.mean(values):.0f} | {statistics.mean(values) / base:.2f}x |")
    if args.json:
        json.dump(seen, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
