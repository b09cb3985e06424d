"""The compiled CPU training steps (normlab.norms.kernels): that they are the ones running, their
statistics against float64 references, and the engineering around them (autograd versions,
fallback, dtype moves). Their equations are checked, both paths alike, in test_norm.py."""

import copy
import warnings

import pytest
import torch
from conftest import randomize_affine

from normlab.norms import build_norm, kernels

OPTIONS = {
    "moving_average": {"momentum": 0.2},
    "renorm": {"momentum": 0.2, "rmax": 1.5, "dmax": 0.5},
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


@pytest.mark.parametrize("mode", ["moving_average", "renorm"])
def test_cpu_training_step_goes_through_the_extension(mode, monkeypatch):
    calls = []
    real = kernels.extension()

    class Counting:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real, name)

    monkeypatch.setattr(kernels, "extension", lambda: Counting())
    layer = build_norm(mode, 4)
    layer(torch.randn(8, 4, requires_grad=True)).sum().backward()
    assert calls == [f"{mode}_step"]
    layer.compiled_step = False
    layer(torch.randn(8, 4))
    layer(torch.randn(8, 4, 3).transpose(1, 2).contiguous().transpose(1, 2))  # not contiguous
    layer.eval()
    layer(torch.randn(8, 4))
    assert calls == [f"{mode}_step"], "switched off, strided input and eval use PyTorch ops"


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


@pytest.mark.parametrize("mode", ["moving_average", "renorm"])
@pytest.mark.parametrize("shape", [(32, 64, 16, 16), (128, 256), (1, 256), (3, 5, 4097), (6, 7, 5)])
def test_compiled_step_in_float32_is_as_accurate_as_the_pytorch_path(mode, shape):
    """The benchmark's shapes, rows longer than one accumulation block, odd sizes: against a
    float64 reference, the compiled step's rounding is no worse than the PyTorch layers'."""
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


@pytest.mark.parametrize("mode", ["moving_average", "renorm"])
@pytest.mark.parametrize(("center", "spread"), [(1e4, 0.5), (-300.0, 1e-3), (0.0, 1e3)])
def test_batch_statistics_stay_accurate_far_from_zero(mode, center, spread):
    """One pass over the data, shifted by one of the channel's own values: no E[x^2] - E[x]^2
    cancellation when |mean| >> std (float32 data, float64 reference of the same values)."""
    layer = build_norm(mode, 3, momentum=1.0)
    x = torch.randn(16, 3, 50, generator=torch.Generator().manual_seed(0)) * spread + center
    layer(x)
    mean, var = reference_moments(x)
    raw = layer.diagnostics._buffer[0]
    torch.testing.assert_close(raw[0].double(), mean, rtol=1e-6, atol=1e-6 * spread)
    torch.testing.assert_close(raw[1].double(), var, rtol=1e-4, atol=0)


@pytest.mark.parametrize("mode", ["moving_average", "renorm"])
def test_buffer_updates_are_seen_by_autograd(mode):
    """The kernel writes the running buffers through raw pointers and bumps their versions, so
    a graph that saved them (an eval-mode forward) refuses to backpropagate stale values."""
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


@pytest.mark.parametrize("mode", ["moving_average", "renorm"])
def test_no_grad_training_step_updates_buffers_without_a_graph(mode):
    layer = build_norm(mode, 4, momentum=1.0)
    x = torch.randn(8, 4) + 5
    with torch.no_grad():
        y = layer(x)
    assert y.grad_fn is None
    torch.testing.assert_close(layer.running_mean, x.mean(dim=0))


def test_renorm_input_gradient_needs_no_parameter_gradients():
    layer = build_norm("renorm", 4, rmax=2.0, dmax=1.0)
    layer.requires_grad_(False)
    x = torch.randn(8, 4, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is None


def test_diagnostics_follow_a_module_moved_to_float64():
    layer = build_norm("renorm", 4, momentum=0.5)
    layer(torch.randn(8, 4))
    layer.double()
    layer(torch.randn(8, 4, dtype=torch.float64))
    assert layer.diagnostics._buffer.dtype == torch.float64
    stats = layer.diagnostics.collect()
    assert layer.diagnostics.steps == 0 and set(stats) >= {"mean_shift", "r_clip_frac"}


def test_build_failure_falls_back_to_pytorch_with_one_warning(monkeypatch):
    def fail():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(kernels, "build", fail)
    kernels.extension.cache_clear()
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
        kernels.extension.cache_clear()


def test_a_deep_copied_layer_records_its_own_diagnostics():
    """The compiled step writes diagnostics into views of a preallocated buffer; a copy must
    write into its own buffer, which its window then reads."""
    layer = build_norm("renorm", 3, momentum=0.5)
    first = torch.randn(8, 3)
    layer(first)
    twin = copy.deepcopy(layer)
    x = torch.randn(8, 3) + 2
    twin(x)
    twin_stats = twin.diagnostics.collect()
    assert layer.diagnostics.steps == 1, "the copy's step stays out of the original's window"
    layer(x)
    assert layer.diagnostics.collect() == pytest.approx(twin_stats)
    fresh = build_norm("renorm", 3, momentum=0.5)
    fresh.compiled_step = False
    fresh(first), fresh(x)
    assert twin_stats == pytest.approx(fresh.diagnostics.collect(), rel=1e-5)
