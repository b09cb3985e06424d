"""Online Normalization against the paper's equations (Chiley et al. 2019, arXiv 1905.05894),
written out here sample by sample in float64, independent of the layer's vectorized scans."""

import pytest
import torch
from conftest import randomize_affine

from normlab.norms import OnlineNorm, build_norm, is_batch_dependent, linear_scan, norm_layers

SHAPES = [(6, 5), (6, 5, 7), (4, 5, 3, 6)]


# every test twice: through the compiled CPU step and through the pure-PyTorch layer
pytestmark = pytest.mark.usefixtures("float64_module", "step_path")


class PaperOnlineNorm:
    """One sample at a time. Forward (paper §2.1):
        y_t = (x_t - mu_{t-1}) / sqrt(var_{t-1} + eps)
        mu_t = a_f mu_{t-1} + (1 - a_f) mu(x_t)
        var_t = a_f var_{t-1} + (1 - a_f) var(x_t) + a_f (1 - a_f) (mu(x_t) - mu_{t-1})^2
    Backward (paper §2.2, the control process; <.> = mean over a sample's values per channel):
        g~ = dy_t - (1 - a_b) v y_t;   v += <g~ y_t>
        dx_t = g~ / sqrt(var_{t-1} + eps) - (1 - a_b) u;   u += <dx_t>
    Affine outside: out = gamma * y + beta.
    """

    def __init__(self, channels, alpha_fwd, alpha_bkw, eps):
        self.mu, self.var = torch.zeros(channels), torch.ones(channels)
        self.u, self.v = torch.zeros(channels), torch.zeros(channels)
        self.af, self.ab, self.eps = alpha_fwd, alpha_bkw, eps
        self.saved = []

    def forward(self, x, gamma, beta):
        outs, self.saved = [], []
        for x_t in x:  # x_t: (C, *spatial)
            flat = x_t.reshape(x_t.shape[0], -1)
            mu_x = flat.mean(dim=1)
            var_x = ((flat - mu_x[:, None]) ** 2).mean(dim=1)
            scale = torch.sqrt(self.var + self.eps)
            y = (flat - self.mu[:, None]) / scale[:, None]
            self.var = (
                self.af * self.var
                + (1 - self.af) * var_x
                + self.af * (1 - self.af) * (mu_x - self.mu) ** 2
            )
            self.mu = self.af * self.mu + (1 - self.af) * mu_x
            self.saved.append((y, scale))
            outs.append((gamma[:, None] * y + beta[:, None]).reshape(x_t.shape))
        return torch.stack(outs)

    def backward(self, grad_out, gamma):
        grads, dgamma, dbeta = [], 0, 0
        for g_t, (y, scale) in zip(grad_out, self.saved, strict=True):
            g = g_t.reshape(g_t.shape[0], -1)
            dgamma = dgamma + (g * y).sum(dim=1)
            dbeta = dbeta + g.sum(dim=1)
            g_tilde = g * gamma[:, None] - (1 - self.ab) * self.v[:, None] * y
            self.v = self.v + (g_tilde * y).mean(dim=1)
            dx = g_tilde / scale[:, None] - (1 - self.ab) * self.u[:, None]
            self.u = self.u + dx.mean(dim=1)
            grads.append(dx.reshape(g_t.shape))
        return torch.stack(grads), dgamma, dbeta


def batches(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    # per-channel offsets and scales so the running statistics have something to track
    channel = (1, shape[1], *([1] * (len(shape) - 2)))
    offset = torch.randn(channel, generator=g) * 3
    scale = torch.rand(channel, generator=g) * 2 + 0.5
    xs = [torch.randn(shape, generator=g) * scale + offset for _ in range(steps)]
    gs = [torch.randn(shape, generator=g) for _ in range(steps)]
    return xs, gs


def train_step(layer, x, g):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("alpha_fwd", "alpha_bkw"), [(0.999, 0.99), (0.6, 0.7)])
def test_online_matches_paper_sample_by_sample(shape, alpha_fwd, alpha_bkw):
    layer = randomize_affine(
        build_norm("online", shape[1], alpha_fwd=alpha_fwd, alpha_bkw=alpha_bkw)
    )
    paper = PaperOnlineNorm(shape[1], alpha_fwd, alpha_bkw, layer.eps)
    gamma, beta = layer.weight.detach().clone(), layer.bias.detach().clone()
    dgamma, dbeta = 0, 0
    xs, gs = batches(shape, steps=4)
    for x, g in zip(xs, gs, strict=True):  # buffers carry over from batch to batch
        y, dx = train_step(layer, x, g)
        y_ref = paper.forward(x, gamma, beta)
        dx_ref, dg, db = paper.backward(g, gamma)
        dgamma, dbeta = dgamma + dg, dbeta + db
        torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(dx, dx_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(layer.weight.grad, dgamma, atol=1e-9, rtol=0)
    torch.testing.assert_close(layer.bias.grad, dbeta, atol=1e-9, rtol=0)
    for ours, ref in [
        (layer.running_mean, paper.mu),
        (layer.running_var, paper.var),
        (layer.ctrl_mean, paper.u),
        (layer.ctrl_proj, paper.v),
    ]:
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)


def test_fully_connected_features_are_normalized_over_time_only():
    """(N, C): mu(x_t) = x_t and var(x_t) = 0, so the first sample sees mu = 0, var = 1."""
    layer = build_norm("online", 2, alpha_fwd=0.5, eps=1e-5)
    x = torch.tensor([[2.0, -4.0], [6.0, 0.0]])
    y = layer(x).detach()
    torch.testing.assert_close(y[0], x[0] / (1 + 1e-5) ** 0.5)
    # mu_0 = 0.5 * x_0, var_0 = 0.5 * 1 + 0.25 * x_0^2
    mu0, var0 = 0.5 * x[0], 0.5 + 0.25 * x[0] ** 2
    torch.testing.assert_close(y[1], (x[1] - mu0) / (var0 + 1e-5).sqrt())


@pytest.mark.parametrize("shape", SHAPES)
def test_one_batch_of_eight_equals_eight_batches_of_one(shape):
    shape = (8, *shape[1:])
    whole = randomize_affine(build_norm("online", shape[1], alpha_fwd=0.8, alpha_bkw=0.9))
    single = randomize_affine(build_norm("online", shape[1], alpha_fwd=0.8, alpha_bkw=0.9))
    xs, gs = batches(shape, steps=2)
    for x, g in zip(xs, gs, strict=True):
        y, dx = train_step(whole, x, g)
        parts = [train_step(single, x[i : i + 1], g[i : i + 1]) for i in range(shape[0])]
        torch.testing.assert_close(y, torch.cat([p[0] for p in parts]), atol=1e-12, rtol=0)
        torch.testing.assert_close(dx, torch.cat([p[1] for p in parts]), atol=1e-12, rtol=0)
    for name, buffer in whole.named_buffers():
        if name != "num_batches_tracked":
            torch.testing.assert_close(buffer, single.get_buffer(name), atol=1e-12, rtol=0)
    torch.testing.assert_close(whole.weight.grad, single.weight.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 9), (1, 4, 3, 3)])
def test_trains_at_batch_size_one(shape):
    torch.manual_seed(0)
    layer = build_norm("online", 4)
    for _ in range(5):
        x = (torch.randn(shape) * 3 + 2).requires_grad_(True)
        y = layer(x)
        (y**2).sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
        assert x.grad.abs().sum() > 0, "online keeps an input gradient at batch size 1"
    assert layer.num_batches_tracked.item() == 5


def test_eval_uses_running_stats_and_changes_nothing():
    layer = randomize_affine(build_norm("online", 3))
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    x = torch.randn(5, 3, 4)
    expected = (x - layer.running_mean[:, None]) / (layer.running_var[:, None] + layer.eps).sqrt()
    expected = layer.weight[:, None] * expected + layer.bias[:, None]
    torch.testing.assert_close(layer(x), expected)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_buffers_are_in_state_dict_and_population_stats_round_trip():
    layer = build_norm("online", 3)
    assert {"running_mean", "running_var", "ctrl_mean", "ctrl_proj"} <= set(layer.state_dict())
    layer.set_population_stats(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]))
    mean, var = layer.population_stats()
    torch.testing.assert_close(mean, torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(var, torch.tensor([4.0, 5.0, 6.0]))


def test_registered_like_the_other_batch_dependent_layers():
    layer = build_norm("online", 3)
    assert isinstance(layer, OnlineNorm) and is_batch_dependent(layer)
    assert type(layer).schedules == {}, "its statistics decay per sample: no momentum schedule"
    with pytest.raises(ValueError, match="rmax"):
        build_norm("online", 3, rmax=2.0)
    assert (layer.alpha_fwd, layer.alpha_bkw) == (0.999, 0.99)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), layer)
    assert norm_layers(model) == {"1": layer}


def test_momentum_is_ignored_except_zero_which_freezes_the_statistics():
    x = torch.randn(4, 3, 5) + 2
    a, b = build_norm("online", 3, alpha_fwd=0.7), build_norm("online", 3, alpha_fwd=0.7)
    b.momentum = 0.9  # per-batch momentum: not the per-sample alpha_fwd
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    torch.testing.assert_close(a.running_mean, b.running_mean, atol=0, rtol=0)
    b.momentum = 0.0
    mean, var = b.running_mean.clone(), b.running_var.clone()
    y = b(x)
    assert torch.equal(b.running_mean, mean) and torch.equal(b.running_var, var)
    expected = (x - mean[:, None]) / (var[:, None] + b.eps).sqrt()
    torch.testing.assert_close(y, b.weight[:, None] * expected + b.bias[:, None])


def test_diagnostics_record_the_batch_against_the_running_estimates():
    layer = build_norm("online", 1, alpha_fwd=0.5)
    x = torch.tensor([[[1.0, 3.0]], [[5.0, 7.0]]])  # batch mean 4, biased batch variance 5
    layer(x)
    stats = layer.diagnostics.collect()
    assert stats["mean_shift"] == pytest.approx(4 / (1 + layer.eps) ** 0.5)
    assert stats["std_ratio"] == pytest.approx(((5 + layer.eps) / (1 + layer.eps)) ** 0.5)
    assert stats["prenorm_mean"] == pytest.approx(4.0)
    assert stats["prenorm_rms"] == pytest.approx((x**2).mean().sqrt().item())


@pytest.mark.parametrize("argument", ["alpha_fwd", "alpha_bkw"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 1.5])
def test_bad_alpha_raises_value_error_naming_it(argument, value):
    with pytest.raises(ValueError, match=argument):
        build_norm("online", 4, **{argument: value})
    with pytest.raises(ValueError, match=argument):
        build_norm("batch", 4, **{argument: value})  # checked even where unused
    layer = build_norm("online", 4)
    with pytest.raises(ValueError, match=argument):
        setattr(layer, argument, value)


def loop_scan(coef, b):
    h, out = b[0], [b[0]]
    for t in range(1, len(b)):
        h = (coef if isinstance(coef, float) else coef[t]) * h + b[t]
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 100])
@pytest.mark.parametrize("decay", [0.999, 0.5, 0.01, 1.0])
def test_constant_decay_scan_matches_the_recurrence(n, decay):
    """Long runs at small decay go in chunks (decay**-t would overflow in one)."""
    b = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(linear_scan(decay, b), loop_scan(decay, b), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 100])
def test_varying_coefficient_scan_matches_the_recurrence_through_zero_and_sign_flips(n):
    g = torch.Generator().manual_seed(n)
    b, coef = torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g) * 2
    coef[n // 2] = 0.0
    torch.testing.assert_close(linear_scan(coef, b), loop_scan(coef, b), atol=1e-12, rtol=1e-12)
