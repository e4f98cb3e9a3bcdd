"""The detection table in docs/benchmarks.md: YOLO students on ``fashion_scenes`` detection.

Protocol (the yolo_kd preset's data, models and schedule; docs/methods/yolo_kd.md):
- 3,000 training scenes, of which ``--val-split`` (fixed, seed 0) are held out for choosing the
  best epoch; 500 test scenes. One teacher (yolo_teacher, trained once, cached) for every run.
- Arms: the student alone (vanilla); FitNets on the neck (conv_reg connector, fitnet loss);
  yolo_kd without and with FM-NMS; yolo_kd with FM-NMS when only ``--labelled`` training scenes
  keep their boxes (the others go through the teacher only), and the student alone on those
  labelled scenes (``data.drop_unlabelled``) as that arm's baseline.
- ``--seeds`` seeds per arm; each run is a ``kdcore run`` subprocess (``--parallel`` at a time,
  one thread each), read back from its summary.json and metrics.jsonl.

    python benchmarks/detection_table.py --seeds 3 --parallel 2

A rerun of the command with the same ``--runs-dir`` reads the runs that finished instead of
repeating them. Writes the table between the detection-table markers of docs/benchmarks.md, the runs as
docs/benchmarks/detection_table.json, and (``--picture``) the picture of test scenes with
``kdcore draw`` when that command exists (kdcore-plugin-draw; scripts/install.sh installs it).
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

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tables  # noqa: E402
from tables import failure, mean_std, run_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "plugins", "kdcore-plugin-yolo-kd", "kdcore_plugin_yolo_kd", "presets",
                      "fashion_scenes.yaml")
START, END = "<!-- detection-table:start -->", "<!-- detection-table:end -->"
NECK_FITNET = {"student_module": "neck", "teacher_module": "neck",
               "head": {"student_connector": {"type": "conv_reg", "relu": False},
                        "losses": [{"type": "fitnet", "weight": 10.0, "reduction": "mean"}]}}


def yolo_kd_point(fm_nms: bool) -> dict:
    return {"student_module": "head", "teacher_module": "head",
            "head": {"losses": [{"type": "yolo_kd", "weight": 1.0, "fm_nms": fm_nms}]}}


def arms(labelled: int) -> dict[str, tuple[str, list[dict] | None, dict]]:
    """name -> (algorithm, distill points or None for the student alone, data overrides)."""
    return {
        "vanilla": ("vanilla", None, {}),
        "fitnet_neck": ("teacher_student", [NECK_FITNET], {}),
        "yolo_kd_no_fmnms": ("teacher_student", [yolo_kd_point(False)], {}),
        "yolo_kd": ("teacher_student", [yolo_kd_point(True)], {}),
        f"vanilla_{labelled}_labelled": ("vanilla", None, {"labelled": labelled, "drop_unlabelled": True}),
        # the same number of optimizer steps as the runs on every scene (more epochs)
        f"vanilla_{labelled}_labelled_same_steps": ("vanilla", None, {"labelled": labelled, "drop_unlabelled": True,
                                                                     "same_steps": True}),
        f"yolo_kd_{labelled}_labelled": ("teacher_student", [yolo_kd_point(True)], {"labelled": labelled}),
    }


def config_for(arm: tuple[str, list[dict] | None, dict], seed: int, args: argparse.Namespace) -> dict:
    algorithm, points, data = arm
    data = dict(data)
    epochs = args.epochs
    if data.pop("same_steps", False):
        epochs = round(args.epochs * (args.scenes - args.val_split) / data["labelled"])
    cfg = yaml.safe_load(open(PRESET, encoding="utf-8"))
    cfg["seed"] = seed
    cfg["data"].update({"val_split": args.val_split, "train_scenes": args.scenes, **data})
    cfg["trainer"].update({"epochs": epochs, "progress": False, "threads": args.threads})
    if points is None:
        cfg["algorithm"] = {"type": "vanilla"}
        cfg.pop("teachers")
    else:
        cfg["algorithm"] = {"type": algorithm, "student_loss_weight": 1.0}
        cfg["teachers"][0]["distill"] = points
    return cfg


def finished(tag: str, out: str) -> str | None:
    """The run directory of ``tag`` from an earlier call that finished (summary.json written)."""
    found = sorted(glob.glob(os.path.join(out, "runs", f"{tag}-2*", "summary.json")))
    return os.path.dirname(found[-1]) if found else None


def run_one(tag: str, cfg: dict, out: str) -> dict:
    earlier = finished(tag, out)
    if earlier is not None:  # a rerun of the command resumes: finished runs are read, not repeated
        return read_run(tag, earlier)
    proc, run_dir, _ = run_config(tag, cfg, out)
    if run_dir is None:
        return failure(tag, proc)
    return read_run(tag, run_dir)


def read_run(tag: str, run_dir: str) -> dict:
    summary = json.load(open(os.path.join(run_dir, "summary.json"), encoding="utf-8"))
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8")]
    val = [r["student"]["val"]["map50"] for r in rows]
    best = max(range(len(val)), key=lambda i: val[i])
    test = [r["student"]["test"] for r in rows]
    # the run's own time (summary.json: data, teacher training or loading, training, evaluation),
    # the same whether this call ran it or read it back
    return {"tag": tag, "run_dir": run_dir, "wall": summary["seconds"], "best_epoch": best + 1, "epochs": len(rows),
            "best": {k: test[best][k] for k in ("map50", "map")},
            "last": {k: test[-1][k] for k in ("map50", "map")},
            "teacher": {k: summary["teacher"][k] for k in ("map50", "map")} if "teacher" in summary else None}


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| arm | test mAP@.5, best val epoch | mAP@[.5:.95], best val | mAP@.5, last epoch | "
             "mAP@[.5:.95], last | best / all epochs | s / run |", "|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            lines.append(f"| {name} | failed: {runs[0].get('error')} | | | | | |")
            continue
        lines.append("| " + " | ".join([
            name, mean_std([r["best"]["map50"] for r in ok]), mean_std([r["best"]["map"] for r in ok]),
            mean_std([r["last"]["map50"] for r in ok]), mean_std([r["last"]["map"] for r in ok]),
            ",".join(f"{r['best_epoch']}/{r['epochs']}" for r in ok),
            f"{statistics.mean(r['wall'] for r in ok):.0f}"]) + " |")
    return "\n".join(lines)


def splice(report: str, path: str) -> None:
    tables.splice(report, path, START, END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--scenes", type=int, default=3000, help="training scenes (before the validation hold-out)")
    parser.add_argument("--val-split", type=int, default=500)
    parser.add_argument("--labelled", type=int, default=1250, help="labelled scenes of the data.labelled arms")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--arms", default="", help="comma list (default: all)")
    parser.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "detection-table"))
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--json", default=os.path.join(ROOT, "docs", "benchmarks", "detection_table.json"))
    parser.add_argument("--picture", default=os.path.join(ROOT, "docs", "benchmarks", "detection_scenes.png"),
                        help="where kdcore draw puts the picture of test scenes ('' for none)")
    args = parser.parse_args(argv)
    os.makedirs(os.path.join(args.runs_dir, "logs"), exist_ok=True)
    chosen = arms(args.labelled)
    if args.arms:
        chosen = {k: v for k, v in chosen.items() if k in args.arms.split(",")}
    started = time.time()
    jobs = {f"{name}-s{seed}": config_for(arm, seed, args) for name, arm in chosen.items()
            for seed in range(args.seeds)}
    done: dict[str, dict] = {}
    ran = sum(finished(tag, args.runs_dir) is None for tag in jobs)
    if "yolo_kd-s0" in jobs:  # alone first: it trains and caches the teacher the others load
        done["yolo_kd-s0"] = run_one("yolo_kd-s0", jobs["yolo_kd-s0"], args.runs_dir)
        print(f"yolo_kd-s0: {done['yolo_kd-s0'].get('best', done['yolo_kd-s0'].get('error'))}", flush=True)
    with futures.ThreadPoolExecutor(args.parallel) as pool:
        pending = {pool.submit(run_one, tag, cfg, args.runs_dir): tag for tag, cfg in jobs.items() if tag not in done}
        for job in futures.as_completed(pending):
            result = job.result()
            done[result["tag"]] = result
            print(f"{result['tag']}: {result.get('best', result.get('error'))}", flush=True)
    results = {name: [done[f"{name}-s{seed}"] for seed in range(args.seeds)] for name in chosen}
    teacher = next((r["teacher"] for rs in results.values() for r in rs if r.get("teacher")), None)
    total = time.time() - started
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump({"results": results, "teacher": teacher, "seconds": total, "argv": argv or sys.argv[1:]}, f, indent=1)
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    report = "\n".join([
        f"Command: `python benchmarks/detection_table.py {shown}` ({total / 60:.1f} min for this call, "
        f"which ran {ran} of the {len(jobs)} runs and read the others back; {args.parallel} runs at a "
        f"time, {args.threads} thread each, niced, on the shared 2-core CPU).", "",
        f"Teacher (yolo_teacher, 135k parameters): test mAP@.5 {teacher['map50']:.2f}, "
        f"mAP@[.5:.95] {teacher['map']:.2f}." if teacher else "Teacher: no run finished.", "",
        f"Student: yolo_student (22k parameters), {args.epochs} epochs; best epoch chosen on the "
        f"{args.val_split} validation scenes; mean ± std over {args.seeds} seeds.", "",
        table(results), ""])
    splice(report, args.out)
    print(report)
    shown_arms = [a for a in ("vanilla", "yolo_kd_no_fmnms", "yolo_kd") if a in results]
    if args.picture and len(shown_arms) > 1:  # seed 0 of each; the first run's teacher comes first
        draw = [sys.executable, "-m", "kdcore", "draw", *[results[a][0]["run_dir"] for a in shown_arms],
                "--out", args.picture, "--min-score", "0.25"]
        proc = subprocess.run(draw, capture_output=True, text=True)
        print(proc.stdout + proc.stderr if proc.returncode else f"picture: {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
