"""Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018) as a kdcore algorithm.

A cohort of K >= 2 students learns from scratch, with no teacher: each student is trained on
the labels and on the predictions of the others. Every student has its own optimizer, and
within a batch they are updated in turns, k = 0 .. K-1 (the paper's Algorithm 1):

    loss_k = CE(y, p_k) + kl_weight * 1/(K-1) * sum_{l != k} KL(p_l || p_k)

``p = softmax(logits)``; the peers' ``p_l`` are detached and recomputed from their current
weights just before student ``k``'s update, so student 1 learns from student 0 as it is after
student 0's update on this very batch. One summed backward cannot do this, so the algorithm owns
its optimisation step (:meth:`kdcore.Algorithm.optimizers`).
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdcore
from kdcore.assemble import build_model
from kdcore.config import StudentConfig, structure
from kdcore.engine.checkpoint import load_weights


def mutual_kl(logits: torch.Tensor, peer_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``mean over peers l of KL(p_l || p_k)``, each summed over classes and averaged over the
    batch; ``p_k = softmax(logits)``. The peers are targets: detached, no gradient reaches them."""
    dtype = torch.promote_types(logits.dtype, torch.float32)  # fp16/bf16 logits: in float32
    log_p = F.log_softmax(logits.to(dtype), dim=1)
    kls = [F.kl_div(log_p, F.log_softmax(peer.detach().to(dtype), dim=1), reduction="batchmean",
                    log_target=True) for peer in peer_logits]
    return torch.stack(kls).mean()


def _block(value: Any, where: str) -> StudentConfig | nn.Module:
    """A model block as the config's ``student:`` takes it: ``{type: NAME, ...params}`` or NAME
    (or, from Python, a network to use as it is)."""
    if isinstance(value, (StudentConfig, nn.Module)):
        return value
    return structure(StudentConfig, {"type": value} if isinstance(value, str) else value, where)


class DeepMutualLearning(kdcore.Algorithm):
    """K students trained together in turns, each on CE plus the mean KL from the others.

    The first student is the config's ``student`` (evaluated, exported as ``student.pt`` and
    reported as ``student``); the others are scored after every epoch as ``student1`` ...
    Optimizers are named ``student0`` ... ``student{K-1}``; the logged terms are
    ``student{k}_ce`` and ``student{k}_kl`` (the latter already multiplied by ``kl_weight``).

    :param students: the cohort size K (default 2) when ``peers`` is not given: the K-1 other
        students are new networks of the config's ``student`` block, each with its own random
        initialisation (its ``checkpoint`` is not loaded into them).
    :param peers: the other students' model blocks instead, e.g. ``[{type: cnn_student}]``
        (another architecture is fine: the paper mixes them); K is then ``1 + len(peers)``.
        From Python, networks (``nn.Module``) may stand in for blocks.
    :param kl_weight: weight of the mimicry term (paper: 1).
    """

    takes_teachers = False

    def __init__(self, student: nn.Module, task: Any, distiller: kdcore.Distiller | None = None, *,
                 num_classes: int, input_shape: Sequence[int], config: Any = None,
                 students: int | None = None, peers: list[Any] | None = None,
                 kl_weight: float = 1.0) -> None:
        if distiller is not None and len(distiller.teachers):
            raise kdcore.UserError("algorithm 'dml' trains its students without teachers; set teachers: []",
                                   key_path="algorithm")
        if getattr(task, "target_kind", "label") != "label":
            raise kdcore.UserError("algorithm 'dml' compares the students' class probabilities, so it "
                                   "needs a classification data set (e.g. data.type: fashion_mnist)",
                                   key_path="algorithm")
        if kl_weight < 0:
            raise kdcore.UserError(f"algorithm.kl_weight: must be >= 0, got {kl_weight}",
                                   key_path="algorithm.kl_weight")
        blocks = self._peer_blocks(config, students, peers)
        super().__init__(student, task, None)
        self.kl_weight = float(kl_weight)
        source = types.SimpleNamespace(num_classes=num_classes, input_shape=tuple(input_shape))
        built = []
        for i, block in enumerate(blocks):
            if isinstance(block, nn.Module):
                built.append(block)
                continue
            where = f"algorithm.peers[{i}]" if peers is not None else "student"
            model = build_model(block, source, where)
            if peers is not None and block.checkpoint:
                load_weights(model, os.path.expanduser(block.checkpoint), what=f"{where}.checkpoint")
            built.append(model)
        self.peers = nn.ModuleList(built)

    @staticmethod
    def _peer_blocks(config: Any, students: int | None,
                     peers: list[Any] | None) -> list[StudentConfig | nn.Module]:
        if peers is not None:
            if not isinstance(peers, list) or not peers:
                raise kdcore.UserError("algorithm.peers: give a list of one or more model blocks, "
                                       "e.g. [{type: cnn_student}]", key_path="algorithm.peers")
            if students is not None and students != 1 + len(peers):
                raise kdcore.UserError(f"algorithm.students: {students} does not match the "
                                       f"{1 + len(peers)} students that student + peers make; drop one",
                                       key_path="algorithm.students")
            return [_block(p, f"algorithm.peers[{i}]") for i, p in enumerate(peers)]
        count = 2 if students is None else students
        if count < 2:
            raise kdcore.UserError(f"algorithm.students: mutual learning needs at least 2 students, got {count}",
                                   key_path="algorithm.students")
        if config is None:  # built outside a run: the config's student block is not known
            raise kdcore.UserError("algorithm.peers: give the other students' model blocks, e.g. "
                                   "[{type: cnn_student}]", key_path="algorithm.peers")
        return [config.student] * (count - 1)

    @property
    def students(self) -> list[nn.Module]:
        """The cohort, in update order: the config's student first."""
        return [self.student, *self.peers]

    def optimizers(self, build: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
                   ) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per student, of the configured kind, on the configured schedule."""
        return {f"student{k}": build([{"params": [p for p in model.parameters() if p.requires_grad]}])
                for k, model in enumerate(self.students)}

    def optimization_step(self, batch: kdcore.Batch, *, epoch: int, step: int,
                          update: Callable[[torch.Tensor, str], bool]) -> dict[str, torch.Tensor]:
        """Each student in turn: its loss against the others' predictions as they are now, then
        its optimizer's step (the peers' forward passes run again after every update)."""
        terms: dict[str, torch.Tensor] = {}
        for k, model in enumerate(self.students):
            logits = model(batch.inputs)
            with torch.no_grad():
                peer_logits = [peer(batch.inputs) for l, peer in enumerate(self.students) if l != k]
            ce = self.task.loss(logits, batch.targets)
            kl = self.kl_weight * mutual_kl(logits, peer_logits)
            update(ce + kl, f"student{k}")
            terms[f"student{k}_ce"], terms[f"student{k}_kl"] = ce.detach(), kl.detach()
        return terms

    def evaluation_models(self) -> dict[str, nn.Module]:
        """Every student: the first (``student``) is exported, the others are scored too."""
        return {"student" if k == 0 else f"student{k}": model for k, model in enumerate(self.students)}
