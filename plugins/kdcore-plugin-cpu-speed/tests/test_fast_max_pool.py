"""kdcore's CPU 2x2 max pooling gives torch's outputs and gradients, ties included, on both of
its paths: the C kernel and the tensor-op fallback."""

from __future__ import annotations

import copy
import shutil
import struct
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdcore_plugin_cpu_speed.fast_max_pool as fmp
from kdcore_plugin_cpu_speed.fast_max_pool import FastMaxPool2d, max_pool_2x2, use_fast_max_pool
from kdcore.models.cnn import cnn_student

HAVE_CC = shutil.which("cc") is not None


@pytest.fixture(params=["native", "tensor ops"])
def path(request, monkeypatch) -> str:
    """Run the test on the C kernel, then on the tensor-op path it falls back to."""
    if request.param == "native":
        if not HAVE_CC:
            pytest.skip("no C compiler (cc) on this machine: only the tensor-op path runs")
        assert fmp._native() is not None, "cc exists but the max-pooling kernel did not build"
    else:
        monkeypatch.setattr(fmp, "_native_applies", lambda x: False)
    return request.param


def grad_of(pool, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    out = pool(x)
    (grad,) = torch.autograd.grad(out, x, upstream)
    return out, grad


@pytest.mark.parametrize("window, winner", [
    ([[1.0, 1.0], [1.0, 1.0]], (0, 0)),  # a four-way tie: the first element, as torch's kernel
    ([[0.0, 2.0], [2.0, 1.0]], (0, 1)),  # top-right beats the equal bottom-left (scan order)
    ([[0.0, 1.0], [3.0, 3.0]], (1, 0)),
    ([[-1.0, -2.0], [-3.0, -0.5]], (1, 1)),
])
def test_the_gradient_goes_to_the_first_maximum(window, winner, path) -> None:
    x = torch.tensor(window).view(1, 1, 2, 2)
    out, grad = grad_of(max_pool_2x2, x, torch.full((1, 1, 1, 1), 5.0))
    expected = torch.zeros(2, 2)
    expected[winner] = 5.0
    assert out.item() == max(v for row in window for v in row)
    assert torch.equal(grad.view(2, 2), expected)


@pytest.mark.parametrize("shape, channels_last", [
    ((16, 8, 28, 28), False), ((16, 8, 28, 28), True), ((3, 5, 7, 9), False), ((3, 5, 7, 9), True),
    ((2, 3, 2, 2), False), ((5, 4, 13, 12), True), ((4, 6, 6), False),  # odd sizes, no batch dim
    ((1, 2, 4, 300), False)])  # rows wider than 254: the window offset no longer fits in a byte
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_outputs_and_gradients_are_torchs_bit_for_bit(shape, channels_last, dtype, path) -> None:
    generator = torch.Generator().manual_seed(0)
    # rounded, ReLU'd values with a constant band: ties everywhere, as after a ReLU on a
    # background of zeros
    x = torch.randn(shape, generator=generator).relu().round().to(dtype)
    x[..., :3, :] = 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(F.max_pool2d(x, 2).shape, generator=generator).to(dtype)
    ours, our_grad = grad_of(max_pool_2x2, x, upstream)
    theirs, their_grad = grad_of(lambda t: F.max_pool2d(t, 2), x, upstream)
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    assert torch.equal(our_grad, their_grad)
    with torch.no_grad():
        assert torch.equal(max_pool_2x2(x), theirs)


def test_training_steps_are_bit_identical(path) -> None:
    torch.manual_seed(0)
    reference = cnn_student()
    fast = copy.deepcopy(reference)
    assert use_fast_max_pool(fast) == 2
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for model in (reference, fast):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    for (name, a), b in zip(reference.state_dict().items(), fast.state_dict().values()):
        assert torch.equal(a, b), name


def test_only_plain_2x2_pools_are_swapped_and_hooks_stay() -> None:
    class Custom(nn.MaxPool2d):
        pass

    model = nn.Sequential(nn.MaxPool2d(2), nn.MaxPool2d(2, stride=2), nn.MaxPool2d(3),
                          nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, ceil_mode=True),
                          nn.MaxPool2d(2, stride=1), Custom(2))
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    keys = list(model.state_dict())
    assert use_fast_max_pool(model) == 2
    assert [type(m) is FastMaxPool2d for m in model] == [True, True, False, False, False, False, False]
    assert isinstance(model[0], nn.MaxPool2d) and list(model.state_dict()) == keys
    model[0](torch.randn(1, 1, 4, 4))
    assert seen == [torch.Size([1, 1, 2, 2])]


def test_torchs_kernel_where_it_is_the_faster_one(monkeypatch) -> None:
    monkeypatch.setattr(fmp, "_native_applies", lambda x: False)  # the tensor-op path's sizes
    calls = []
    monkeypatch.setattr(fmp, "max_pool_2x2", lambda x: calls.append(x) or F.max_pool2d(x, 2))
    pool = nn.MaxPool2d(2)
    use_fast_max_pool(pool)
    big = (8, 8, 64, 64)  # 262,144 elements: above both size thresholds
    pool(torch.randn(big, requires_grad=True))  # training, contiguous: ours
    assert len(calls) == 1
    training_cl = torch.randn(big).contiguous(memory_format=torch.channels_last).requires_grad_()
    pool(training_cl)  # training in channels_last: torch's
    pool(torch.randn(2, 8, 28, 28, requires_grad=True))  # training, small: torch's
    pool(torch.randn(1, 8, 28, 28))  # inference, small: torch's
    with pytest.raises(RuntimeError, match="too small"):  # one row: torch's kernel, torch's error
        pool(torch.randn(1, 8, 1, 1 << 16))
    assert len(calls) == 1
    with torch.no_grad():
        pool(training_cl)  # inference in channels_last: ours
    pool(torch.randn(4, 8, 28, 28))  # inference, 25k elements: ours
    assert len(calls) == 3


def test_a_pool_whose_settings_are_not_2x2_is_torchs() -> None:
    x = torch.randn(8, 8, 63, 63)
    for pool in (FastMaxPool2d(3), FastMaxPool2d(2, stride=1), FastMaxPool2d(2, padding=1)):
        assert torch.equal(pool(x), F.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding))
    swapped = nn.MaxPool2d(2)
    use_fast_max_pool(swapped)
    swapped.ceil_mode = True  # changed after the swap
    assert swapped(x).shape == (8, 8, 32, 32)


@pytest.mark.filterwarnings("ignore:`torch.jit")
def test_func_transforms_forward_ad_and_tracing_get_torchs_kernel() -> None:
    big = (8, 8, 64, 64)  # above the size thresholds
    x = torch.randn(big).relu().round()  # ties, where maximum's forward-mode rule would differ
    pool = FastMaxPool2d(2)

    def total(fn):
        return lambda t: fn(t).pow(2).sum()

    grads = torch.func.grad(total(pool))(x)
    assert torch.equal(grads, torch.func.grad(total(lambda t: F.max_pool2d(t, 2)))(x))
    tangent = torch.randn(big)
    _, ours = torch.func.jvp(pool, (x,), (tangent,))
    _, theirs = torch.func.jvp(lambda t: F.max_pool2d(t, 2), (x,), (tangent,))
    assert torch.equal(ours, theirs)
    with warnings.catch_warnings():  # a shape check seen by the tracer would warn
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(pool, (x,))  # its sanity check reruns it: a Python op would fail it
    assert "max_pool2d" in str(traced.inlined_graph)


def test_inference_on_an_odd_layout_keeps_torchs_output_layout() -> None:
    x = torch.randn(8, 8, 64, 64).transpose(-1, -2)  # neither contiguous nor channels_last
    with torch.no_grad():
        out = FastMaxPool2d(2)(x)
    expected = F.max_pool2d(x, 2)
    assert torch.equal(out, expected) and out.stride() == expected.stride()


def bits(t: torch.Tensor) -> list[int]:
    return [struct.unpack("<I", struct.pack("<f", v))[0] for v in t.flatten().tolist()]


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler: no C kernel")
def test_the_kernel_matches_torch_on_nan_infinities_and_signed_zeros(path) -> None:
    """Down to the bit pattern: which NaN wins, the sign of a zero maximum, and that a gradient
    of -0.0 arrives as torch's 0 + (-0.0) = +0.0."""
    nan, inf = float("nan"), float("inf")
    windows = [[nan, 1.0, 2.0, 3.0], [1.0, nan, nan, 0.0], [-inf, -inf, -inf, -inf],
               [0.0, -0.0, -0.0, 0.0], [-0.0, 0.0, 0.0, -0.0], [2.0, 2.0, nan, 2.0],
               [inf, nan, -inf, 1.0], [1.0, 2.0, inf, inf]]
    x = torch.tensor(windows).view(-1, 1, 2, 2).repeat(2, 3, 1, 1).contiguous()  # 48 windows
    x = x.view(1, 48, 2, 2).repeat(1, 1, 3, 5)[..., :5, :9].contiguous()  # odd H and W too
    upstream = torch.randn(F.max_pool2d(x, 2).shape)
    upstream.view(-1)[::3] = -0.0
    ours, our_grad = grad_of(max_pool_2x2, x, upstream)
    theirs, their_grad = grad_of(lambda t: F.max_pool2d(t, 2), x, upstream)
    if path == "native":
        assert bits(ours) == bits(theirs) and bits(our_grad) == bits(their_grad)
    else:  # documented: NaN payloads, signed zeros and NaN gradient routing may differ
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


def test_double_backward_is_torchs(path) -> None:
    x = torch.randn(4, 3, 10, 12).relu().round().requires_grad_()  # ties
    upstream = torch.randn(4, 3, 5, 6, requires_grad=True)
    weights = torch.randn(4, 3, 10, 12)
    results = []
    for pool in (max_pool_2x2, lambda t: F.max_pool2d(t, 2)):
        (grad,) = torch.autograd.grad(pool(x), x, upstream, create_graph=True)
        results.append((grad, torch.autograd.grad((grad * weights).sum(), upstream)[0]))
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler: no C kernel")
def test_the_kernel_gives_the_same_bits_on_any_number_of_threads() -> None:
    x = torch.randn(64, 8, 28, 28).requires_grad_()
    upstream = torch.randn(64, 8, 14, 14)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(grad_of(max_pool_2x2, x, upstream))
    finally:
        torch.set_num_threads(threads)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler: no C kernel")
def test_the_kernel_takes_over_from_small_sizes(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(fmp, "_native_forward", lambda x, with_winners: calls.append(x) or (F.max_pool2d(x, 2), None))
    pool = FastMaxPool2d(2)
    pool(torch.randn(1, 8, 28, 28))  # inference, 6k elements: the kernel
    pool(torch.randn(1, 1, 16, 16))  # 256 elements: torch's
    pool(torch.randn(1, 8, 28, 28).contiguous(memory_format=torch.channels_last))  # not NCHW: tensor ops
    pool(torch.randn(1, 8, 28, 28, dtype=torch.float64))  # not float32: tensor ops
    assert len(calls) == 1


def test_batched_gradients_and_other_devices_take_torchs_kernel(path) -> None:
    pool = FastMaxPool2d(2)
    x = torch.randn(8, 8, 16, 16).relu().round().requires_grad_()
    vectors = torch.randn(3, 8, 8, 8, 8)
    ours = torch.autograd.grad(pool(x), x, vectors, is_grads_batched=True)[0]
    theirs = torch.autograd.grad(F.max_pool2d(x, 2), x, vectors, is_grads_batched=True)[0]
    assert torch.equal(ours, theirs)
    meta = torch.empty(2, 2, 4, 4, device="meta")  # the kernel reads host memory: never here
    assert max_pool_2x2(meta).shape == (2, 2, 2, 2)
