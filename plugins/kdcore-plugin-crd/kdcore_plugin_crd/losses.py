"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020).

CRD makes the student's embedding of a sample recognisable among the teacher's embeddings of
many other samples (and the other way round), which transfers the structure of the teacher's
representation rather than matching it coordinate by coordinate.

Both sides go through their own trainable head, ``Linear(d -> feat_dim)`` then L2
normalisation, owned by the loss, so the student and teacher features may have any widths
(``same_shape = False``). The raw teacher feature is detached before its head: the teacher
head learns from the loss, nothing in front of it does.

:class:`CRDLoss` follows the paper's code: memory banks of past embeddings for every training
sample, ``K`` sampled negatives per anchor, and an NCE objective with a normaliser ``Z``
estimated once. :class:`CRDInBatchLoss` is the cheap variant for large data sets: the other
samples of the batch are the negatives and the objective is InfoNCE (cross-entropy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdcore

#: Added inside the NCE logarithms, as in the reference code.
_NCE_EPS = 1e-7
#: Score anchors against the whole bank (one matmul) when the bank has at most this many rows
#: per sampled column; otherwise gather the sampled rows first. Both give the same values; the
#: matmul is much faster on CPUs and small banks, the gather bounds memory on huge banks.
_DENSE_RATIO = 32
#: Redraws of negatives that fell in the anchor's class, in ``negatives: other_classes`` mode.
_REDRAWS = 10
_NEGATIVE_MODES = ("other_samples", "other_classes")


class Embed(nn.Module):
    """Flatten, ``Linear(in_dim -> out_dim)``, L2-normalise each row."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).float()
        if x.shape[1] != self.linear.in_features:
            raise ValueError(f"CRD embedding head expects {self.linear.in_features} features per "
                             f"sample, got {x.shape[1]}")
        return F.normalize(self.linear(x), p=2, dim=1)


def _width(shape: Sequence[int] | None, side: str) -> int:
    if shape is None:
        raise ValueError(f"{side}_shape is required (kdcore passes it from the tapped feature)")
    return math.prod(int(s) for s in shape)


def nce_loss(probs: torch.Tensor, num_samples: int) -> torch.Tensor:
    """NCE with noise distribution ``1/num_samples``; column 0 of ``probs`` is the positive.

    ``-(sum_b log(P_pos / (P_pos + K/N)) + sum_{b,k} log((K/N) / (P_neg + K/N))) / B``
    where ``K`` is the number of negative columns.
    """
    k = probs.shape[1] - 1
    noise = k / float(num_samples)
    pos, neg = probs[:, 0], probs[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + _NCE_EPS))
    log_d0 = torch.log(noise / (neg + noise + _NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / probs.shape[0]


class CRDLoss(kdcore.Loss):
    """Symmetric CRD: the student anchor against the teacher memory bank plus the teacher
    anchor against the student memory bank.

    For each anchor the positive is the bank entry of the same sample (``indices``) and the
    ``nce_k`` negatives are bank entries of other samples, drawn uniformly with replacement.
    Scores are ``exp(<anchor, entry> / temperature) / Z`` with ``Z`` estimated once, from the
    first training batch, as ``mean(exp(score)) * num_samples`` and then kept (a buffer, so it is
    checkpointed). After scoring, each bank row of the batch becomes
    ``normalise(momentum * row + (1 - momentum) * embedding)``. The banks and ``Z`` change only
    in training mode.

    :param student_shape: per-sample student feature shape (from kdcore's context).
    :param teacher_shape: per-sample teacher feature shape (from kdcore's context).
    :param num_samples: size of the training split, the number of bank rows (context).
    :param feat_dim: width of the embeddings and banks (paper: 128).
    :param nce_k: negatives per anchor (paper: 16384); capped at ``num_samples - 1``.
    :param temperature: softmax temperature of the scores (paper: 0.07).
    :param momentum: weight of the old bank row in the update (paper: 0.5).
    :param negatives: ``other_samples`` (any other sample) or ``other_classes`` (samples whose
        label, remembered from earlier batches, differs from the anchor's; needs ``targets``).
    """

    same_shape = False
    # under DDP every rank updates them from the whole global batch (kdcore.gather_rows), so
    # they stay identical without DDP broadcasting 2 x num_samples x feat_dim floats each step
    synced_buffers = ("memory_student", "memory_teacher", "z_student_anchor", "z_teacher_anchor", "labels")

    def __init__(
        self,
        student_shape: Sequence[int] | None = None,
        teacher_shape: Sequence[int] | None = None,
        num_samples: int | None = None,
        feat_dim: int = 128,
        nce_k: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        negatives: str = "other_samples",
    ) -> None:
        super().__init__()
        if num_samples is None or num_samples < 2:
            raise ValueError(f"crd needs num_samples >= 2 (the training split size, one memory "
                             f"bank row per sample), got {num_samples}")
        if feat_dim < 1 or nce_k < 1:
            raise ValueError(f"feat_dim and nce_k must be >= 1, got {feat_dim} and {nce_k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if negatives not in _NEGATIVE_MODES:
            raise ValueError(f"negatives must be one of {', '.join(_NEGATIVE_MODES)}, got {negatives!r}")
        self.num_samples = int(num_samples)
        self.nce_k = min(int(nce_k), self.num_samples - 1)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.negatives = negatives
        self.embed_student = Embed(_width(student_shape, "student"), feat_dim)
        self.embed_teacher = Embed(_width(teacher_shape, "teacher"), feat_dim)
        # Same start as the reference: uniform rows of expected norm about 1.
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        for name in ("memory_student", "memory_teacher"):
            self.register_buffer(name, torch.rand(self.num_samples, feat_dim).mul_(2 * stdv).sub_(stdv))
        # Normalisers of the student-anchor and teacher-anchor scores; < 0 means "not set yet".
        self.register_buffer("z_student_anchor", torch.tensor(-1.0))
        self.register_buffer("z_teacher_anchor", torch.tensor(-1.0))
        if negatives == "other_classes":
            self.register_buffer("labels", torch.full((self.num_samples,), -1, dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, nce_k={self.nce_k}, temperature={self.temperature}, "
                f"momentum={self.momentum}, negatives={self.negatives!r}")

    # --- sampling ------------------------------------------------------------------------

    def _uniform_others(self, indices: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` indices drawn uniformly from ``[0, N)`` minus each anchor's own index."""
        draw = torch.randint(0, self.num_samples - 1, (indices.shape[0], self.nce_k),
                             device=indices.device)
        return draw + (draw >= indices.unsqueeze(1)).long()

    def sample_negatives(self, indices: torch.Tensor, targets: Any = None) -> torch.Tensor:
        """``(B, nce_k)`` negative indices for the anchors ``indices``.

        In ``other_classes`` mode a negative whose remembered label equals the anchor's is
        redrawn (up to 10 times; the probability that one survives is negligible unless one
        class dominates). Samples not seen yet have no label and count as negatives, so the
        mode is exact from the second epoch on. Label -1 is no class: an unlabelled anchor
        (``data.labelled``) takes any negative, and unlabelled samples are everyone's negatives.
        """
        negatives = self._uniform_others(indices)
        if self.negatives == "other_classes":
            own = targets.unsqueeze(1)
            labelled = own >= 0
            for _ in range(_REDRAWS):
                same = (self.labels[negatives] == own) & labelled
                if not bool(same.any()):
                    break
                negatives = torch.where(same, self._uniform_others(indices), negatives)
        return negatives

    # --- scoring -------------------------------------------------------------------------

    def _scores(self, anchor: torch.Tensor, bank: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """``<anchor_b, bank[columns[b, j]]>`` as a ``(B, K + 1)`` tensor."""
        if self.num_samples <= _DENSE_RATIO * columns.shape[1]:
            # Clone: the bank is updated in place after scoring, and autograd keeps it for the
            # backward pass of the matmul.
            return (anchor @ bank.clone().t()).gather(1, columns)
        rows = bank.index_select(0, columns.reshape(-1)).view(*columns.shape, -1)
        return torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)

    def _probs(self, anchor: torch.Tensor, bank: torch.Tensor, columns: torch.Tensor,
               z: torch.Tensor) -> torch.Tensor:
        """``exp(score / T) / Z``; sets ``Z`` from this batch when it is not set yet."""
        unnormalised = torch.exp(self._scores(anchor, bank, columns) / self.temperature)
        if z.item() < 0:
            estimate = unnormalised.detach().mean() * self.num_samples
            if not self.training:
                return unnormalised / estimate  # evaluation never fixes the normaliser
            z.fill_(kdcore.mean_across_ranks(estimate).item())  # one Z on every rank
        return unnormalised / z

    @torch.no_grad()
    def _update(self, bank: torch.Tensor, indices: torch.Tensor, embedding: torch.Tensor) -> None:
        rows = bank.index_select(0, indices).mul_(self.momentum).add_(embedding.detach(),
                                                                       alpha=1.0 - self.momentum)
        bank.index_copy_(0, indices, F.normalize(rows, p=2, dim=1))

    # --- forward -------------------------------------------------------------------------

    def _check_extra(self, batch: int, extra: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        indices = extra.get("indices")
        if indices is None:
            raise kdcore.UserError("crd needs `indices` (each sample's position in the training "
                                   "split) in the loss call; the algorithm must pass them")
        indices = torch.as_tensor(indices, device=self.memory_student.device).long().view(-1)
        if indices.shape[0] != batch:
            raise ValueError(f"crd: got {indices.shape[0]} indices for a batch of {batch}")
        if bool(((indices < 0) | (indices >= self.num_samples)).any()):
            raise kdcore.UserError(f"crd: sample indices must be in [0, {self.num_samples}) "
                                   f"(num_samples), got {indices.min().item()}..{indices.max().item()}")
        targets = extra.get("targets")
        if self.negatives == "other_classes":
            if not torch.is_tensor(targets) or targets.dim() != 1 or targets.shape[0] != batch:
                raise kdcore.UserError("crd with negatives: other_classes needs integer class "
                                       "`targets` of shape (batch,)")
            targets = targets.to(self.labels.device).long()
        return indices, targets

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f"crd needs the same batch on both sides, got {student.shape[0]} "
                             f"student and {teacher.shape[0]} teacher samples")
        indices, targets = self._check_extra(student.shape[0], extra)
        v_s = self.embed_student(student)
        v_t = self.embed_teacher(teacher.detach())
        # the banks and labels follow the global batch (every rank's rows under DDP)
        everyone = kdcore.gather_rows(indices) if self.training else indices
        if self.negatives == "other_classes" and self.training:
            self.labels.index_copy_(0, everyone, kdcore.gather_rows(targets))
        columns = torch.cat([indices.unsqueeze(1), self.sample_negatives(indices, targets)], dim=1)
        p_s = self._probs(v_s, self.memory_teacher, columns, self.z_student_anchor)
        p_t = self._probs(v_t, self.memory_student, columns, self.z_teacher_anchor)
        if self.training:
            self._update(self.memory_student, everyone, kdcore.gather_rows(v_s.detach()))
            self._update(self.memory_teacher, everyone, kdcore.gather_rows(v_t.detach()))
        return nce_loss(p_s, self.num_samples) + nce_loss(p_t, self.num_samples)


class CRDInBatchLoss(kdcore.Loss):
    """CRD with in-batch negatives: no memory bank, so it scales to any data set size.

    With ``S`` the ``(B, B)`` matrix of ``<student_i, teacher_j> / temperature`` between the
    embedded, normalised features, the loss is ``CE(S, diag) + CE(S^T, diag)``: each student
    embedding must pick its own teacher embedding among the batch's and vice versa (InfoNCE,
    summed over both directions like CRD's two anchor terms). The ``B - 1`` negatives per
    anchor are far fewer than CRD's 16384, so larger batches help. When ``indices`` are given,
    a sample appearing twice in the batch is not used as its own negative.

    :param student_shape: per-sample student feature shape (from kdcore's context).
    :param teacher_shape: per-sample teacher feature shape (from kdcore's context).
    :param feat_dim: width of the embeddings (128 as in CRD).
    :param temperature: softmax temperature (0.07 as in CRD).
    """

    same_shape = False

    def __init__(
        self,
        student_shape: Sequence[int] | None = None,
        teacher_shape: Sequence[int] | None = None,
        feat_dim: int = 128,
        temperature: float = 0.07,
    ) -> None:
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be >= 1, got {feat_dim}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.embed_student = Embed(_width(student_shape, "student"), feat_dim)
        self.embed_teacher = Embed(_width(teacher_shape, "teacher"), feat_dim)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, **extra: Any) -> torch.Tensor:
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(f"crd_inbatch needs the same batch on both sides, got "
                             f"{student.shape[0]} student and {teacher.shape[0]} teacher samples")
        v_s = self.embed_student(student)
        v_t = self.embed_teacher(teacher.detach())
        logits = v_s @ v_t.t() / self.temperature
        indices = extra.get("indices")
        if torch.is_tensor(indices) and indices.numel() == logits.shape[0]:
            ids = indices.to(logits.device).view(-1)
            duplicate = (ids.unsqueeze(0) == ids.unsqueeze(1)) & ~torch.eye(
                len(ids), dtype=torch.bool, device=logits.device)
            logits = logits.masked_fill(duplicate, float("-inf"))
        labels = torch.arange(logits.shape[0], device=logits.device)
        return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)
