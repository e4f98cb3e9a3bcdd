"""Dense-prediction tables in docs/benchmarks.md: students on ``fashion_scenes``, over seeds.

``--task segmentation`` (docs/methods/cwd.md): the cwd preset's data, models and schedule;
arms: the student alone (vanilla), pixel-wise KD on the logits, CWD on the logits, CWD on the
logits and on the last decoder features. A task is an entry of :data:`TASKS` (its preset, its
arms as distill points, its metrics), so another dense task adds its own entry and arms.

Protocol: ``--scenes`` training scenes of which ``--val-split`` (fixed, seed 0) are held out to
pick the best epoch (never the test set); the preset's test scenes. One teacher, trained once
by the first run and cached, for every run; distillation arms read its outputs from the
teacher-output cache. Each run is a ``kdcore run`` subprocess (``--parallel`` at a time,
``--threads`` each, niced), read back from its summary.json and metrics.jsonl.

    python benchmarks/dense_table.py --task segmentation --seeds 3 --parallel 2

Writes the table between the ``<task>-table`` markers of docs/benchmarks.md, the runs as
docs/benchmarks/<task>_table.json, and the picture of test scenes (``kdcore draw``, from
kdcore-plugin-draw, which scripts/install.sh installs; without it the table is written all the same).
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tables import failure, mean_std, run_config, splice  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def point(module: str, loss: dict[str, Any], connector: dict[str, Any] | None = None) -> dict[str, Any]:
    head: dict[str, Any] = {"losses": [loss]}
    if connector:
        head["student_connector"] = connector
    return {"student_module": module, "teacher_module": module, "head": head}


def segmentation_arms(args: argparse.Namespace) -> dict[str, list[dict[str, Any]] | None]:
    """name -> distill points (``None``: the student alone)."""
    cwd = {"type": "cwd", "weight": args.cwd_weight, "tau": args.tau}
    return {
        "vanilla": None,
        "pixel_kd": [point("classifier", {"type": "pixel_kd", "weight": args.pixel_weight,
                                          "temperature": args.pixel_temperature})],
        "cwd_logits": [point("classifier", cwd)],
        "cwd_logits_features": [point("classifier", cwd),
                                point("dec1", {**cwd, "weight": args.feature_weight}, {"type": "conv1x1_bn"})],
    }


#: task -> its preset, its arms, the run that goes first (it trains and caches the teacher),
#: the metrics read from every run (headline first), and how the report names them
TASKS: dict[str, dict[str, Any]] = {
    "segmentation": {
        "preset": os.path.join(ROOT, "plugins", "kdcore-plugin-cwd", "kdcore_plugin_cwd", "presets",
                               "fashion_scenes.yaml"),
        "arms": segmentation_arms, "first": "cwd_logits", "metrics": ("miou", "pixel_acc"),
        "names": {"miou": "mIoU", "pixel_acc": "pixel acc."}, "picture": ("cwd_logits", "pixel_kd", "vanilla"),
    },
}


def config_for(task: dict[str, Any], points: list[dict[str, Any]] | None, seed: int,
               args: argparse.Namespace) -> dict[str, Any]:
    cfg = yaml.safe_load(open(task["preset"], encoding="utf-8"))
    cfg["seed"] = seed
    cfg["data"]["val_split"] = args.val_split
    cfg["data"].setdefault("params", {})["train_scenes"] = args.scenes
    cfg["trainer"].update({"epochs": args.epochs, "progress": False, "threads": args.threads})
    for item in args.set:  # KEY.PATH=VALUE on the preset, as kdcore run --set
        keys, _, text = item.partition("=")
        *parents, last = keys.split(".")
        node = cfg
        for key in parents:  # a number indexes a list: teachers.0.train.epochs=16
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[int(last) if isinstance(node, list) else last] = yaml.safe_load(text)
    if points is None:
        cfg["algorithm"] = {"type": "vanilla"}
        cfg.pop("teachers")
        cfg["trainer"].pop("teacher_cache", None)
    else:
        cfg["algorithm"] = {"type": "teacher_student", "student_loss_weight": 1.0}
        cfg["teachers"][0]["distill"] = points
    return cfg


def run_one(tag: str, cfg: dict[str, Any], out: str, metrics: tuple[str, ...]) -> dict[str, Any]:
    proc, run_dir, wall = run_config(tag, cfg, out)
    if run_dir is None:
        return failure(tag, proc)
    summary = json.load(open(os.path.join(run_dir, "summary.json"), encoding="utf-8"))
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8")]
    headline = summary.get("metric", metrics[0])
    val = [r["student"]["val"][headline] for r in rows]
    best = max(range(len(val)), key=lambda i: val[i])
    test = [r["student"]["test"] for r in rows]
    return {"tag": tag, "run_dir": run_dir, "wall": wall, "train_seconds": summary.get("train_seconds"),
            "best_epoch": best + 1, "best": {k: test[best][k] for k in metrics},
            "last": {k: test[-1][k] for k in metrics},
            "teacher": {k: summary["teacher"][k] for k in metrics} if "teacher" in summary else None}


def table(results: dict[str, list[dict[str, Any]]], metrics: tuple[str, ...], names: dict[str, str]) -> str:
    head, other = metrics[0], metrics[1:]
    base = [r["last"][head] for r in results.get("vanilla", []) if "error" not in r]
    cols = [f"test {names[head]}, last epoch", "vs vanilla", f"test {names[head]}, best val epoch",
            *[f"{names[m]}, last" for m in other], "best epochs", "s / run"]
    lines = ["| arm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            lines.append(f"| {name} | failed: {runs[0].get('error')} |" + " |" * (len(cols) - 1))
            continue
        last = [r["last"][head] for r in ok]
        delta = f"{statistics.mean(last) - statistics.mean(base):+.2f}" if base and name != "vanilla" else ""
        lines.append("| " + " | ".join([
            name, mean_std(last), delta, mean_std([r["best"][head] for r in ok]),
            *[mean_std([r["last"][m] for r in ok]) for m in other],
            ",".join(str(r["best_epoch"]) for r in ok), f"{statistics.mean(r['wall'] for r in ok):.0f}"]) + " |")
    return "\n".join(lines)


def run_all(jobs: dict[str, dict[str, Any]], first: str, args: argparse.Namespace,
            metrics: tuple[str, ...], say: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if first in jobs:  # alone first: it trains and caches the teacher the others load
        done[first] = run_one(first, jobs[first], args.runs_dir, metrics)
        say(f"{first}: {done[first].get('last', done[first].get('error'))}")
    with futures.ThreadPoolExecutor(args.parallel) as pool:
        pending = [pool.submit(run_one, tag, cfg, args.runs_dir, metrics)
                   for tag, cfg in jobs.items() if tag not in done]
        for job in futures.as_completed(pending):
            result = job.result()
            done[result["tag"]] = result
            say(f"{result['tag']}: {result.get('last', result.get('error'))} ({result.get('wall', 0):.0f} s)")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="segmentation")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=1800, help="training scenes (before the validation hold-out)")
    parser.add_argument("--val-split", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--arms", default="", help="comma list (default: all of the task's)")
    parser.add_argument("--tau", type=float, default=1.0, help="segmentation: CWD temperature")
    parser.add_argument("--cwd-weight", type=float, default=10.0, help="segmentation: CWD weight on the logits")
    parser.add_argument("--feature-weight", type=float, default=10.0, help="segmentation: CWD weight on dec1")
    parser.add_argument("--pixel-weight", type=float, default=1.0, help="segmentation: pixel KD weight")
    parser.add_argument("--pixel-temperature", type=float, default=1.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the preset, e.g. 'student={type: seg_net, params: {widths: [6, 12, 24, 32]}}'")
    parser.add_argument("--runs-dir", default="")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--picture", default="default", help="PNG of test scenes ('' for none)")
    parser.add_argument("--json", default="default", help="every run's scores (default: "
                        "docs/benchmarks/<task>_table.json, or beside --out when that is elsewhere)")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    args.runs_dir = args.runs_dir or os.path.join(ROOT, "runs", f"{args.task}-table")
    figures = os.path.join(ROOT, "docs", "benchmarks")
    picture = os.path.join(figures, f"{args.task}_scenes.png") if args.picture == "default" else args.picture
    os.makedirs(os.path.join(args.runs_dir, "logs"), exist_ok=True)
    chosen = task["arms"](args)
    if args.arms:
        chosen = {k: v for k, v in chosen.items() if k in args.arms.split(",")}
    started = time.time()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = {f"{name}-s{seed}": config_for(task, points, seed, args) for name, points in chosen.items()
            for seed in seeds}
    done = run_all(jobs, f"{task['first']}-s{seeds[0]}", args, task["metrics"])
    results = {name: [done[f"{name}-s{seed}"] for seed in seeds] for name in chosen}
    teacher = next((r["teacher"] for rs in results.values() for r in rs if r.get("teacher")), None)
    total = time.time() - started
    default_out = os.path.abspath(args.out) == os.path.join(ROOT, "docs", "benchmarks.md")
    json_path = args.json if args.json != "default" else (
        os.path.join(figures, f"{args.task}_table.json") if default_out
        else os.path.splitext(args.out)[0] + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"results": results, "teacher": teacher, "seconds": total,
                   "argv": argv if argv is not None else sys.argv[1:]}, f, indent=1)
    metrics, names = task["metrics"], task["names"]
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    report = "\n".join([
        f"Command: `python benchmarks/dense_table.py {shown}` ({total / 60:.1f} min in all, "
        f"{args.parallel} runs at a time, {args.threads} thread each, niced, on this shared 2-core CPU).", "",
        ("Teacher: " + ", ".join(f"test {names[m]} {teacher[m]:.2f}" for m in metrics) + ".")
        if teacher else "Teacher: no run finished.", "",
        f"Students: {args.epochs} epochs on {args.scenes - args.val_split} scenes; the best epoch is "
        f"chosen on the {args.val_split} validation scenes; mean ± std over {args.seeds} seeds; "
        f"'vs vanilla' compares the last-epoch means.", "",
        table(results, metrics, names), ""])
    if picture and all(a in results for a in task["picture"]):
        runs = [results[a][0].get("run_dir") for a in task["picture"]]
        if all(runs):
            proc = subprocess.run([sys.executable, "-m", "kdcore", "draw", *runs, "--out", picture],
                                  capture_output=True, text=True)
            print(proc.stdout + proc.stderr if proc.returncode else f"picture: {picture}")
            if proc.returncode == 0:
                rel = os.path.relpath(picture, os.path.dirname(os.path.abspath(args.out)))
                report += f"\n![test scenes: input, truth, teacher, students]({rel})\n"
    splice(report, args.out, f"<!-- {args.task}-table:start -->", f"<!-- {args.task}-table:end -->")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
