"""The method table in docs/benchmarks.md: ``kdcore compare`` on the default job, in the
transfer-set regime (docs/benchmarks.md explains the choice).

- Fashion-MNIST; ``--val-split`` training images held out for model selection and the one tuned
  knob (KD temperature, on seed 0), never the test set.
- One teacher (cnn_teacher, trained once on every training label, cached) for every run.
- The student (cnn_student) sees labels on ``--labelled`` images only; the teacher's soft
  targets / features cover all of them. vanilla trains on the labelled images alone for the
  same number of optimizer steps (compare does this whenever ``data.labelled`` is set).

    python benchmarks/method_table.py --seeds 3 --epochs 3 --labelled 2000 --val-split 5000 --parallel 2 --teacher-cache --device cpu

This script only builds the compare command and puts its table between the markers of
``--out``; the runs, the table, runs.json and curves.png are compare's (kdcore-plugin-compare).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tables  # noqa: E402

START, END = "<!-- method-table:start -->", "<!-- method-table:end -->"


def every_method() -> list[str]:
    """vanilla and every installed preset written for the default job's data and student (the
    core's own presets aside: the default job is kd's)."""
    from kdcore.config import read_yaml
    from kdcore.registry import components

    found = []
    for reg in components("preset"):
        data = read_yaml(reg.component.resolve()) if reg.plugin != "kdcore" else {}
        if (data.get("data") or {}).get("type") == "fashion_mnist" and \
                (data.get("student") or {}).get("type") == "cnn_student":
            found.append(reg.component.name)
    return ["vanilla"] + found


def compare_args(args: argparse.Namespace) -> list[str]:
    methods = args.methods or ",".join(every_method())
    sets = [f"data.labelled={args.labelled}", f"data.val_split={args.val_split}", f"trainer.device={args.device}"]
    if args.train_limit:
        sets.append(f"data.train_limit={args.train_limit}")
    sets += args.set
    out = ["compare", "--config", "teacher_student", "--methods", methods, "--seeds", str(args.seeds),
           "--epochs", str(args.epochs), "--parallel", str(args.parallel), "--out", args.runs_dir]
    if not args.no_tune and "kd" in methods.split(","):
        out += ["--tune", "kd.temperature=1,2,4,8"]
    if args.teacher_cache:
        out.append("--teacher-cache")
    return out + [a for s in sets for a in ("--set", s)]


def splice(report: str, path: str) -> None:
    """Put ``report`` between the method-table markers of ``path`` (created if missing)."""
    tables.splice(report, path, START, END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--val-split", type=int, default=5000)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--device-label", default="", help="e.g. the CPU or GPU model, for the report")
    parser.add_argument("--methods", default="", help="comma list (default: vanilla and every preset)")
    parser.add_argument("--no-tune", action="store_true", help="skip the KD temperature sweep")
    parser.add_argument("--teacher-cache", action="store_true", help="distillation runs read teacher outputs from the cache")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more overrides of the default job, e.g. teachers.0.train.epochs=1")
    parser.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "method-table"),
                        help="the compare folder (an existing one is resumed)")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--json", default=os.path.join(ROOT, "docs", "benchmarks", "method_table.json"))
    args = parser.parse_args(argv)
    from kdcore.cli import main as kdcore

    cmd = compare_args(args)
    if os.path.isfile(os.path.join(args.runs_dir, "compare.json")):
        cmd = ["compare", "--resume", args.runs_dir]
    try:
        kdcore.main(cmd, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            return int(exc.code)
    figures = os.path.dirname(args.json)
    os.makedirs(figures, exist_ok=True)
    shutil.copyfile(os.path.join(args.runs_dir, "runs.json"), args.json)
    png = os.path.join(figures, "method_curves.png")
    shutil.copyfile(os.path.join(args.runs_dir, "curves.png"), png)
    shown = shlex.join(sys.argv[1:] if argv is None else argv)
    report = "\n".join([
        f"Command: `python benchmarks/method_table.py {shown}`, that is `kdcore {shlex.join(compare_args(args))}`",
        "", f"Device: {args.device}{f' ({args.device_label})' if args.device_label else ''}.", "",
        open(os.path.join(args.runs_dir, "table.md"), encoding="utf-8").read().rstrip(), "",
        f"![test curves]({os.path.relpath(png, os.path.dirname(os.path.abspath(args.out)))})", ""])
    splice(report, args.out)
    print(f"table written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
