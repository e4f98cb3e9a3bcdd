"""Many processes with PyTorch's DistributedDataParallel, launched by ``torchrun``.

    torchrun --nproc-per-node 2 -m kdcore run --config ...

``data.batch_size`` is the global batch: every rank takes its slice of each global batch of the
one seeded order, so N processes see the batches one process would (and a checkpoint resumes
under any process count). Gradients are averaged by DDP; loss terms are reduced across ranks;
rank 0 alone logs, shows progress and writes checkpoints and metrics. Teachers are frozen and
left out of DDP's synchronisation.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..components.algorithm import is_teacher_state
from ..errors import UserError

T = TypeVar("T")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_local_main() -> bool:
    """The first process on this machine (``LOCAL_RANK`` 0): machine-local work such as filling
    a cache on a disk the other machines may not share."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


# A CPU group with a long timeout for decisions some ranks wait on while one works for long
# (filling the teacher-output cache): NCCL's default would kill the job after 10 minutes.
PATIENT_TIMEOUT = timedelta(hours=24)
_patient_group: Any = None


def is_main() -> bool:
    return rank() == 0


def setup(device_name: str) -> torch.device | None:
    """Join the process group when launched by torchrun; returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device_name == "cuda" or device_name.startswith("cuda:")  # cuda:N too: its local GPU
    if wants_cuda and not torch.cuda.is_available():
        raise UserError(f"config key trainer.device: {device_name} was asked for but no GPU is "
                        f"available; use cpu or auto")
    use_cuda = torch.cuda.is_available() and (device_name == "auto" or wants_cuda)
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device("cuda", local) if use_cuda else torch.device("cpu")


def teardown() -> None:
    global _patient_group
    _patient_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_sums(sums: dict[str, float], seen: int) -> tuple[dict[str, float], int]:
    """Sum per-rank loss sums and counts, so epoch metrics cover every rank's samples. (Skips
    need no sum: all ranks decide them together, the loop's all_ranks, so each rank counts each.)"""
    if world_size() == 1:
        return sums, seen
    names = list(sums)  # the same insertion order on every rank
    values = torch.tensor([sums[n] for n in names] + [float(seen)], dtype=torch.float64)
    dist.all_reduce(values)
    return {n: float(v) for n, v in zip(names, values[:-1])}, int(values[-1])


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average gradients across ranks by hand, for the updates that run outside DDP (an
    algorithm's own optimizers, the pre-trainings)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size()


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` concatenated along dim 0, in rank order, on every process;
    ``tensor`` itself in a single process. For state a component keeps over the whole data set
    (a memory bank): updated from the global batch, it stays identical on every rank. Not
    differentiable; every rank must call it with the same shape (the global batch divides)."""
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts)


def mean_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the processes (``tensor`` in a single process)."""
    if world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def synced_buffer_names(algorithm: nn.Module) -> list[str]:
    """Buffers a component keeps identical across processes itself (``synced_buffers``)."""
    return [f"{name}.{buffer}" if name else buffer for name, module in algorithm.named_modules()
            for buffer in getattr(module, "synced_buffers", ()) if buffer in module._buffers]


def all_ranks(flag: bool, device: torch.device, *, patient: bool = False) -> bool:
    """Whether ``flag`` holds on every process (``flag`` in a single process): for decisions
    every rank must take together, like skipping a batch that DDP would otherwise wait for.
    ``patient``: the others may wait here for a long time (one rank filling a cache), so the
    agreement goes through a CPU group with a 24-hour timeout instead of the run's own."""
    if world_size() == 1:
        return flag
    group = None  # the run's own
    if patient:
        global _patient_group
        if _patient_group is None:  # made on first use (every rank gets here): a run that never
            # needs it does not depend on gloo finding a network interface
            _patient_group = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
        group, device = _patient_group, torch.device("cpu")  # gloo reduces CPU tensors
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=group)
    return bool(value.item())


def local_main_first(first: Callable[[], T], device: torch.device, what: str,
                     others: Callable[[], T] | None = None) -> T:
    """``first()`` on each machine's first process (``LOCAL_RANK`` 0), then, once it worked on
    every machine, ``others()`` (default: ``first()`` again) on the rest, which then find what it
    built (a trained teacher, a filled cache) rather than race it. The others wait in the
    patient group, so a long build does not hit the run's timeout. Both turns end in an
    agreement: a failure on any process stops every process at once, with its error where it
    happened and a pointer to it elsewhere, so nobody waits for a build that will not come."""
    if world_size() == 1:
        return first()
    result: Any = None
    for mine, turn in ((is_local_main(), first), (not is_local_main(), others or first)):
        failure: BaseException | None = None  # every rank takes part in both agreements
        if mine:
            try:
                result = turn()
            except BaseException as error:  # noqa: BLE001 - raised below, after the others hear of it
                failure = error
        if not all_ranks(failure is None, device, patient=True):
            if failure is not None:
                raise failure
            raise UserError(f"{what} failed on another process (see its error above)")
    return result


def check_sync_batchnorm(device: torch.device) -> None:
    """Refuse ``trainer.sync_batchnorm`` on CPU processes, before any data or teacher work."""
    if world_size() > 1 and device.type != "cuda":
        raise UserError(f"trainer.sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only "
                        f"and this run is on {device.type}; set trainer.sync_batchnorm=false")


def use_sync_batchnorm(algorithm: nn.Module) -> int:
    """``trainer.sync_batchnorm``: under torchrun, every trainable BatchNorm (student,
    connectors, losses' own) normalises with the statistics of the whole
    global batch (torch's ``SyncBatchNorm``); frozen teachers keep theirs. Returns how many.

    Each module's class is changed in place, as ``SyncBatchNorm.convert_sync_batchnorm`` would
    do with a copy: the same object keeps its parameters, buffers, module path and the forward
    hooks of taps, so ``state_dict`` keys and feature taps are unchanged. One process has
    nothing to synchronise and is left as it is. The run has refused CPU processes
    (:func:`check_sync_batchnorm`) before it builds anything."""
    if world_size() == 1:
        return 0
    distiller = getattr(algorithm, "distiller", None)
    frozen = {id(m) for t in (distiller.teachers.values() if distiller is not None else ())
              for m in t.modules()}
    count, left = 0, []
    for name, module in algorithm.named_modules():
        if id(module) in frozen or not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            module.__class__ = nn.SyncBatchNorm
            module.process_group = None  # the default group: every rank
            count += 1
        elif not isinstance(module, nn.SyncBatchNorm):
            left.append(f"{name} ({type(module).__name__})")
    if left:  # a subclass may compute more than a BatchNorm: not converted, but said
        warnings.warn(f"trainer.sync_batchnorm: {len(left)} BatchNorm subclass layers keep per-process "
                      f"statistics: {', '.join(left[:5])}", stacklevel=2)
    return count


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


class _StepModule(nn.Module):
    """Makes the algorithm's training step DDP's forward, so DDP sees every trainable
    parameter: student, connectors and losses' own modules."""

    def __init__(self, algorithm: nn.Module) -> None:
        super().__init__()
        self.algorithm = algorithm

    def forward(self, batch: Any, epoch: int, step: int) -> dict[str, torch.Tensor]:
        return self.algorithm.training_step(batch, epoch=epoch, step=step)


def wrap(algorithm: nn.Module, device: torch.device) -> nn.Module | None:
    """A DDP module whose forward is the training step, or ``None`` in a single process."""
    if world_size() == 1:
        return None
    step = _StepModule(algorithm)
    frozen = [f"algorithm.{n}" for n, _ in [*algorithm.named_parameters(), *algorithm.named_buffers()]
              if is_teacher_state(n)]
    # kept in sync by their owners (gather_rows): DDP need not broadcast them every step
    frozen += [f"algorithm.{n}" for n in synced_buffer_names(algorithm)]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, frozen)
    # parameters trained only in a pre-training stage get no gradient in the main steps
    unused = any(True for _ in algorithm.stages())
    return nn.parallel.DistributedDataParallel(
        step, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused)


def check_batch(batch_size: int) -> None:
    """Every process takes an equal share of each global batch."""
    if batch_size % world_size():
        raise UserError(f"config key data.batch_size: {batch_size} (the global batch) must be "
                        f"divisible by the {world_size()} processes")
