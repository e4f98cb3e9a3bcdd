"""Does ``trainer.cpu_tuning``'s glibc ``mallopt`` still matter? Minor page faults and CPU time
per training step of the default teacher/student pair, with and without it, in fresh processes.

    python benchmarks/page_faults.py --pairs 3

Each arm is its own process (mallopt cannot be undone in-process), alternating; 20 warm-up steps,
then 100 measured Hinton-KD steps at batch 128 on one thread. Prints one line per process.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time


def measure(tuned: bool, steps: int) -> None:
    import torch
    import torch.nn.functional as F

    from kdcore.engine.cpu import keep_freed_memory
    from kdcore.models.cnn import cnn_student, cnn_teacher

    if tuned:
        keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher, student = cnn_teacher(num_classes=10, in_channels=1).eval(), cnn_student(num_classes=10, in_channels=1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def step() -> None:
        with torch.no_grad():
            soft = teacher(x).softmax(1)
        out = student(x)
        loss = F.cross_entropy(out, y) + F.kl_div(out.log_softmax(1), soft, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(20):
        step()
    faults, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    for _ in range(steps):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    print(f"{'mallopt' if tuned else 'glibc default':>13}: {faults:8.1f} minor faults/step, "
          f"{(time.process_time() - started) * 1000 / steps:6.1f} CPU ms/step", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--arm", choices=["default", "mallopt"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        measure(args.arm == "mallopt", args.steps)
        return
    for _ in range(args.pairs):
        for arm in ("default", "mallopt"):
            subprocess.run([sys.executable, __file__, "--arm", arm, "--steps", str(args.steps)], check=True)


if __name__ == "__main__":
    main()
