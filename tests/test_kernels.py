"""The compiled CPU training steps (normlab.norms.kernels): that they are the ones running, their
registration (torch.library.opcheck), their statistics against float64 references, and the
engineering around them (autograd versions, gradient masks, no_grad, fallback, dtype moves).
Their equations are checked, both paths alike, in test_norm.py and test_online_norm.py."""

import copy
import warnings

import pytest
import torch
from conftest import randomize_affine
from torch.utils._python_dispatch import TorchDispatchMode

from normlab import extension as normlab_extension
from normlab.norms import build_norm, kernels

MODES = ("batch", "moving_average", "renorm", "online")
OPTIONS = {
    "batch": {"momentum": 0.2},
    "moving_average": {"momentum": 0.2},
    "renorm": {"momentum": 0.2, "rmax": 1.5, "dmax": 0.5},
    "online": {"alpha_fwd": 0.9, "alpha_bkw": 0.8},
}


@pytest.fixture(scope="module", autouse=True)
def extension():
    ext = kernels.extension()
    assert ext is not None, "the compiled norm kernels failed to build"
    return ext


def layer_pair(mode, channels, seed=0):
    """The same layer twice: compiled step, pure-PyTorch step."""
    layers = []
    for compiled in (True, False):
        layer = randomize_affine(build_norm(mode, channels, **OPTIONS[mode]), seed)
        layer.compiled_step = compiled
        layers.append(layer)
    return layers


def reference_moments(x):
    """float64 mean and biased variance per channel."""
    x = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    return x.mean(dim=1), x.var(dim=1, unbiased=False)


class OpLog(TorchDispatchMode):
    """The names of the ops that reach the dispatcher below autograd."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", MODES)
def test_cpu_training_step_goes_through_the_extension(mode, monkeypatch):
    calls = []
    real = kernels.entries()

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr(kernels, "entries", lambda: Counting())
    layer = build_norm(mode, 4)
    layer(torch.randn(8, 4, requires_grad=True)).sum().backward()
    assert calls == [f"{mode}_step"]
    layer.compiled_step = False
    layer(torch.randn(8, 4))
    layer(torch.randn(8, 4, 3).transpose(1, 2).contiguous().transpose(1, 2))  # not contiguous
    layer.eval()
    layer(torch.randn(8, 4))
    assert calls == [f"{mode}_step"], "switched off, strided input and eval use PyTorch ops"


# batch's backward is ATen's batch-norm backward, called by its autograd kernel
BACKWARD_OPS = {"batch": "aten::native_batch_norm_backward"}


@pytest.mark.parametrize("mode", MODES)
def test_one_training_step_is_the_step_op_and_its_backward_op(mode):
    """Below autograd, a forward+backward runs normlab's step op and its backward op and none of
    the layer's other PyTorch ops (the pure-PyTorch path dispatches dozens)."""
    layers = layer_pair(mode, 4)
    names = []
    for layer in layers:
        x = torch.randn(8, 4, 3, requires_grad=True)
        with OpLog() as log:
            layer(x).sum().backward()
        names.append(log.names)
    compiled, pytorch = names
    backward = BACKWARD_OPS.get(mode, f"normlab::{mode}_backward")
    assert [n for n in compiled if n.startswith("normlab::") or n == backward] == [
        f"normlab::{mode}_step",
        backward,
    ]
    assert not any(n.startswith("normlab::") for n in pytorch) and len(pytorch) > len(compiled)


# ---------------------------------------------------------------- registration


def step_args(mode, shape, record, requires_grad=True, dtype=torch.float64):
    """Sample arguments of normlab::<mode>_step (layer-like values, random affine)."""
    g = torch.Generator().manual_seed(sum(shape))
    channels = shape[1]
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 1).requires_grad_(requires_grad)
    weight = (torch.rand(channels, generator=g, dtype=dtype) + 0.5).requires_grad_(requires_grad)
    bias = torch.randn(channels, generator=g, dtype=dtype).requires_grad_(requires_grad)
    mean = torch.randn(channels, generator=g, dtype=dtype) * 0.1
    spread = torch.rand(channels, generator=g, dtype=dtype) + 0.5
    count = torch.tensor(3)
    rows = {"renorm": 6}.get(mode, 4)
    slot = torch.empty(rows, channels, dtype=dtype) if record else None
    if mode == "batch":
        return (x, weight, bias, mean, spread, count, 0.2, 1e-5, slot)
    if mode == "moving_average":
        return (x, weight, bias, mean, spread, count, 0.2, 1e-5, True, slot)
    if mode == "renorm":
        return (x, weight, bias, mean, spread, count, 0.2, 1e-5, 1.5, 0.5, slot)
    ctrl = torch.randn(2, channels, generator=g, dtype=dtype) * 0.1
    return (x, weight, bias, mean, spread, ctrl[0], ctrl[1].clone(), count, 0.9, 0.8, 1e-5, slot)


def backward_args(mode, shape, mask):
    """Sample arguments of normlab::<mode>_backward: the rows of a step on the same input."""
    args = step_args(mode, shape, record=False, requires_grad=False)
    x, weight = args[0], args[1]
    _, saved = getattr(kernels.extension(), f"{mode}_step")(*args)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    if mode == "moving_average":
        return (grad, x, weight, saved, mask)
    if mode == "renorm":
        return (grad, x, saved, 1e-5, mask)
    return (grad, x, weight, saved, args[5], args[6], 0.8, mask)


# Every opcheck util, the default ones (schema, autograd registration, fake tensors, AOT
# dispatch with dynamic shapes) and the static-shape AOT dispatch.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3), (1, 5)])
@pytest.mark.parametrize("record", [False, True])
def test_step_ops_pass_opcheck(mode, shape, record):
    op = getattr(kernels.extension(), f"{mode}_step").default
    torch.library.opcheck(op, step_args(mode, shape, record), test_utils="ALL")


# The backward ops take no inputs that require grad (autograd calls them with grad mode off), so
# test_autograd_registration passes without checking anything: opcheck skips it for such inputs.
# Their autograd kernel refuses inputs that require grad under grad mode (double backward; see
# test_double_backward_is_refused).
@pytest.mark.parametrize("mode", [m for m in MODES if m not in BACKWARD_OPS])
@pytest.mark.parametrize("shape", [(6, 5), (4, 5, 3), (1, 5)])
@pytest.mark.parametrize("mask", [[True, True, True], [False, True, False], [True, False, True]])
def test_backward_ops_pass_opcheck(mode, shape, mask):
    op = getattr(kernels.extension(), f"{mode}_backward").default
    torch.library.opcheck(op, backward_args(mode, shape, mask), test_utils="ALL")


@pytest.mark.parametrize("mode", [m for m in MODES if m not in BACKWARD_OPS])
def test_double_backward_is_refused(mode):
    layer = build_norm(mode, 4)
    x = torch.randn(8, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)


@pytest.mark.parametrize("shape", [(8, 4), (6, 4, 5), (1, 4)])
def test_batch_double_backward_matches_native_batch_norm(shape):
    """A gradient penalty through the compiled batch step: the second derivatives with respect
    to input, weight and bias equal those of torch.batch_norm in training mode (float64; one
    value per channel included, which nn.BatchNorm refuses)."""
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1
    layer = randomize_affine(build_norm("batch", 4), 0).double()
    weight = layer.weight.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    buffers = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)

    def native(x):
        return torch.batch_norm(x, weight, bias, *buffers, True, 0.1, 1e-5, False)

    results = []
    for forward, params in ((layer, (layer.weight, layer.bias)), (native, (weight, bias))):
        x = x0.clone().requires_grad_(True)
        (grad_x,) = torch.autograd.grad(forward(x).sin().sum(), x, create_graph=True)
        grad_x.square().sum().backward()
        results.append((x.grad, *(p.grad for p in params)))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def raw_records(steps, rows, channels, dtype, seed=0):
    """Diagnostics records as a layer writes them: batch mean, biased variance, mu, sigma > 0,
    then 0/1 clip indicators."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(steps, rows, channels, generator=g, dtype=dtype)
    raw[:, 1] = raw[:, 1].abs()
    raw[:, 3] = raw[:, 3].abs() + 0.1
    raw[:, 4:] = (raw[:, 4:] > 0).to(dtype)
    return raw


@pytest.mark.parametrize("clipping", [False, True])
def test_fold_op_passes_opcheck(clipping):
    rows = 6 if clipping else 4
    sums = torch.zeros(2, 5, dtype=torch.float64), torch.zeros(rows - 1, dtype=torch.float64)
    args = (raw_records(7, rows, 5, torch.float64), 1e-5, *sums)
    torch.library.opcheck(kernels.extension().fold_diagnostics.default, args, test_utils="ALL")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clipping", [False, True])
@pytest.mark.parametrize("compiled", [True, False])
def test_diagnostics_fold_against_a_float64_reference(dtype, clipping, compiled):
    """Three windows of 150 steps (several folds each, one an odd remainder) of records written
    into the slots, against the window means recomputed in float64 from the same records."""
    from normlab.norms.diagnostics import NormDiagnostics

    channels, eps = 37, 1e-3
    diagnostics = NormDiagnostics(channels, ("r_clip_frac", "d_clip_frac") if clipping else ())
    diagnostics.compiled = compiled
    like = torch.zeros(channels, dtype=dtype)
    for window in range(3):
        raw = raw_records(150, diagnostics.rows, channels, dtype, seed=window)
        for step in raw:
            diagnostics.slot(like, eps).copy_(step)
        got = diagnostics.collect()
        r = raw.double()
        mean, var, mu, sigma = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
        expected = {
            "mean_shift": ((mean - mu).abs() / sigma).mean().item(),
            "std_ratio": ((var + eps).sqrt() / sigma).mean().item(),
            "prenorm_mean": mean.mean().item(),
            "prenorm_rms": (var + mean**2).mean(dim=1).sqrt().mean().item(),
            "prenorm_mean_rms": (mean**2).mean(dim=1).sqrt().mean().item(),
        }
        if clipping:
            expected |= {"r_clip_frac": r[:, 4].mean().item(), "d_clip_frac": r[:, 5].mean().item()}
        rel = 1e-5 if dtype == torch.float32 else 1e-12
        assert got == pytest.approx(expected, rel=rel, abs=rel)


# ---------------------------------------------------------------- accuracy


def float32_errors(mode, shape, compiled):
    """Per step, the largest errors of a float32 layer (output, input grad, weight grad, bias
    grad) against the float64 PyTorch-path layer on the same inputs, with the schedules moving
    so that the running buffers and diagnostics feed back; then its buffers' errors."""
    layer, reference = layer_pair(mode, shape[1])
    layer.compiled_step = compiled
    reference.double()
    g = torch.Generator().manual_seed(1)
    errors = []
    for step in range(3):
        for each in (layer, reference):
            each.momentum = 0.1 * (step + 1)
            if mode == "renorm":
                each.rmax, each.dmax = 1.0 + step, 0.5 * step
        x = torch.randn(shape, generator=g) * 3 + 2
        grad = torch.randn(shape, generator=g)
        results = []
        for each, dtype in ((layer, torch.float32), (reference, torch.float64)):
            each.zero_grad()
            xi = x.to(dtype, copy=True).requires_grad_(True)
            y = each(xi)
            y.backward(grad.to(dtype))
            results.append([t.double() for t in (y, xi.grad, each.weight.grad, each.bias.grad)])
        errors.append([(a - b).abs().max().item() for a, b in zip(*results, strict=True)])
    buffers = [
        (a.double() - b).abs().max().item()
        for a, b in zip(layer.buffers(), reference.buffers(), strict=True)
    ]
    return errors, buffers, layer.diagnostics.collect(), reference.diagnostics.collect()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "shape", [(32, 64, 16, 16), (128, 256), (1, 256), (3, 5, 4097), (6, 7, 5), (4, 20000)]
)
def test_compiled_step_in_float32_is_as_accurate_as_the_pytorch_path(mode, shape):
    """The benchmark's shapes, rows longer than one accumulation block, odd sizes, a wide (N, C)
    input: against a float64 reference, the compiled step's rounding is no worse than the
    PyTorch layers'."""
    compiled, compiled_buffers, diagnostics, reference_diagnostics = float32_errors(
        mode, shape, True
    )
    pytorch, pytorch_buffers, *_ = float32_errors(mode, shape, False)
    for step_c, step_p in zip(compiled, pytorch, strict=True):
        names = ("y", "grad x", "grad w", "grad b")
        for name, err_c, err_p in zip(names, step_c, step_p, strict=True):
            assert err_c <= 2 * err_p + 1e-5, (name, err_c, err_p)
    for err_c, err_p in zip(compiled_buffers, pytorch_buffers, strict=True):
        assert err_c <= 2 * err_p + 1e-6, (err_c, err_p)
    assert diagnostics == pytest.approx(reference_diagnostics, rel=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("center", "spread"), [(1e4, 0.5), (-300.0, 1e-3), (0.0, 1e3)])
def test_batch_statistics_stay_accurate_far_from_zero(mode, center, spread):
    """One pass over the data, shifted by one of the channel's own values (online: each sample's
    moments shifted by its own first value, the batch's by the first sample's mean): no
    E[x^2] - E[x]^2 cancellation when |mean| >> std (float32 data, float64 reference of the same
    values)."""
    layer = build_norm(mode, 3, **({} if mode == "online" else {"momentum": 1.0}))
    x = torch.randn(16, 3, 50, generator=torch.Generator().manual_seed(0)) * spread + center
    layer(x)
    mean, var = reference_moments(x)
    raw = layer.diagnostics._buffer[0]
    torch.testing.assert_close(raw[0].double(), mean, rtol=1e-6, atol=1e-6 * spread)
    torch.testing.assert_close(raw[1].double(), var, rtol=1e-4, atol=0)


# ---------------------------------------------------------------- autograd bookkeeping


@pytest.mark.parametrize("mode", MODES)
def test_buffer_updates_are_seen_by_autograd(mode):
    """The kernel writes the running buffers through raw pointers; its autograd kernel marks them
    dirty, so their versions move and a graph that saved them (an eval-mode forward) refuses to
    backpropagate stale values."""
    layer = build_norm(mode, 4)
    layer.eval()
    x = torch.randn(8, 4, requires_grad=True)
    y = layer(x)
    layer.train()
    version = layer.running_mean._version
    layer(torch.randn(8, 4))
    assert layer.running_mean._version > version
    assert layer.num_batches_tracked.item() == 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_online_control_buffer_updates_in_backward_are_seen_by_autograd():
    layer = build_norm("online", 4)
    weight = torch.randn(4, requires_grad=True)
    saved_ctrl = (weight * layer.ctrl_mean).sum()  # a graph that saved ctrl_mean
    x = torch.randn(8, 4, requires_grad=True)
    y = layer(x)
    versions = layer.ctrl_mean._version, layer.ctrl_proj._version
    y.sum().backward()
    assert layer.ctrl_mean._version > versions[0] and layer.ctrl_proj._version > versions[1]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved_ctrl.backward()


def online_running_mean(x, alpha, mean):
    """The paper's mean recurrence over the samples of an (N, C) batch, written out."""
    for sample in x:
        mean = alpha * mean + (1 - alpha) * sample
    return mean


@pytest.mark.parametrize("mode", MODES)
def test_no_grad_training_step_updates_buffers_without_a_graph(mode):
    x = torch.randn(8, 4) + 5
    if mode == "online":
        layer = build_norm(mode, 4, alpha_fwd=0.7)
        expected = online_running_mean(x, 0.7, torch.zeros(4))
    else:
        layer, expected = build_norm(mode, 4, momentum=1.0), x.mean(dim=0)
    with torch.no_grad():
        y = layer(x)
    assert y.grad_fn is None
    torch.testing.assert_close(layer.running_mean, expected)
    assert layer.num_batches_tracked.item() == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(8, 4), (8, 4, 5), (1, 4)])
def test_input_gradient_needs_no_parameter_gradients(mode, shape):
    """With the affine frozen the backward skips the parameter gradients; the input gradient
    and (online) the control state are those of the PyTorch path."""
    layers = layer_pair(mode, shape[1])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 2 + 1
    grads = []
    for layer in layers:
        layer.requires_grad_(False)
        xi = x.clone().requires_grad_(True)
        layer(xi).backward(torch.ones(shape))
        assert xi.grad is not None and layer.weight.grad is None and layer.bias.grad is None
        grads.append((xi.grad, *layer.buffers()))
    for compiled, pytorch in zip(*grads, strict=True):
        torch.testing.assert_close(compiled, pytorch)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(8, 4), (8, 4, 5), (1, 4)])
def test_parameter_gradients_need_no_input_gradient(mode, shape):
    """Without an input gradient the backward skips it; the parameter gradients and (online) the
    control state, which the skipped gradient would have fed, are those of the PyTorch path."""
    layers = layer_pair(mode, shape[1])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)) * 2 + 1
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    results = []
    for layer in layers:
        layer(x).backward(grad)
        results.append((layer.weight.grad, layer.bias.grad, *layer.buffers()))
    for compiled, pytorch in zip(*results, strict=True):
        torch.testing.assert_close(compiled, pytorch)


# ---------------------------------------------------------------- engineering


@pytest.mark.parametrize("mode", MODES)
def test_diagnostics_follow_a_module_moved_to_float64(mode):
    layer = build_norm(mode, 4, **({"momentum": 0.5} if mode != "online" else {}))
    layer(torch.randn(8, 4))
    layer.double()
    layer(torch.randn(8, 4, dtype=torch.float64))
    assert layer.diagnostics._buffer.dtype == torch.float64
    stats = layer.diagnostics.collect()
    assert layer.diagnostics.steps == 0 and set(stats) >= {"mean_shift", "std_ratio"}
    if mode == "renorm":
        assert "r_clip_frac" in stats


def test_build_failure_falls_back_to_pytorch_with_one_warning(monkeypatch):
    def fail():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(normlab_extension, "build", fail)
    normlab_extension.entries.cache_clear()
    try:
        layer = build_norm("renorm", 4, momentum=1.0)
        x = torch.randn(8, 4) + 3
        with pytest.warns(RuntimeWarning, match="no compiler here"):
            layer(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            layer(x)
        torch.testing.assert_close(layer.running_mean, x.mean(dim=0))
    finally:
        normlab_extension.entries.cache_clear()


@pytest.mark.parametrize("mode", MODES)
def test_a_deep_copied_layer_records_its_own_diagnostics(mode):
    """The compiled step writes diagnostics into views of a preallocated buffer; a copy must
    write into its own buffer, which its window then reads."""
    options = {"momentum": 0.5} if mode != "online" else {"alpha_fwd": 0.5}
    layer = build_norm(mode, 3, **options)
    first = torch.randn(8, 3)
    layer(first)
    twin = copy.deepcopy(layer)
    x = torch.randn(8, 3) + 2
    twin(x)
    twin_stats = twin.diagnostics.collect()
    assert layer.diagnostics.steps == 1, "the copy's step stays out of the original's window"
    layer(x)
    assert layer.diagnostics.collect() == pytest.approx(twin_stats)
    fresh = build_norm(mode, 3, **options)
    fresh.compiled_step = False
    fresh(first), fresh(x)
    assert twin_stats == pytest.approx(fresh.diagnostics.collect(), rel=1e-5)
