"""The method table: every distillation method against the vanilla student, over seeds.

Protocol (docs/benchmarks.md explains the choice):
- Fashion-MNIST; 5,000 training images held out as a validation split (fixed, seed 0);
  model selection ("best epoch") and the one tuned knob (KD temperature) use it, never the test set.
- One teacher (cnn_teacher, trained once on all 55,000 labelled images, cached) for every run.
- The student (cnn_student) sees labels on only ``--labelled`` images; the teacher's soft
  targets / features cover all 55,000 (the transfer-set regime of Hinton et al. 2015).
- The vanilla baseline trains on the labelled images alone for the same number of optimizer
  steps as the distillation runs.

    python benchmarks/method_table.py --seeds 3 --epochs 5 --labelled 2000 --parallel 4

Each run is a real ``kdcore run`` subprocess; results are read from its summary.json and
metrics.jsonl. Writes the table between markers in docs/benchmarks.md and a PNG of the curves.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import glob
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PRESET = os.path.join(ROOT, "kdcore", "presets", "teacher_student.yaml")
START, END = "<!-- method-table:start -->", "<!-- method-table:end -->"


def presets() -> dict[str, str]:
    found = {"kd": DEFAULT_PRESET}
    for path in sorted(glob.glob(os.path.join(ROOT, "plugins", "kdcore-plugin-*", "kdcore_plugin_*",
                                              "presets", "fashion_mnist.yaml"))):
        name = path.split(os.sep)[-4][len("kdcore-plugin-"):]
        if name != "kd":
            found[name] = path
    return found


def kdcore_cmd() -> list[str]:
    return [sys.executable, "-m", "kdcore"]


def run_one(tag: str, args: list[str], runs_dir: str, threads: int, env: dict[str, str]) -> dict:
    cmd = kdcore_cmd() + ["run", *args, "--output-dir", runs_dir, "--name", tag,
                          "--set", "trainer.progress=false", "--set", f"trainer.threads={threads}"]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"tag": tag, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "cmd": cmd}
    run_dir = proc.stdout.strip().splitlines()[-1][len("run dir: "):]
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    curve = [r["student"]["test"]["top1"] for r in rows]
    val = [r["student"]["val"]["top1"] for r in rows if "val" in r["student"]]
    best = max(range(len(val)), key=lambda i: val[i]) if val else len(curve) - 1  # no val: last
    return {"tag": tag, "summary": summary, "curve": curve, "val": val,
            "last": curve[-1], "best_by_val": curve[best], "best_epoch": best + 1,
            "wall": time.time() - started, "cmd": cmd}


def common(args: argparse.Namespace, seed: int) -> list[str]:
    sets = [f"seed={seed}", f"data.val_split={args.val_split}", f"trainer.epochs={args.epochs}",
            f"trainer.device={args.device}"]
    if args.train_limit:
        sets.append(f"data.train_limit={args.train_limit}")
    out = []
    for s in sets:
        out += ["--set", s]
    return out


def plan(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    jobs = []
    train_images = (args.train_limit or 60000 - args.val_split)
    steps = args.epochs * (train_images // 128)
    vanilla_epochs = max(1, round(steps / max(1, args.labelled // 128)))
    methods = presets()
    chosen = [m for m in (args.methods.split(",") if args.methods else methods) if m in methods]
    for seed in range(args.seeds):
        base = common(args, seed)
        vanilla = [a if not a.startswith("trainer.epochs=") else f"trainer.epochs={vanilla_epochs}" for a in base]
        jobs.append(("vanilla", f"vanilla-s{seed}",
                     ["--config", DEFAULT_PRESET, "--algo", "vanilla", *vanilla,
                      "--set", f"data.labelled={args.labelled}", "--set", "data.drop_unlabelled=true"]))
        for method in chosen:
            extra = list(base)
            if method == "datafree":
                # no training images at all: the teacher comes from the others' cache (filled
                # in by main() once they ran), and there is no split to hold a validation set from
                extra += ["--set", "data.val_split=0", "--set", "teachers.0.checkpoint=@TEACHER"]
            else:
                extra += ["--set", f"data.labelled={args.labelled}"]
            if method == "kd" and args.kd_temperature:
                extra += ["--set", f"teachers.0.distill.0.head.losses.0.temperature={args.kd_temperature}"]
            jobs.append((method, f"{method}-s{seed}", ["--config", methods[method], *extra]))
    return jobs


def tune_kd(args: argparse.Namespace, runs_dir: str, threads: int, env: dict[str, str]) -> tuple[float, dict]:
    """Pick the KD temperature on the validation split (seed 0)."""
    results = {}
    with futures.ThreadPoolExecutor(args.parallel) as pool:
        jobs = {pool.submit(run_one, f"tune-kd-T{t}", ["--config", DEFAULT_PRESET, *common(args, 0),
                                                        "--set", f"data.labelled={args.labelled}",
                                                        "--set", f"teachers.0.distill.0.head.losses.0.temperature={t}"],
                            runs_dir, threads, env): t for t in (1.0, 2.0, 4.0, 8.0)}
        for job in futures.as_completed(jobs):
            results[jobs[job]] = job.result()
    scores = {t: max(r["val"]) for t, r in results.items() if "val" in r and r["val"]}
    if not scores:
        raise SystemExit(f"every tuning run failed, e.g.: {next(iter(results.values())).get('error')}")
    return max(scores, key=scores.get), scores


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def write_report(args: argparse.Namespace, results: list[dict], tuned: dict, png: str, seconds: float) -> str:
    by_method: dict[str, list[dict]] = {}
    for method, r in results:
        by_method.setdefault(method, []).append(r)
    ok = [r for rs in by_method.values() for r in rs if "summary" in r]
    teacher = next((r["summary"]["teacher"] for r in ok if "teacher" in r["summary"]), None)
    student_params = next((r["summary"]["student"]["params"] for r in ok), None)
    device = next((r["summary"]["device"] for r in ok), "?")
    lines = [START, "",
             f"Command: `python benchmarks/method_table.py --seeds {args.seeds} --epochs {args.epochs} "
             f"--labelled {args.labelled} --val-split {args.val_split} --parallel {args.parallel} "
             f"--device {args.device}" + (f" --train-limit {args.train_limit}" if args.train_limit else "") + "`",
             "",
             f"Device: {device} ({args.device_label}). Whole table: {seconds / 60:.1f} min wall.",
             f"Teacher: cnn_teacher, {teacher['params']:,} parameters, test top-1 {teacher['top1']:.2f}."
             if teacher else "Teacher: (no run succeeded)",
             f"Student: cnn_student, {student_params:,} parameters; labels on {args.labelled} of the "
             f"training images; {args.epochs} epochs for the distillation runs." if student_params else "",
             "", "| method | seeds | test top-1, last epoch | vs vanilla | test top-1 at best val epoch | train time / run (s) |",
             "|---|---|---|---|---|---|"]
    order = ["vanilla"] + [m for m in by_method if m != "vanilla"]
    base_runs = [r["last"] for r in by_method.get("vanilla", []) if "summary" in r]
    base = statistics.mean(base_runs) if base_runs else None
    for method in order:
        rs = [r for r in by_method.get(method, []) if "summary" in r]
        failed = [r for r in by_method.get(method, []) if "error" in r]
        if not rs:
            lines.append(f"| {method} | 0 | failed: {failed[0]['error'] if failed else '?'} | | | |")
            continue
        delta = "" if base is None or method == "vanilla" else f"{statistics.mean(r['last'] for r in rs) - base:+.2f}"
        lines.append(f"| {method} | {len(rs)} | {mean_std([r['last'] for r in rs])} | {delta} | "
                     f"{mean_std([r['best_by_val'] for r in rs])} | "
                     f"{statistics.mean(r['summary']['seconds'] for r in rs):.0f} |")
    if tuned:
        lines += ["", "KD temperature tuned on the validation split (seed 0, best val top-1): "
                  + ", ".join(f"T={t:g}: {v:.2f}" for t, v in sorted(tuned.items()))]
    lines += ["", f"![test accuracy curves]({os.path.relpath(png, os.path.join(ROOT, 'docs'))})", "", END]
    return "\n".join(lines)


def plot(results: list, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[list[float]]] = {}
    for method, r in results:
        if "curve" in r:
            by_method.setdefault(method, []).append(r["curve"])
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.cm.tab20.colors
    for i, (method, curves) in enumerate(sorted(by_method.items())):
        n = min(len(c) for c in curves)
        mean = [statistics.mean(c[i] for c in curves) for i in range(n)]
        xs = [(i + 1) / n for i in range(n)]
        ax.plot(xs, mean, label=method, color=colors[(2 * i) % 20 + (i >= 10)],
                linewidth=2.5 if method in ("vanilla", "kd") else 1.3,
                linestyle="-" if i % 2 == 0 else "--")
    ax.set_xlabel("fraction of training (optimizer steps)")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--val-split", type=int, default=5000)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--device-label", default="", help="e.g. the CPU or GPU model, for the report")
    parser.add_argument("--methods", default="", help="comma list (default: every preset)")
    parser.add_argument("--no-tune", action="store_true", help="skip the KD temperature sweep")
    parser.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "bench"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--json", default=os.path.join(ROOT, "docs", "benchmarks", "method_table.json"))
    parser.add_argument("--from-results", default="",
                        help="rebuild the report from a saved method_table.jsonl instead of running")
    parser.add_argument("--tuned", default="", help='with --from-results: the sweep, e.g. "1:84.2,4:86.7"')
    parser.add_argument("--wall", type=float, default=0.0, help="with --from-results: wall seconds")
    args = parser.parse_args()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    if args.from_results:
        rows = [json.loads(line) for line in open(args.from_results) if line.strip()]
        results = [(r.pop("method"), r) for r in rows]
        tuned = {float(t): float(v) for t, v in (x.split(":") for x in args.tuned.split(",") if x)}
        finish(args, results, tuned, args.wall)
        return
    env = dict(os.environ)
    env.setdefault("KDCORE_CACHE_DIR", os.path.join(args.runs_dir, "cache"))
    threads = max(1, (os.cpu_count() or 2) // args.parallel)
    started = time.time()
    tuned: dict = {}
    args.kd_temperature = None
    if not args.no_tune:
        args.kd_temperature, tuned = tune_kd(args, args.runs_dir, threads, env)
        print(f"KD temperature chosen on val: {args.kd_temperature} ({tuned})", flush=True)
    results = []
    jobs_planned = plan(args)
    first = [j for j in jobs_planned if not any("@TEACHER" in a for a in j[2])]
    later = [j for j in jobs_planned if j not in first]
    for phase in (first, later):
        if phase is later and later:
            teacher = next((r["summary"]["teachers"]["teacher"]["checkpoint"] for m, r in results
                            if "summary" in r and "teacher" in r["summary"].get("teachers", {})), None)
            phase = [(m, t, [x.replace("@TEACHER", str(teacher)) for x in a]) for m, t, a in phase]
        with futures.ThreadPoolExecutor(args.parallel) as pool:
            jobs = {pool.submit(run_one, tag, a, args.runs_dir, threads, env): method
                    for method, tag, a in phase}
            for job in futures.as_completed(jobs):
                r = job.result()
                results.append((jobs[job], r))
                print(r["tag"], r.get("last", r.get("error")), flush=True)
                with open(args.json + "l", "a") as partial:  # survives a timeout of the whole table
                    partial.write(json.dumps({"method": jobs[job], **{k: v for k, v in r.items()
                                                                       if k != "cmd"}}, default=str) + "\n")
    finish(args, results, tuned, time.time() - started)


def finish(args: argparse.Namespace, results: list, tuned: dict, seconds: float) -> None:
    png = os.path.join(os.path.dirname(args.json), "method_curves.png")
    plot(results, png)
    report = write_report(args, results, tuned, png, seconds)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    json.dump([{"method": m, **{k: v for k, v in r.items() if k != "cmd"}} for m, r in results],
              open(args.json, "w"), indent=1, default=str)
    text = open(args.out).read() if os.path.exists(args.out) else "# Benchmarks\n\n" + START + "\n" + END + "\n"
    if START not in text:
        text += "\n" + START + "\n" + END + "\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    open(args.out, "w").write(head + report + tail)
    print(report)


if __name__ == "__main__":
    main()
