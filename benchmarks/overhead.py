"""Per-step cost of kdcore's training loop against a hand-written PyTorch loop doing the same work.

Both arms run in this one process on the same models (same initial weights), the same batches
(the same in-memory tensor, the same per-epoch permutation) and the same optimizer settings:

* **kdcore**: the preset is loaded with :func:`kdcore.config.load_config`, data, teachers,
  student and algorithm are built with :mod:`kdcore.assemble` as ``kdcore run`` builds them
  (teachers untrained: timing does not depend on their weights), and steps are taken by
  :func:`kdcore.engine.loop.train_epochs` itself (``progress=False``), i.e. ``training_step``,
  sum of terms, NaN check, backward, optimizer and schedule step, per-term logging.
* **hand**: plain ``nn.Module`` s holding copies of the same weights, features read by a
  hand-written forward, the loss written inline, ``torch.optim.SGD`` + ``LambdaLR`` (cosine),
  one ``loss.item()`` per step for logging, as a typical script does.

The arms alternate in blocks (ABBA ABBA ...) after a warm-up, so drift from other load on the
machine hits both alike. A step is the time between the ends of two consecutive steps of a
block (batch fetch included on both sides); with ``--device cuda`` the GPU is synchronised
before every timestamp. Before timing, one batch is run through both arms and their losses and
gradients are compared, so the two arms are known to compute the same thing.

Each ratio is reported two ways: the ratio of the arms' median step times, and the median of
the per-block ratios (each block of one arm against the hand block of the same round) with a
bootstrap 95% interval. ``--control`` adds the hand loop a second time as its own arm: its
ratio to the hand arm should be 1.000, and how far it is not is the noise a ratio carries on
that machine (on a shared CPU or a launch-bound GPU step, a few percent).

Usage::

    python benchmarks/overhead.py --device cpu --steps 400 --json overhead.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from copy import deepcopy
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.assemble import Splits, build_algorithm, build_model, load_data
from kdcore.components import Algorithm, Batch
from kdcore.config import RunConfig, load_config, read_yaml
from kdcore.engine.batches import TrainBatches, epoch_order
from kdcore.engine.cpu import tune_cpu
from kdcore.engine.loop import ENGINE_OPTIMIZER, LoopSettings, TrainingState, train_epochs
from kdcore.engine.optim import make_optimizer, make_scheduler
from kdcore.engine.run import speed_up

GOAL = 1.03
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def preset_path(method: str) -> str:
    """The preset YAML of ``method`` (``kd``: the core default job; ``ofd``: the OFD plugin's)."""
    if method == "kd":
        return str(resources.files("kdcore") / "presets" / "teacher_student.yaml")
    if method == "ofd":
        try:
            return str(resources.files("kdcore_plugin_ofd") / "presets" / "fashion_mnist.yaml")
        except ModuleNotFoundError:
            return os.path.join(REPO, "plugins", "kdcore-plugin-ofd", "kdcore_plugin_ofd",
                                "presets", "fashion_mnist.yaml")
    raise SystemExit(f"unknown method {method!r}; choose kd or ofd")


def sync_fn(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                            "device": str(device), "loadavg": list(os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --- the kdcore arm --------------------------------------------------------------------------

class KdcoreSetup:
    """Everything ``kdcore run`` builds before training, minus teacher training and caching."""

    def __init__(self, config: RunConfig, splits: Splits, device: torch.device,
                 rewrites: bool = True) -> None:
        self.config = config
        self.device = device
        torch.manual_seed(config.seed)
        teachers = {t.name: build_model(t, splits.source, f"teachers[{i}]")
                    for i, t in enumerate(config.teachers)}
        torch.manual_seed(config.seed)
        student = build_model(config.student, splits.source, "student")
        self.algorithm: Algorithm = build_algorithm(config, splits, student, teachers)
        self.algorithm.to(device)
        if rewrites:  # teacher layout, BatchNorm folding, CPU max pooling, as ``kdcore run`` does
            speed_up(self.algorithm, config, device)
        self.batches = TrainBatches(splits.train, config.data.batch_size, config.seed, device=device)
        self.optimizer = make_optimizer(self.algorithm.parameter_groups(), config.optimizer)
        self.scheduler = make_scheduler(self.optimizer, config.schedule, len(self.batches),
                                        config.trainer.epochs)
        self.position = TrainingState()
        # every epoch's batches, one after another; chain and islice are C iterators, so a step
        # pulls its batch through TrainBatches.epoch's generator alone, as in ``kdcore run``
        self._stream = itertools.chain.from_iterable(self.batches.epoch(e) for e in itertools.count())

    def block(self, n: int, stamp: Callable[..., None], progress: bool = False) -> None:
        """``n`` steps through :func:`train_epochs`, one "epoch" per block (its set-up before
        the first step and its summary after the last fall outside the timed intervals)."""
        self.position = train_epochs(
            self.algorithm, _Take(self._stream, n), self.position,
            LoopSettings(self.position.epoch + 1, {ENGINE_OPTIMIZER: self.optimizer},
                         {ENGINE_OPTIMIZER: self.scheduler}, on_nonfinite=self.config.trainer.on_nonfinite,
                         grad_clip=self.config.trainer.grad_clip, progress=progress, on_step=stamp))


class _Take:
    """The next ``n`` batches of a shared stream, shaped like :class:`TrainBatches`."""

    def __init__(self, stream: Iterator[Batch], n: int) -> None:
        self.stream, self.n = stream, n

    def __len__(self) -> int:
        return self.n

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        return itertools.islice(self.stream, self.n - start_step)


# --- the hand-written arm --------------------------------------------------------------------

def stage_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """SmallCNN's forward written out, returning the logits and each stage's BN output
    (the pre-ReLU feature), the way a hand-written feature-distillation script reads them."""
    feats = []
    for i in range(model.num_stages):
        stage = getattr(model, f"stage{i + 1}")
        x = stage.bn(stage.conv(x))
        feats.append(x)
        x = stage.relu(x)
        if hasattr(stage, "pool"):
            x = stage.pool(x)
    return model.fc(model.embedding(model.pool(x))), feats


def ofd_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """E[x | x < 0] for x ~ N(beta, gamma^2) per channel (-3|gamma| when P(x<0) <= 1e-3)."""
    s = bn.weight.detach().double().abs().cpu().clamp_min(1e-12)
    mu = bn.bias.detach().double().cpu()
    mass = torch.special.ndtr(-mu / s)
    pdf = torch.exp(-0.5 * (mu / s) ** 2) / math.sqrt(2 * math.pi)
    return torch.where(mass > 1e-3, mu - s * pdf / mass.clamp_min(1e-3), -3 * s).float()


class HandLoop:
    """A plain PyTorch KD/OFD training loop over copies of the kdcore arm's modules."""

    def __init__(self, method: str, kd: KdcoreSetup, fused: bool | None = None) -> None:
        """``fused``: the optimizer's kernel; ``None`` = the same as the kdcore arm's."""
        cfg, alg, device = kd.config, kd.algorithm, kd.device
        self.method, self.device = method, device
        self.student = plain_copy(alg.student).train()
        self.teacher = plain_copy(alg.distiller.teachers[cfg.teachers[0].name]).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.task_weight = float(cfg.algorithm.params.get("student_loss_weight", 1.0))
        points = cfg.teachers[0].distill
        self.connectors = nn.ModuleList()
        self.point_weights: list[float] = []
        self.margins: list[torch.Tensor] = []
        if method == "kd":
            loss = points[0].head.losses[0]
            self.kd_weight, self.temperature = loss.weight, float(loss.params.get("temperature", 4.0))
        else:
            self.div = float(points[0].head.losses[0].params.get("div_factor", 1000.0))
            for i, (p, dp) in enumerate(zip(points, alg.distiller.points)):
                conv = kd.algorithm.distiller.heads[dp.name].student_connector
                hand = nn.Sequential(OrderedDict(
                    conv=nn.Conv2d(conv.conv.in_channels, conv.conv.out_channels, 1, bias=False),
                    bn=nn.BatchNorm2d(conv.conv.out_channels)))
                hand.load_state_dict(conv.state_dict())
                self.connectors.append(hand.to(device).train())
                self.point_weights.append(p.head.losses[0].weight)
                bn = getattr(self.teacher, f"stage{i + 1}").bn
                self.margins.append(ofd_margin(bn).view(1, -1, 1, 1).to(device))
        params = list(self.student.parameters()) + list(self.connectors.parameters())
        o = cfg.optimizer
        if fused is None:
            fused = bool(kd.optimizer.defaults.get("fused"))
        self.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                         weight_decay=o.weight_decay, nesterov=o.nesterov,
                                         **({"fused": True} if fused else {}))
        total = len(kd.batches) * cfg.trainer.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total))))
        data = kd.batches.data  # the same in-memory tensors (already on the device)
        self.inputs, self.targets = data.inputs, data.targets
        self.batch_size, self.seed, self.n = kd.batches.batch_size, cfg.seed, len(kd.batches)
        self.running = 0.0
        self._stream = self._forever()

    def _forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            order = epoch_order(len(self.inputs), self.seed, epoch)[: self.n * self.batch_size]
            for idx in order.to(self.device).split(self.batch_size):
                yield self.inputs[idx], self.targets[idx]
            epoch += 1

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.method == "kd":
            s = self.student(x)
            with torch.no_grad():
                t = self.teacher(x)
            T = self.temperature
            kd = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1),
                          reduction="batchmean", log_target=True) * (T * T)
            return self.task_weight * F.cross_entropy(s, y) + self.kd_weight * kd
        s_out, s_feats = stage_forward(self.student, x)
        with torch.no_grad():
            _, t_feats = stage_forward(self.teacher, x)
        loss = self.task_weight * F.cross_entropy(s_out, y)
        for conn, w, m, sf, tf in zip(self.connectors, self.point_weights, self.margins, s_feats, t_feats):
            s = conn(sf)
            t = torch.maximum(tf, m)
            keep = ((s > t) | (t > 0)).float()
            loss = loss + w * ((s - t).pow(2) * keep).sum() / (s.shape[0] * self.div)
        return loss

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = self.loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.running += loss.item()

    def block(self, n: int, stamp: Callable[[], None]) -> None:
        for _ in range(n):
            x, y = next(self._stream)
            self.step(x, y)
            stamp()


def plain_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (weights, buffers) without kdcore's forward hooks on it."""
    copy = deepcopy(module)
    for m in copy.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return copy


def parity(kd: KdcoreSetup, hand: HandLoop) -> dict[str, float]:
    """One batch through both arms, no step: relative loss difference and max grad difference."""
    batch = next(kd.batches.epoch(0))
    kd.algorithm.train()
    terms = kd.algorithm.training_step(batch, epoch=0, step=0)
    k_loss = sum(terms.values())
    h_loss = hand.loss(batch.inputs, batch.targets)
    kd.optimizer.zero_grad(set_to_none=True)
    hand.optimizer.zero_grad(set_to_none=True)
    k_loss.backward()
    h_loss.backward()
    grad_diff = max(float((a.grad - b.grad).abs().max())
                    for a, b in zip(kd.algorithm.student.parameters(), hand.student.parameters()))
    kd.optimizer.zero_grad(set_to_none=True)
    hand.optimizer.zero_grad(set_to_none=True)
    k, h = float(k_loss.detach()), float(h_loss.detach())
    return {"kdcore_loss": k, "hand_loss": h, "loss_rel_diff": abs(k - h) / max(abs(k), 1e-12),
            "student_grad_max_abs_diff": grad_diff}


# --- timing ------------------------------------------------------------------------------------

def timed(run_block: Callable[[int, Callable[[], None]], None], n: int,
          sync: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Per-step seconds of one block of ``n`` steps (``n - 1`` intervals between step ends)."""
    stamps: list[float] = []

    def stamp(*_position: Any) -> None:  # also train_epochs' on_step(position)
        sync()
        stamps.append(clock())

    run_block(n, stamp)
    return [b - a for a, b in itertools.pairwise(stamps)]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bootstrap_median(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the median of ``values`` (seeded: reruns agree)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


# the arms besides "kdcore" and "hand", with the label of their table rows
EXTRA_ARMS = {"kdcore+bar": "kdcore with progress bar", "hand+again": "control: hand against itself"}


def measure(method: str, config: RunConfig, splits: Splits, device: torch.device, *, steps: int,
            block: int, warmup: int, progress_arm: bool, clock: Callable[[], float],
            log: Callable[[str], None], control_arm: bool = False) -> dict[str, Any]:
    kd = KdcoreSetup(config, splits, device)
    hand = HandLoop(method, kd)
    check = parity(kd, hand)
    if check["loss_rel_diff"] > 1e-4 or check["student_grad_max_abs_diff"] > 1e-4:
        raise SystemExit(f"{method}: the two arms do not compute the same loss: {check}")
    sync = sync_fn(device)

    def kd_block(n: int, stamp: Callable[[], None]) -> None:
        kd.block(n, stamp)

    def kd_bar_block(n: int, stamp: Callable[[], None]) -> None:
        # the bar is drawn, into /dev/null (opened before the block's first timed step)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            kd.block(n, stamp, progress=True)

    arms: dict[str, Callable[[int, Callable[[], None]], None]] = {"kdcore": kd_block, "hand": hand.block}
    if progress_arm:
        arms["kdcore+bar"] = kd_bar_block
    if control_arm:  # the hand loop again, as an arm of its own: what the method reads when
        arms["hand+again"] = hand.block  # nothing differs (ideally 1.000) is its noise floor
    for fn in arms.values():
        timed(fn, warmup + 1, sync, clock)
    per_arm: dict[str, list[float]] = {name: [] for name in arms}
    block_medians: dict[str, list[float]] = {name: [] for name in arms}
    faults: dict[str, int] = {name: 0 for name in arms}
    rounds = max(1, math.ceil(steps / (block - 1)))
    names = list(arms)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]  # ABBA: cancels linear drift and order effects
        for name in order:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times = timed(arms[name], block, sync, clock)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            per_arm[name].extend(times)
            block_medians[name].append(statistics.median(times))
        if (r + 1) % max(1, rounds // 4) == 0:
            log(f"  {method}: round {r + 1}/{rounds}")
    kd.algorithm.remove_taps()
    out: dict[str, Any] = {"method": method, "steps_per_arm": len(per_arm["hand"]),
                           "block": block, "rounds": rounds, "parity": check}
    for name, times in per_arm.items():
        out[name] = {"median_ms": 1e3 * statistics.median(times), "p10_ms": 1e3 * quantile(times, 0.1),
                     "p90_ms": 1e3 * quantile(times, 0.9), "mean_ms": 1e3 * statistics.fmean(times),
                     "minor_faults_per_step": faults[name] / (rounds * block)}
    for name in arms:
        if name == "hand":
            continue
        pair = [a / b for a, b in zip(block_medians[name], block_medians["hand"])]
        key = "ratio" if name == "kdcore" else f"ratio_{name}"
        out[key] = out[name]["median_ms"] / out["hand"]["median_ms"]
        low, high = bootstrap_median(pair)
        out[f"{key}_blocks"] = {"median": statistics.median(pair), "p25": quantile(pair, 0.25),
                                "p75": quantile(pair, 0.75), "ci95": [low, high]}
    return out


def table(results: list[dict[str, Any]]) -> str:
    header = ("| method | kdcore ms/step | hand ms/step | kdcore / hand | per-block ratio median [p25, p75] "
              f"| 95% CI of that median | faults/step kdcore / hand | goal <= {GOAL} |")
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        hand = r["hand"]
        for name in ("kdcore", *EXTRA_ARMS):
            if name not in r:
                continue
            key = "ratio" if name == "kdcore" else f"ratio_{name}"
            b, arm = r[f"{key}_blocks"], r[name]
            label = r["method"] if name == "kdcore" else f"{r['method']} ({EXTRA_ARMS[name]})"
            verdict = "-" if name == "hand+again" else "met" if r[key] <= GOAL else "NOT met"
            lines.append(f"| {label} | {arm['median_ms']:.2f} | {hand['median_ms']:.2f} | {r[key]:.3f} | "
                         f"{b['median']:.3f} [{b['p25']:.3f}, {b['p75']:.3f}] | "
                         f"[{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}] | "
                         f"{arm['minor_faults_per_step']:.0f} / {hand['minor_faults_per_step']:.0f} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=400, help="timed steps per arm and method")
    parser.add_argument("--block", type=int, default=26, help="steps per block (first is not timed)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per arm before timing")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: kdcore's tune_cpu choice: OMP_NUM_THREADS, "
                             "else the physical cores)")
    parser.add_argument("--methods", default="kd,ofd", help="comma-separated: kd, ofd")
    parser.add_argument("--progress", action="store_true",
                        help="add a third arm: kdcore with its progress bar on (drawn to /dev/null)")
    parser.add_argument("--control", action="store_true",
                        help="add an arm that runs the hand loop again: its ratio to the hand arm "
                             "(ideally 1.000) shows how far this machine's noise alone moves a ratio")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every preset (e.g. data.root=DIR)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: perf_counter; cpu: process CPU time, which ignores the time this "
                             "process waits for a core on a shared machine (CPU runs; best with "
                             "--threads 1)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT")
    args = parser.parse_args(argv)
    if args.block < 3:
        parser.error("--block must be at least 3")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is available")
    if device.type == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu measures host CPU time only; use --clock wall with --device cuda")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if device.type == "cpu":
        tune_cpu(args.threads)
    elif args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device)
    info["clock"] = args.clock
    results, splits, data_key = [], None, None
    for method in args.methods.split(","):
        path = preset_path(method.strip())
        config = load_config(read_yaml(path), list(args.overrides))
        key = repr(config.data)
        if key != data_key:  # both presets share the data block: decode it once
            splits, data_key = load_data(config.data), key
        log(f"{method}: {path}")
        results.append(measure(method.strip(), config, splits, device, steps=args.steps,
                               block=args.block, warmup=args.warmup, progress_arm=args.progress,
                               control_arm=args.control, clock=clock, log=log))
    info["loadavg_end"] = list(os.getloadavg())
    print(f"kdcore step overhead, {info['device']}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}, "
          f"{info['threads']} threads, {args.clock} clock, torch {info['torch']}, load {info['loadavg'][0]:.1f} -> "
          f"{info['loadavg_end'][0]:.1f}\n")
    print(table(results))
    for r in results:
        p = r["parity"]
        print(f"\n{r['method']}: {r['steps_per_arm']} timed steps per arm; parity: loss rel diff "
              f"{p['loss_rel_diff']:.1e}, student grad max diff {p['student_grad_max_abs_diff']:.1e}")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "goal": GOAL, "results": results}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
