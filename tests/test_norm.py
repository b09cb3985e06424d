"""Normalization layers against independent references: torch.nn.BatchNorm, the papers'
equations re-derived here in float64, and hand-derived gradients."""

import copy
import dataclasses

import pytest
import torch
from conftest import randomize_affine
from torch import nn

from normlab.norms import (
    MODES,
    BatchNorm,
    BatchRenorm,
    MovingAverageNorm,
    build_norm,
    normalize_with_batch_stats,
    normalize_with_constant_stats,
    registry,
)
from normlab.quantities import Quantity

SHAPES = [(8, 5), (8, 5, 7), (4, 5, 3, 6)]


# every test twice: batch, moving_average, renorm and online through the compiled CPU steps and
# through the pure-PyTorch layers, against the same references
pytestmark = pytest.mark.usefixtures("float64_module", "step_path")


def dims_of(x):
    return [0, *range(2, x.dim())]


def per_channel(t, x):
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def torch_bn(shape, momentum):
    cls = nn.BatchNorm1d if len(shape) <= 3 else nn.BatchNorm2d
    return cls(shape[1], momentum=momentum)


def run_steps(layer, inputs, grad_outs):
    """Train-mode forward/backward over several batches; returns outputs and input grads."""
    outs, grads = [], []
    for x, g in zip(inputs, grad_outs, strict=True):
        x = x.clone().requires_grad_(True)
        y = layer(x)
        y.backward(g)
        outs.append(y.detach())
        grads.append(x.grad)
    return outs, grads


def batches(shape, steps=4, seed=0, shift=3.0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(shape, generator=g) * 2 + shift for _ in range(steps)]
    gs = [torch.randn(shape, generator=g) for _ in range(steps)]
    return xs, gs


# ---------------------------------------------------------------- batch


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_matches_torch_batchnorm(shape):
    ours = randomize_affine(build_norm("batch", shape[1], momentum=0.3))
    ref = torch_bn(shape, 0.3)
    ref.load_state_dict(ours.state_dict())
    xs, gs = batches(shape)
    y_ours, gx_ours = run_steps(ours, xs, gs)
    y_ref, gx_ref = run_steps(ref, xs, gs)
    for a, b in zip(y_ours + gx_ours, y_ref + gx_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=1e-6, rtol=0)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(xs[0]), ref(xs[0]), atol=1e-6, rtol=0)


def test_batch_size_one_outputs_bias_and_blocks_gradient():
    layer = randomize_affine(build_norm("batch", 6, momentum=0.5))
    x = torch.randn(1, 6).mul(4).requires_grad_(True)
    y = layer(x)
    torch.testing.assert_close(y, layer.bias.detach().view(1, 6), atol=0, rtol=0)
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(layer.weight.grad, torch.zeros(6))
    torch.testing.assert_close(layer.running_mean, 0.5 * x.detach()[0])
    assert torch.equal(layer.running_var, torch.ones(6)), "no within-batch variance at n=1"


def test_torch_batchnorm_refuses_batch_size_one_and_ours_does_not():
    with pytest.raises(ValueError):
        nn.BatchNorm1d(3)(torch.randn(1, 3))
    build_norm("batch", 3)(torch.randn(1, 3))


# ---------------------------------------------------------------- renorm (paper re-derivation)


class PaperRenorm:
    """Algorithm 1 of arXiv 1702.03275 written out with elementary ops, in float64."""

    def __init__(self, channels, momentum, eps):
        self.mu = torch.zeros(channels)
        self.sigma = torch.ones(channels)
        self.alpha, self.eps = momentum, eps

    def __call__(self, x, gamma, beta, rmax, dmax):
        dims = dims_of(x)
        mu_b = x.mean(dim=dims)
        sigma_b = torch.sqrt(((x - per_channel(mu_b, x)) ** 2).mean(dim=dims) + self.eps)
        r = torch.clamp(sigma_b / self.sigma, 1 / rmax, rmax).detach()
        d = torch.clamp((mu_b - self.mu) / self.sigma, -dmax, dmax).detach()
        x_hat = (x - per_channel(mu_b, x)) / per_channel(sigma_b, x) * per_channel(r, x)
        x_hat = x_hat + per_channel(d, x)
        y = per_channel(gamma, x) * x_hat + per_channel(beta, x)
        self.mu = self.mu + self.alpha * (mu_b.detach() - self.mu)
        self.sigma = self.sigma + self.alpha * (sigma_b.detach() - self.sigma)
        return y, r, d

    def infer(self, x, gamma, beta):
        return per_channel(gamma, x) * (x - per_channel(self.mu, x)) / per_channel(
            self.sigma, x
        ) + per_channel(beta, x)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("rmax", "dmax"), [(1.0, 0.0), (1.5, 0.5), (3.0, 5.0)])
def test_renorm_matches_paper_algorithm(shape, rmax, dmax):
    layer = randomize_affine(build_norm("renorm", shape[1], momentum=0.2, rmax=rmax, dmax=dmax))
    paper = PaperRenorm(shape[1], 0.2, layer.eps)
    gamma = layer.weight.detach().clone().requires_grad_(True)
    beta = layer.bias.detach().clone().requires_grad_(True)
    xs, gs = batches(shape, steps=5)
    for x, g in zip(xs, gs, strict=True):
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y = layer(x1)
        y.backward(g)
        y_ref, _, _ = paper(x2, gamma, beta, rmax, dmax)
        y_ref.backward(g)
        torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(x1.grad, x2.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.weight.grad, gamma.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.bias.grad, beta.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.running_mean, paper.mu, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.running_std, paper.sigma, atol=1e-12, rtol=0)
    layer.eval()
    torch.testing.assert_close(
        layer(xs[0]), paper.infer(xs[0], gamma.detach(), beta.detach()), atol=1e-10, rtol=0
    )


def test_renorm_clips_in_the_paper_example_range():
    layer = build_norm("renorm", 4, momentum=0.0, rmax=2.0, dmax=1.0)
    with torch.no_grad():
        layer.running_std.copy_(torch.tensor([0.1, 1.0, 1.0, 10.0]))
        layer.running_mean.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    x = torch.randn(256, 4)
    x = (x - x.mean(0)) / x.std(0, correction=0)
    layer(x)
    stats = layer.diagnostics.collect()
    # channel 0: sigma_B/sigma = 10 > rmax; channel 3: 0.1 < 1/rmax; channel 1: |d| = 5 > dmax
    assert stats["r_clip_frac"] == pytest.approx(0.5)
    assert stats["d_clip_frac"] == pytest.approx(0.25)


def test_renorm_declares_its_clip_fractions_each_against_one_of_its_schedules():
    mode = registry.get("renorm")
    declared = [(q.name, q.percent, q.bound) for q in mode.quantities]
    assert declared == [("r_clip_frac", True, "rmax"), ("d_clip_frac", True, "dmax")]
    elsewhere = Quantity("r_clip_frac", "r clipped (% of channels)", True, bound="rmin")
    bad = dataclasses.replace(mode, name="renorm_bounded_elsewhere", quantities=(elsewhere,))
    with pytest.raises(ValueError, match="'rmin', which is not one of BatchRenorm's schedules"):
        registry.register(bad)
    assert "renorm_bounded_elsewhere" not in registry.names()


def test_renorm_gradcheck_with_saturated_corrections():
    """With r and d pinned at their clip bounds they are locally constant, so finite differences
    of the whole layer must match its analytic gradient (the folded fused kernel included)."""
    template = build_norm("renorm", 3, momentum=0.1, rmax=2.0, dmax=0.5)
    with torch.no_grad():
        template.running_std.fill_(50.0)
        template.running_mean.fill_(-100.0)  # d = 2 > dmax

    def forward(x, weight, bias):
        layer = copy.deepcopy(template)
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    x = torch.randn(6, 3, 4, requires_grad=True)
    w = torch.rand(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    assert torch.autograd.gradcheck(forward, (x, w, b))


def test_fused_batch_stat_normalization_gradcheck():
    def forward(x, w, b):
        mean = x.mean(dim=dims_of(x)).detach()
        var = x.var(dim=dims_of(x), correction=0).detach()
        return normalize_with_batch_stats(x, w, b, mean, var, 1e-5)

    x = torch.randn(5, 3, 4, requires_grad=True)
    w, b = torch.rand(3, requires_grad=True), torch.randn(3, requires_grad=True)
    assert torch.autograd.gradcheck(forward, (x, w, b))


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 4), (2, 3, 2, 3)])
@pytest.mark.parametrize("through_stats", [False, True])
def test_normalization_backward_gradcheck_on_every_layout(shape, through_stats):
    """The CPU backward differs for inputs with spatial dims (sums on a per-sample view)."""

    def forward(x, w, b):
        if through_stats:  # the statistics must then be x's own
            mean = x.mean(dim=dims_of(x)).detach()
            var = x.var(dim=dims_of(x), correction=0).detach()
            return normalize_with_batch_stats(x, w, b, mean, var, 1e-5)
        mean, var = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.5, 2.0, 1.0])
        return normalize_with_constant_stats(x, w, b, mean, var, 1e-5)

    x = torch.randn(shape, requires_grad=True)
    w, b = torch.rand(3, requires_grad=True), torch.randn(3, requires_grad=True)
    assert torch.autograd.gradcheck(forward, (x, w, b))


@pytest.mark.parametrize("shape", SHAPES)
def test_renorm_with_unit_rmax_zero_dmax_equals_batch_in_training(shape):
    renorm = randomize_affine(build_norm("renorm", shape[1], rmax=1.0, dmax=0.0))
    batch = randomize_affine(build_norm("batch", shape[1]))
    xs, gs = batches(shape)
    y_r, gx_r = run_steps(renorm, xs, gs)
    y_b, gx_b = run_steps(batch, xs, gs)
    for a, b in zip(y_r + gx_r, y_b + gx_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    torch.testing.assert_close(renorm.weight.grad, batch.weight.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(renorm.bias.grad, batch.bias.grad, atol=1e-12, rtol=0)


def test_renorm_batch_size_one_is_d_with_no_input_gradient():
    layer = build_norm("renorm", 3, momentum=0.5, rmax=3.0, dmax=5.0)
    x = torch.tensor([[0.5, -2.0, 9.0]], requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y.detach(), torch.tensor([[0.5, -2.0, 5.0]]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    expected_std = 0.5 * 1.0 + 0.5 * layer.eps**0.5
    torch.testing.assert_close(layer.running_std, torch.full((3,), expected_std))


# ---------------------------------------------------------------- moving_average


def hand_moving_average(x, g, gamma, beta, mu0, var0, m, eps, through_batch):
    """Forward and the gradient derived by hand (float64), channel by channel.

    Statistics used: mu = (1-m) mu0 + m mu_B, v = (1-m) v0 + m v_B (v_B unbiased).
    Without the batch path: dx = g * gamma / s. With it, mu and v depend on x:
      dL/dmu = -gamma/s * sum(g),  dL/dv = -gamma/2 * sum(g * (x - mu)) / s^3,
      dx_i = g_i gamma / s + m/n * dL/dmu + m * 2 (x_i - mu_B)/(n-1) * dL/dv.
    """
    dims = dims_of(x)
    n = x.numel() // x.shape[1]
    mu_b = x.mean(dim=dims)
    v_b = x.var(dim=dims, correction=1)
    mu = (1 - m) * mu0 + m * mu_b
    v = (1 - m) * var0 + m * v_b
    s = torch.sqrt(v + eps)
    c = lambda t: per_channel(t, x)  # noqa: E731
    y = c(gamma) * (x - c(mu)) / c(s) + c(beta)
    dx = g * c(gamma / s)
    if through_batch:
        dl_dmu = -(gamma / s) * g.sum(dim=dims)
        dl_dv = -0.5 * gamma * (g * (x - c(mu))).sum(dim=dims) / s**3
        dx = dx + c(m / n * dl_dmu) + c(m * dl_dv) * 2 * (x - c(mu_b)) / (n - 1)
    dgamma = (g * (x - c(mu)) / c(s)).sum(dim=dims)
    return y, dx, dgamma, g.sum(dim=dims), mu, v


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("through_batch", [False, True])
def test_moving_average_matches_hand_derivation(shape, through_batch):
    layer = randomize_affine(
        build_norm("moving_average", shape[1], momentum=0.3, grad_through_batch=through_batch)
    )
    with torch.no_grad():
        layer.running_mean.copy_(torch.linspace(-1, 1, shape[1]))
        layer.running_var.copy_(torch.linspace(0.5, 2, shape[1]))
    mu0, var0 = layer.running_mean.clone(), layer.running_var.clone()
    gamma, beta = layer.weight.detach().clone(), layer.bias.detach().clone()
    (x,), (g,) = batches(shape, steps=1)
    x = x.requires_grad_(True)
    y = layer(x)
    y.backward(g)
    y_ref, dx, dgamma, dbeta, mu, v = hand_moving_average(
        x.detach(), g, gamma, beta, mu0, var0, 0.3, layer.eps, through_batch
    )
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(x.grad, dx, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.weight.grad, dgamma, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.bias.grad, dbeta, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.running_mean, mu, atol=1e-12, rtol=0)
    torch.testing.assert_close(layer.running_var, v, atol=1e-12, rtol=0)


def test_moving_average_update_after_normalizes_with_previous_statistics():
    layer = build_norm("moving_average", 2, momentum=0.5, update="after")
    x = torch.tensor([[1.0, 3.0], [3.0, 7.0]])
    y = layer(x)
    torch.testing.assert_close(y, x / (1 + layer.eps) ** 0.5)
    torch.testing.assert_close(layer.running_mean, torch.tensor([1.0, 2.5]))
    torch.testing.assert_close(layer.running_var, torch.tensor([1.5, 4.5]))


def test_moving_average_eval_equals_batch_eval():
    ma, bn = build_norm("moving_average", 4), build_norm("batch", 4)
    with torch.no_grad():
        for layer in (ma, bn):
            layer.running_mean.copy_(torch.tensor([0.1, 0.2, -1.0, 3.0]))
            layer.running_var.copy_(torch.tensor([1.0, 0.2, 4.0, 9.0]))
    ma.eval(), bn.eval()
    x = torch.randn(7, 4)
    torch.testing.assert_close(ma(x), bn(x), atol=0, rtol=0)


# ---------------------------------------------------------------- batch-independent baselines


def test_group_and_layer_match_torch():
    x = torch.randn(3, 8, 5)
    torch.testing.assert_close(build_norm("group", 8, groups=4)(x), nn.GroupNorm(4, 8)(x))
    torch.testing.assert_close(build_norm("layer", 8)(x), nn.LayerNorm([8, 5])(x))
    assert torch.equal(build_norm("none", 8)(x), x)


# ---------------------------------------------------------------- every mode at batch size 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 9), (1, 4, 3, 3)])
def test_every_mode_runs_at_batch_size_one(mode, shape):
    layer = build_norm(mode, 4, **({"groups": 2} if mode == "group" else {}))
    x = torch.randn(shape, requires_grad=True)
    for _ in range(3):
        y = layer(x)
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    layer.eval()
    assert torch.isfinite(layer(x)).all()


# ---------------------------------------------------------------- diagnostics


def test_diagnostics_against_hand_computed_statistics(step_path):
    layer = build_norm("batch", 2, momentum=0.5)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, 0.0]))
        layer.running_var.copy_(torch.tensor([4.0, 1.0]) - layer.eps)
    x = torch.tensor([[2.0, 1.0], [4.0, 1.0], [6.0, 1.0], [8.0, 1.0]])  # mean 5, 1; var 5, 0
    layer(x)
    stats = layer.diagnostics.collect()
    mean_shift = ((5 - 1) / 2 + (1 - 0) / 1) / 2
    std_ratio = ((5 + layer.eps) ** 0.5 / 2 + layer.eps**0.5 / 1) / 2
    assert stats["mean_shift"] == pytest.approx(mean_shift)
    assert stats["std_ratio"] == pytest.approx(std_ratio)
    assert stats["prenorm_mean"] == pytest.approx(3.0)
    assert stats["prenorm_rms"] == pytest.approx((x**2).mean().sqrt().item())
    assert layer.diagnostics.collect() == {}, "collect resets the window"


def test_diagnostics_average_over_steps_and_can_be_switched_off(step_path):
    layer = build_norm("moving_average", 1, momentum=0.0)
    layer(torch.tensor([[1.0], [3.0]]))  # mean 2, sigma ~1 -> shift 2
    layer(torch.tensor([[3.0], [5.0]]))  # mean 4 -> shift 4
    assert layer.diagnostics.collect()["mean_shift"] == pytest.approx(3.0, rel=1e-4)
    layer.track_diagnostics = False
    layer(torch.tensor([[3.0], [5.0]]))
    assert layer.diagnostics.collect() == {}


# ---------------------------------------------------------------- interface and bad arguments


def test_build_norm_types_and_plain_attributes():
    assert isinstance(build_norm("batch", 3), BatchNorm)
    assert isinstance(build_norm("moving_average", 3), MovingAverageNorm)
    layer = build_norm("renorm", 3, rmax=3, dmax=5)
    assert isinstance(layer, BatchRenorm)
    layer.momentum, layer.rmax, layer.dmax = 0.01, 2.0, 1.0
    assert (layer.momentum, layer.rmax, layer.dmax) == (0.01, 2.0, 1.0)


@pytest.mark.parametrize(
    ("mode", "options", "argument"),
    [
        ("batchnorm", {}, "mode"),
        ("batch", {"momentum": 1.5}, "momentum"),
        ("moving_average", {"momentum": -0.1}, "momentum"),
        ("renorm", {"rmax": 0.5}, "rmax"),
        ("renorm", {"dmax": -1.0}, "dmax"),
        ("group", {"groups": 4}, "groups"),
        ("batch", {"eps": 0.0}, "eps"),
        ("moving_average", {"update": "during"}, "update"),
        ("moving_average", {"update": "after", "grad_through_batch": True}, "grad_through_batch"),
        ("batch", {"decay": 0.9}, "decay"),
        ("renorm", {"groups": 7}, "groups"),
        ("online", {"alpha_fwd": 1.0}, "alpha_fwd"),
        ("group", {"groups": 0}, "groups"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(mode, options, argument):
    with pytest.raises(ValueError, match=argument):
        build_norm(mode, 6, **options)


def test_setting_bad_schedule_values_on_a_layer_raises():
    layer = build_norm("renorm", 3)
    with pytest.raises(ValueError, match="rmax"):
        layer.rmax = 0.9
    with pytest.raises(ValueError, match="momentum"):
        layer.momentum = 2.0


def test_diagnostics_state_dict_round_trip_continues_the_window():
    xs, _ = batches((6, 3), steps=5)
    whole, split = build_norm("renorm", 3, rmax=1.5, dmax=0.5), build_norm("renorm", 3)
    split.rmax, split.dmax = 1.5, 0.5
    for x in xs:
        whole(x)
    for x in xs[:2]:
        split(x)
    state = split.diagnostics.state_dict()
    split.diagnostics.reset()
    split.diagnostics.load_state_dict(state)
    for x in xs[2:]:
        split(x)
    expected, got = whole.diagnostics.collect(), split.diagnostics.collect()
    assert got == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- layouts and devices


def configured(mode, channels, options):
    layer = build_norm(mode, channels, **({"groups": 1} if mode == "group" else {}), **options)
    if hasattr(layer, "weight") and layer.weight is not None:
        randomize_affine(layer)
    return layer


MODE_OPTIONS = [(mode, {}) for mode in MODES] + [
    ("moving_average", {"grad_through_batch": True}),
    ("moving_average", {"update": "after"}),
    ("renorm", {"rmax": 1.5, "dmax": 0.5}),
]


@pytest.mark.parametrize(("mode", "options"), MODE_OPTIONS)
def test_channels_last_input_gives_the_same_training_steps(mode, options):
    shape = (4, 5, 3, 6)
    contiguous, strided = configured(mode, 5, options), configured(mode, 5, options)
    xs, gs = batches(shape, steps=3)
    y_a, gx_a = run_steps(contiguous, xs, gs)
    channels_last = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    y_b, gx_b = run_steps(strided, channels_last, gs)
    for a, b in zip(y_a + gx_a, y_b + gx_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("mode", "options"), MODE_OPTIONS)
@pytest.mark.parametrize("shape", [*SHAPES, (1, 5), (1, 5, 3, 6)])
def test_cuda_training_steps_match_cpu(mode, options, shape):
    cpu = configured(mode, shape[1], options)
    cuda = configured(mode, shape[1], options).cuda()
    xs, gs = batches(shape, steps=3)
    y_cpu, gx_cpu = run_steps(cpu, xs, gs)
    y_gpu, gx_gpu = run_steps(cuda, [x.cuda() for x in xs], [g.cuda() for g in gs])
    for a, b in zip(y_cpu + gx_cpu, y_gpu + gx_gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=1e-9, rtol=1e-9)
    for name, buffer in cpu.named_buffers():
        torch.testing.assert_close(cuda.get_buffer(name).cpu(), buffer, atol=1e-9, rtol=1e-9)
    if hasattr(cpu, "diagnostics"):
        assert cuda.diagnostics.collect() == pytest.approx(cpu.diagnostics.collect(), rel=1e-6)


# ---------------------------------------------------------------- ghost batch norm


@pytest.mark.parametrize("shape", [(12, 5), (12, 5, 7)])
def test_ghost_batch_norm_equals_torch_batchnorm_on_each_sub_batch(shape):
    ghost = randomize_affine(build_norm("batch", shape[1], momentum=0.2, virtual_batch_size=4))
    refs = [torch_bn((4, *shape[1:]), momentum=0.2) for _ in range(3)]
    for ref in refs:
        ref.load_state_dict(ghost.state_dict())
    (x,), (g,) = batches(shape, steps=1)
    x1 = x.clone().requires_grad_(True)
    y = ghost(x1)
    y.backward(g)
    x2 = x.clone().requires_grad_(True)
    y_ref = torch.cat([ref(part) for ref, part in zip(refs, x2.split(4), strict=True)])
    y_ref.backward(g)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-10, rtol=0)
    weight_grad = sum(ref.weight.grad for ref in refs)
    torch.testing.assert_close(ghost.weight.grad, weight_grad, atol=1e-10, rtol=0)
    # one EMA step with the sub-batches' average mean and average unbiased variance
    parts = x.split(4)
    dims = dims_of(x)
    mean = torch.stack([p.mean(dim=dims) for p in parts]).mean(0)
    var = torch.stack([p.var(dim=dims, correction=1) for p in parts]).mean(0)
    torch.testing.assert_close(ghost.running_mean, 0.2 * mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(ghost.running_var, 0.8 + 0.2 * var, atol=1e-12, rtol=0)


def test_ghost_batch_norm_with_full_batch_is_plain_batch_norm():
    x = torch.randn(8, 3)
    plain, ghost = build_norm("batch", 3), build_norm("batch", 3, virtual_batch_size=8)
    torch.testing.assert_close(plain(x), ghost(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="virtual_batch_size"):
        build_norm("batch", 3, virtual_batch_size=3)(torch.randn(8, 3))
    with pytest.raises(ValueError, match="virtual_batch_size"):
        build_norm("batch", 3, virtual_batch_size=0)
