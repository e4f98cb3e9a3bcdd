"""Tests of the CRD losses: hand-computed NCE / InfoNCE values, memory-bank and normaliser
state, sampling, gradients, degenerate batches, registration, and one end-to-end CLI run."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import kdcore
from kdcore.testing import run_preset
import kdcore_plugin_crd.losses as crd_losses
from kdcore_plugin_crd.losses import CRDInBatchLoss, CRDLoss

PRESET = Path(__file__).resolve().parents[1] / "kdcore_plugin_crd" / "presets" / "fashion_mnist.yaml"


# --- independent reference: plain Python lists and math --------------------------------------

def _normalize(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _linear(w: list[list[float]], b: list[float], x: list[float]) -> list[float]:
    return [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(w, b)]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _loop_nce(anchors, bank, columns, temperature, n_data, z=None):
    """Returns (loss, z) for one anchor side, following the paper's NCE with noise 1/N."""
    e = [[math.exp(_dot(a, bank[c]) / temperature) for c in cols] for a, cols in zip(anchors, columns)]
    if z is None:
        flat = [v for row in e for v in row]
        z = sum(flat) / len(flat) * n_data
    k = len(columns[0]) - 1
    noise = k / n_data
    total = 0.0
    for row in e:
        p = [v / z for v in row]
        total += math.log(p[0] / (p[0] + noise + 1e-7))
        for pn in p[1:]:
            total += math.log(noise / (pn + noise + 1e-7))
    return -total / len(anchors), z


def _set_linear(layer: nn.Linear, w: list[list[float]], b: list[float]) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w))
        layer.bias.copy_(torch.tensor(b))


def _tiny_crd(monkeypatch, negatives_table, momentum=0.5):
    """N=5, K=2, feat_dim=2, hand-set heads and banks, negatives fixed by ``negatives_table``."""
    loss = CRDLoss(student_shape=(2,), teacher_shape=(3,), num_samples=5, feat_dim=2, nce_k=2,
                   momentum=momentum)
    ws, bs = [[1.0, 0.5], [-0.5, 1.0]], [0.1, 0.0]
    wt, bt = [[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], [0.0, 0.2]
    _set_linear(loss.embed_student.linear, ws, bs)
    _set_linear(loss.embed_teacher.linear, wt, bt)
    angles_s, angles_t = [0.1, 0.9, 1.7, 2.5, 3.3], [0.4, 1.2, 2.0, 2.8, 3.6]
    mem_s = [[math.cos(a), math.sin(a)] for a in angles_s]
    mem_t = [[0.9 * math.cos(a), 0.9 * math.sin(a)] for a in angles_t]  # not unit: like the init
    loss.memory_student.copy_(torch.tensor(mem_s))
    loss.memory_teacher.copy_(torch.tensor(mem_t))
    monkeypatch.setattr(loss, "sample_negatives",
                        lambda indices, targets=None: torch.tensor([negatives_table[int(i)] for i in indices]))
    return loss, (ws, bs, wt, bt, mem_s, mem_t)


NEGATIVES = {0: [2, 4], 1: [0, 4], 2: [0, 0], 3: [4, 1], 4: [1, 2]}


# --- hand-computed values --------------------------------------------------------------------

# The matmul-then-gather scoring path, and the gather path.
@pytest.mark.parametrize("dense_ratio, momentum", [(10**9, 0.5), (0, 0.2)])
def test_crd_matches_hand_computed_nce_and_bank_update(monkeypatch, dense_ratio, momentum):
    monkeypatch.setattr(crd_losses, "_DENSE_RATIO", dense_ratio)
    loss, (ws, bs, wt, bt, mem_s, mem_t) = _tiny_crd(monkeypatch, NEGATIVES, momentum)
    xs = [[0.3, -1.2], [2.0, 0.4]]
    xt = [[1.0, 0.5, -0.3], [-0.7, 0.2, 1.1]]
    idx = [1, 3]
    got = loss(torch.tensor(xs), torch.tensor(xt), indices=torch.tensor(idx))

    vs = [_normalize(_linear(ws, bs, x)) for x in xs]
    vt = [_normalize(_linear(wt, bt, x)) for x in xt]
    columns = [[i] + NEGATIVES[i] for i in idx]
    loss_s, z_s = _loop_nce(vs, mem_t, columns, 0.07, 5)  # student anchor vs teacher bank
    loss_t, z_t = _loop_nce(vt, mem_s, columns, 0.07, 5)  # teacher anchor vs student bank
    assert got.item() == pytest.approx(loss_s + loss_t, rel=1e-4)
    assert loss.z_student_anchor.item() == pytest.approx(z_s, rel=1e-5)
    assert loss.z_teacher_anchor.item() == pytest.approx(z_t, rel=1e-5)

    # Bank rows of the batch: normalise(m * old + (1 - m) * embedding); other rows untouched.
    for bank, old, emb in ((loss.memory_student, mem_s, vs), (loss.memory_teacher, mem_t, vt)):
        for row in range(5):
            if row in idx:
                e = emb[idx.index(row)]
                expected = _normalize([momentum * o + (1 - momentum) * x for o, x in zip(old[row], e)])
            else:
                expected = old[row]
            assert bank[row].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_z_is_estimated_once_and_kept(monkeypatch):
    loss, (ws, bs, wt, bt, _, _) = _tiny_crd(monkeypatch, NEGATIVES)
    loss(torch.tensor([[0.3, -1.2], [2.0, 0.4]]), torch.randn(2, 3), indices=torch.tensor([1, 3]))
    z = (loss.z_student_anchor.item(), loss.z_teacher_anchor.item())
    assert z[0] > 0 and z[1] > 0
    # The second batch is scored with the first batch's Z, not a new estimate.
    xs, xt, idx = [[-1.0, 0.2], [0.5, 0.5]], [[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]], [0, 4]
    mem_s, mem_t = loss.memory_student.tolist(), loss.memory_teacher.tolist()
    got = loss(torch.tensor(xs), torch.tensor(xt), indices=torch.tensor(idx))
    assert (loss.z_student_anchor.item(), loss.z_teacher_anchor.item()) == z
    vs = [_normalize(_linear(ws, bs, x)) for x in xs]
    vt = [_normalize(_linear(wt, bt, x)) for x in xt]
    columns = [[i] + NEGATIVES[i] for i in idx]
    expected = (_loop_nce(vs, mem_t, columns, 0.07, 5, z=z[0])[0]
                + _loop_nce(vt, mem_s, columns, 0.07, 5, z=z[1])[0])
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_eval_mode_changes_no_state():
    torch.manual_seed(0)
    loss = CRDLoss((4,), (6,), num_samples=20, nce_k=8).eval()
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    value = loss(torch.randn(5, 4), torch.randn(5, 6), indices=torch.arange(5))
    assert torch.isfinite(value)
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_inbatch_matches_hand_computed_infonce():
    loss = CRDInBatchLoss(student_shape=(2,), teacher_shape=(3,), feat_dim=2, temperature=0.5)
    ws, bs = [[1.0, 0.5], [-0.5, 1.0]], [0.1, 0.0]
    wt, bt = [[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]], [0.0, 0.2]
    _set_linear(loss.embed_student.linear, ws, bs)
    _set_linear(loss.embed_teacher.linear, wt, bt)
    xs = [[0.3, -1.2], [2.0, 0.4], [-1.0, -0.1]]
    xt = [[1.0, 0.5, -0.3], [-0.7, 0.2, 1.1], [0.0, 1.0, 0.0]]
    vs = [_normalize(_linear(ws, bs, x)) for x in xs]
    vt = [_normalize(_linear(wt, bt, x)) for x in xt]

    def ce(rows, allowed):
        total = 0.0
        for i, row in enumerate(rows):
            denom = sum(math.exp(v) for j, v in enumerate(row) if allowed(i, j))
            total += -(row[i] - math.log(denom))
        return total / len(rows)

    s = [[_dot(a, b) / 0.5 for b in vt] for a in vs]
    st = [list(col) for col in zip(*s)]
    expected = ce(s, lambda i, j: True) + ce(st, lambda i, j: True)
    got = loss(torch.tensor(xs), torch.tensor(xt))
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Sample 0 twice in the batch (indices 7, 7, 2): it is not its own negative.
    ids = [7, 7, 2]
    allowed = lambda i, j: i == j or ids[i] != ids[j]  # noqa: E731
    expected_dup = ce(s, allowed) + ce(st, allowed)
    got_dup = loss(torch.tensor(xs), torch.tensor(xt), indices=torch.tensor(ids))
    assert got_dup.item() == pytest.approx(expected_dup, rel=1e-5)
    assert expected_dup < expected


# --- sampling --------------------------------------------------------------------------------

def test_negatives_exclude_the_anchor_and_are_uniform():
    torch.manual_seed(1)
    loss = CRDLoss((4,), (4,), num_samples=5, nce_k=4000)
    assert loss.nce_k == 4  # capped at num_samples - 1
    loss.nce_k = 4000  # draw many to check the distribution
    idx = torch.tensor([0, 2, 4])
    neg = loss.sample_negatives(idx)
    assert neg.shape == (3, 4000)
    for row, anchor in zip(neg, idx.tolist()):
        counts = torch.bincount(row, minlength=5).tolist()
        assert counts[anchor] == 0
        for j, c in enumerate(counts):
            if j != anchor:
                assert abs(c - 1000) < 150  # 1000 expected, sd ~27


def test_other_classes_mode_draws_other_labels():
    torch.manual_seed(2)
    n = 40
    labels = torch.arange(n) % 4
    loss = CRDLoss((3,), (3,), num_samples=n, nce_k=64, negatives="other_classes")
    loss(torch.randn(n, 3), torch.randn(n, 3), indices=torch.arange(n), targets=labels)
    assert torch.equal(loss.labels, labels)
    idx = torch.tensor([0, 5, 10, 39])
    neg = loss.sample_negatives(idx, labels[idx])
    assert (labels[neg] != labels[idx].unsqueeze(1)).all()
    assert (neg != idx.unsqueeze(1)).all()
    with pytest.raises(kdcore.UserError, match="targets"):
        loss(torch.randn(2, 3), torch.randn(2, 3), indices=torch.tensor([0, 1]))


def test_other_classes_mode_takes_any_negative_for_an_unlabelled_anchor():
    # with data.labelled, target -1 marks an unlabelled sample: it has no class to avoid, and
    # samples remembered as -1 (unseen or unlabelled) are no class either
    n = 40
    loss = CRDLoss((3,), (3,), num_samples=n, nce_k=64, negatives="other_classes")
    seen = torch.arange(20)
    loss(torch.randn(20, 3), torch.randn(20, 3), indices=seen, targets=torch.where(seen < 10, seen % 2, -1))
    idx, targets = torch.tensor([3, 12, 30]), torch.tensor([-1, -1, 1])
    torch.manual_seed(5)
    first_draw = loss._uniform_others(idx)
    torch.manual_seed(5)
    neg = loss.sample_negatives(idx, targets)
    assert torch.equal(neg[:2], first_draw[:2])  # unlabelled anchors: nothing redrawn
    assert (loss.labels[neg[2]] != 1).all()  # the labelled one still avoids its class


# --- state -----------------------------------------------------------------------------------

def test_state_dict_round_trip_restores_banks_and_z():
    torch.manual_seed(3)
    loss = CRDLoss((4,), (6,), num_samples=30, nce_k=10)
    for step in range(3):
        loss(torch.randn(8, 4), torch.randn(8, 6), indices=torch.randint(0, 30, (8,)))
    state = loss.state_dict()
    assert {"memory_student", "memory_teacher", "z_student_anchor", "z_teacher_anchor"} <= set(state)
    assert state["memory_student"].shape == (30, 128)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.manual_seed(99)
    restored = CRDLoss((4,), (6,), num_samples=30, nce_k=10)
    assert not torch.equal(restored.memory_student, loss.memory_student)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for k, v in loss.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k
    x, y, idx = torch.randn(8, 4), torch.randn(8, 6), torch.randint(0, 30, (8,))
    torch.manual_seed(5)
    a = loss(x, y, indices=idx)
    torch.manual_seed(5)
    b = restored(x, y, indices=idx)
    assert a.item() == b.item()


# --- gradients and degenerate inputs ---------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: CRDLoss((10,), (16,), num_samples=50, nce_k=20),
    lambda: CRDInBatchLoss((10,), (16,)),
])
def test_gradients_reach_student_and_heads_not_teacher(make):
    torch.manual_seed(4)
    loss = make()
    x = torch.randn(8, 5, requires_grad=True)
    student_net, teacher_net = nn.Linear(5, 10), nn.Linear(5, 16)
    for p in teacher_net.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in teacher_net.parameters()]
    with torch.no_grad():
        teacher = teacher_net(x)
    leaf_teacher = teacher.clone().requires_grad_(True)
    value = loss(student_net(x), leaf_teacher, indices=torch.arange(8), targets=torch.zeros(8, dtype=torch.long))
    value.backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert student_net.weight.grad.abs().sum() > 0
    assert loss.embed_student.linear.weight.grad.abs().sum() > 0
    assert loss.embed_teacher.linear.weight.grad.abs().sum() > 0
    assert leaf_teacher.grad is None
    for p, b in zip(teacher_net.parameters(), before):
        assert p.grad is None and torch.equal(p, b)


@pytest.mark.parametrize("cls", [CRDLoss, CRDInBatchLoss])
@pytest.mark.parametrize("batch", [1, 2, 6])
@pytest.mark.parametrize("fill", [0.0, 2.5, None])
def test_no_nan_for_zero_constant_features_and_small_batches(cls, batch, fill):
    torch.manual_seed(6)
    kwargs = {"num_samples": 10, "nce_k": 5} if cls is CRDLoss else {}
    loss = cls(student_shape=(2, 2, 2), teacher_shape=(7,), **kwargs)
    s = (torch.randn(batch, 2, 2, 2) if fill is None else torch.full((batch, 2, 2, 2), fill)).requires_grad_(True)
    t = torch.zeros(batch, 7) if fill is not None else torch.randn(batch, 7)
    for _ in range(2):  # second call runs with the updated banks and a fixed Z
        s.grad = None
        value = loss(s, t, indices=torch.arange(batch))
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(s.grad).all()
        for p in loss.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
    for buf in loss.buffers():
        assert torch.isfinite(buf.float()).all()


def test_loss_decreases_as_student_learns_the_teacher():
    torch.manual_seed(7)
    n = 32
    teacher = torch.randn(n, 12)
    student = nn.Parameter(0.1 * torch.randn(n, 6))
    loss = CRDLoss((6,), (12,), num_samples=n, nce_k=16)
    params = [student, *loss.parameters()]  # plain gradient steps: no optimizer import cost

    def retrieval() -> float:
        with torch.no_grad():
            sim = loss.embed_student(student) @ loss.embed_teacher(teacher).t()
        return (sim.argmax(1) == torch.arange(n)).float().mean().item()

    start = retrieval()
    epochs = []
    for _ in range(40):
        perm = torch.randperm(n)
        total = 0.0
        for chunk in perm.split(8):
            value = loss(student[chunk], teacher[chunk], indices=chunk)
            for p in params:
                p.grad = None
            value.backward()
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-0.5)
            total += value.item()
        epochs.append(total / 4)
    assert sum(epochs[-5:]) / 5 < 0.5 * sum(epochs[1:6]) / 5
    assert retrieval() >= 0.9 > start


# --- errors ----------------------------------------------------------------------------------

def test_bad_calls_are_explained():
    loss = CRDLoss((4,), (4,), num_samples=10, nce_k=5)
    with pytest.raises(kdcore.UserError, match="indices"):
        loss(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(kdcore.UserError, match="num_samples"):
        loss(torch.randn(2, 4), torch.randn(2, 4), indices=torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="same batch"):
        loss(torch.randn(2, 4), torch.randn(3, 4), indices=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="expects 4 features"):
        loss(torch.randn(2, 5), torch.randn(2, 4), indices=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_samples"):
        CRDLoss((4,), (4,), num_samples=None)
    with pytest.raises(ValueError, match="negatives"):
        CRDLoss((4,), (4,), num_samples=10, negatives="hard")


# --- registration ----------------------------------------------------------------------------

CONTEXT = {"student_shape": (32,), "teacher_shape": (96,), "num_samples": 100, "num_classes": 10,
           "student_module": None, "teacher_module": None}


def test_registered_through_entry_point():
    ids = {r.id for r in kdcore.components("loss")}
    assert {"crd:crd", "crd:crd_inbatch"} <= ids
    loss = kdcore.build("loss", "crd", context=CONTEXT)
    assert isinstance(loss, CRDLoss) and loss.nce_k == 99 and loss.memory_teacher.shape == (100, 128)
    assert loss.embed_student.linear.in_features == 32 and loss.embed_teacher.linear.in_features == 96
    small = kdcore.build("loss", "crd:crd", context=CONTEXT, nce_k=7, feat_dim=16)
    assert small.nce_k == 7 and small.memory_student.shape == (100, 16)
    inbatch = kdcore.build("loss", "crd_inbatch", context=CONTEXT)
    assert isinstance(inbatch, CRDInBatchLoss) and inbatch.temperature == 0.07
    with pytest.raises(kdcore.UserError, match="nce_k"):
        kdcore.build("loss", "crd", context=CONTEXT, nce_kk=5)
    with pytest.raises(kdcore.UserError, match="num_samples"):
        kdcore.build("loss", "crd", context={k: v for k, v in CONTEXT.items() if k != "num_samples"})


def test_head_accepts_different_widths_and_passes_indices():
    torch.manual_seed(8)
    head = kdcore.DistillationHead({"crd": (0.8, kdcore.build("loss", "crd", context=CONTEXT))})
    terms = head(torch.randn(8, 32), torch.randn(8, 96), targets=torch.zeros(8, dtype=torch.long),
                 indices=torch.arange(8), epoch=0, step=0)
    assert torch.isfinite(terms["crd"]) and terms["crd"].item() > 0


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_preset_runs_end_to_end(tmp_path):
    summary = run_preset("kdcore_plugin_crd", "fashion_mnist.yaml", tmp_path)
    assert summary["algo"] == "teacher_student" and summary["epochs"] == 1
    assert 0.0 <= summary["student"]["top1"] <= 100.0 and 0.0 <= summary["teacher"]["top1"] <= 100.0
    assert any(term.startswith("crd") for term in summary["last_train"]), summary["last_train"]
