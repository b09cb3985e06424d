"""Moving Average Batch Normalization against a float64 re-derivation of Yan et al. 2020's
equations (as the authors' MABN2d applies them), run step by step for longer than the 1000-step
hold on r, so that the batch phase, the moving-average windows and r's hold and clamp are all
crossed."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from conftest import randomize_affine
from torch import nn

from normlab.errors import ConfigError
from normlab.norms import MovingAverageBatchNorm, build_norm, registry
from normlab.precise_bn import recompute_population_stats

pytestmark = pytest.mark.usefixtures("float64_module", "one_thread")

SHAPES = [(4, 3), (2, 3, 5), (2, 3, 2, 2)]
EPS = 1e-5
TOL = {"atol": 1e-10, "rtol": 1e-9}


@pytest.fixture(scope="module")
def one_thread():
    """Thousands of steps on tensors of a few dozen values: thread hand-offs would dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Comparisons:
    """Per step, tensors that must agree; compared all at once (thousands of small
    ``assert_close`` calls would dominate the run), naming the first step that does not."""

    NAMES = ("y", "grad_x", "grad_weight", "grad_bias", "running_var", "eval")

    def __init__(self):
        self.rows = {name: [] for name in self.NAMES}

    def add(self, t, got, want, names=NAMES[:4]):
        for name, a, b in zip(names, got, want, strict=True):
            self.rows[name].append((t, a.detach().flatten().clone(), b.detach().flatten().clone()))

    def check(self):
        for name, rows in self.rows.items():
            if not rows:
                continue
            got = torch.cat([a for _, a, _ in rows])
            want = torch.cat([b for _, _, b in rows])
            if torch.isclose(got, want, **TOL).all():
                continue
            t, a, b = next(row for row in rows if not torch.isclose(row[1], row[2], **TOL).all())
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name, s=t: f"{n}, t={s}: {m}")


class PaperMABN:
    """One channel-wise MABN step at a time, in float64, from the paper's equations: windows as
    deques of the last K values, r and the moving averages recomputed from scratch, gradients
    written out by hand and, where they are exact, checked against autograd of the plain
    formula ``weight * r * x / sqrt(<x^2> + eps) + bias``."""

    def __init__(self, weight, bias, buffer_size, warmup_iters, **switches):
        self.weight, self.bias = weight.detach().clone(), bias.detach().clone()
        self.k, self.w = buffer_size, warmup_iters
        self.sma_forward = switches.get("sma_forward", True)
        self.sma_backward = switches.get("sma_backward", True)
        self.renorm_r = switches.get("renorm_r", True)
        self.t = 0
        self.x2s, self.psis = deque(maxlen=buffer_size), deque(maxlen=buffer_size)
        self.running_var = torch.ones_like(self.weight)
        self.r_raw, self.r_used = {}, {}
        self.autograd = Comparisons()  # the hand-written step against autograd's, where exact

    def step(self, x, grad_out, momentum):
        self.t += 1
        axes = [0, *range(2, x.dim())]

        def per_channel(v):
            return v.reshape(1, -1, *([1] * (x.dim() - 2)))

        x2 = (x * x).mean(dim=axes)
        self.x2s.append(x2)
        batch_phase = self.t <= self.k or self.t < self.w
        use_batch_x2 = batch_phase or not self.sma_forward
        chi = x2 if use_batch_x2 else sum(self.x2s) / self.k
        sigma = torch.sqrt(chi + EPS)
        r_raw = sigma / torch.sqrt(self.running_var + EPS)
        self.r_raw[self.t] = r_raw
        if not self.renorm_r or self.t <= max(1000, self.w):
            r = torch.ones_like(r_raw)
        else:
            r = torch.where(r_raw > 5, 5.0, torch.where(r_raw < 0.2, 0.2, r_raw))
        self.r_used[self.t] = r
        z = x / per_channel(sigma)
        x_hat = per_channel(r) * z
        y = per_channel(self.weight) * x_hat + per_channel(self.bias)
        self.running_var = momentum * chi + (1 - momentum) * self.running_var

        g = grad_out * per_channel(self.weight * r)
        psi = (g * z).mean(dim=axes)
        self.psis.append(psi)
        use_batch_psi = batch_phase or not self.sma_backward
        psi_used = psi if use_batch_psi else sum(self.psis) / self.k
        grad_x = (g - z * per_channel(psi_used)) / per_channel(sigma)
        grad_weight = (grad_out * x_hat).sum(dim=axes)
        grad_bias = grad_out.sum(dim=axes)
        if use_batch_psi and use_batch_x2:
            self._compare_with_autograd(x, grad_out, r, (y, grad_x, grad_weight, grad_bias))
        return y, grad_x, grad_weight, grad_bias

    def _compare_with_autograd(self, x, grad_out, r, hand_written):
        x = x.clone().requires_grad_(True)
        weight = self.weight.clone().requires_grad_(True)
        bias = self.bias.clone().requires_grad_(True)
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, values)
        norm = torch.sqrt((flat**2).mean(1, keepdim=True) + EPS)
        out = weight[:, None] * r[:, None] * flat / norm + bias[:, None]
        out.backward(grad_out.transpose(0, 1).reshape(x.shape[1], -1))
        y = out.detach().reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
        self.autograd.add(self.t, hand_written, (y, x.grad, weight.grad, bias.grad))

    def eval_output(self, x):
        view = (1, -1, *([1] * (x.dim() - 2)))
        scale = (self.weight / torch.sqrt(self.running_var + EPS)).reshape(view)
        return x * scale + self.bias.reshape(view)


def inputs(shape, t, g):
    """Batch ``t``: a slowly varying scale with a mean of 0.1 (MABN subtracts none), ten times
    larger for steps 500-509 and 1030-1039, ten times smaller for steps 700-709 and 1070-1079:
    r out of range while held at 1, then clamped at 5 and at 1/5."""
    scale = math.exp(0.5 * math.sin(t / 30))
    if 500 <= t < 510 or 1030 <= t < 1040:
        scale *= 10
    if 700 <= t < 710 or 1070 <= t < 1080:
        scale /= 10
    x = torch.randn(shape, generator=g) * scale + 0.1
    return x, torch.randn(shape, generator=g)


def momentum_at(t):
    """A schedule the layer must follow step by step, as a trainer sets it."""
    return 0.005 if t % 10 else 0.02


def run_against_reference(shape, steps, buffer_size, warmup_iters, **switches):
    layer = randomize_affine(
        build_norm(
            "mabn",
            shape[1],
            buffer_size=buffer_size,
            warmup_iters=warmup_iters,
            eps=EPS,
            **switches,
        )
    )
    ref = PaperMABN(layer.weight, layer.bias, buffer_size, warmup_iters, **switches)
    g = torch.Generator().manual_seed(sum(shape) + buffer_size + warmup_iters)
    compared = Comparisons()
    for t in range(1, steps + 1):
        x, grad_out = inputs(shape, t, g)
        layer.momentum = momentum_at(t)
        layer.weight.grad = layer.bias.grad = None
        x_in = x.clone().requires_grad_(True)
        y = layer(x_in)
        y.backward(grad_out)
        want = ref.step(x, grad_out, momentum_at(t))
        compared.add(t, (y, x_in.grad, layer.weight.grad, layer.bias.grad), want)
        compared.add(t, (layer.running_var,), (ref.running_var,), names=("running_var",))
        assert int(layer.num_batches_tracked) == t
        if t % 97 == 0 or t in (999, 1000, 1001, 1002, steps):
            layer.eval()
            with torch.no_grad():
                compared.add(t, (layer(x),), (ref.eval_output(x),), names=("eval",))
            layer.train()
    compared.check()
    ref.autograd.check()
    assert ref.autograd.rows["grad_x"], "the batch phase was compared with autograd"
    return ref


def clamps_after(ref, step):
    """(steps with an r clamped at 5, at 1/5) after ``step``: the run must cross both."""
    late = [t for t in ref.r_raw if t > step]
    high = sum(bool((ref.r_raw[t] > 5).any()) for t in late)
    low = sum(bool((ref.r_raw[t] < 0.2).any()) for t in late)
    return high, low


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("buffer_size", "warmup_iters"),
    [(3, 7), (6, 2), (4, 1005)],
    ids=["warmup_after_buffer", "warmup_before_buffer", "warmup_past_1000"],
)
def test_training_steps_match_the_paper_equations(shape, buffer_size, warmup_iters):
    ref = run_against_reference(shape, 1100, buffer_size, warmup_iters)
    hold = max(1000, warmup_iters)
    assert all(bool((ref.r_used[t] == 1).all()) for t in range(1, hold + 1))
    assert any(bool(((ref.r_raw[t] > 5) | (ref.r_raw[t] < 0.2)).any()) for t in range(1, hold))
    assert bool((ref.r_used[hold + 1] != 1).any()), "r leaves 1 the step after the hold"
    assert min(clamps_after(ref, hold)) > 0


@pytest.mark.parametrize("switch", ["sma_forward", "sma_backward", "renorm_r"])
def test_each_ablation_matches_the_equations_without_its_part(switch):
    ref = run_against_reference((2, 3, 5), 1085, 3, 7, **{switch: False})
    if switch == "renorm_r":
        assert all(bool((r == 1).all()) for r in ref.r_used.values())
    else:
        assert min(clamps_after(ref, 1000)) > 0


def test_each_part_changes_the_training_step():
    """The references for the ablations differ from the full layer where the part acts: none of
    the comparisons above could pass with a switch ignored."""
    shape, g = (2, 3, 5), torch.Generator().manual_seed(0)
    steps = [inputs(shape, t, g) for t in range(1, 1011)]
    outputs = {}
    for switch in (None, "sma_forward", "sma_backward", "renorm_r"):
        ref = PaperMABN(torch.ones(3), torch.zeros(3), 3, 7, **({switch: False} if switch else {}))
        outputs[switch] = [ref.step(x, go, 0.02)[:2] for x, go in steps]
    full = outputs[None]
    differs = {
        switch: [
            t + 1
            for t, ((y, gx), (y0, gx0)) in enumerate(zip(outputs[switch], full, strict=True))
            if not (torch.allclose(y, y0) and torch.allclose(gx, gx0))
        ]
        for switch in ("sma_forward", "sma_backward", "renorm_r")
    }
    assert differs["sma_forward"][0] == 7  # the first step with t > 3 and not t < 7
    assert differs["sma_backward"][0] == 7
    assert differs["renorm_r"][0] == 1001


def test_a_forward_without_a_backward_keeps_the_psi_of_k_steps_earlier():
    """As MABN2d: the backward writes its step's row; a forward alone leaves the old one."""
    layer = build_norm("mabn", 2, buffer_size=2, warmup_iters=0)
    x = torch.randn(4, 2)
    for _ in range(2):
        layer(x.clone().requires_grad_(True)).sum().backward()
    stale = layer.psi_window[1].clone()
    with torch.no_grad():
        layer(x * 3)  # step 3 writes x2_window[1], not psi_window[1]
    assert torch.equal(layer.psi_window[1], stale)
    torch.testing.assert_close(layer.x2_window[1], (x * 3).square().mean(0))


def test_state_dict_resumes_the_same_trajectory():
    shape, g = (2, 3, 4), torch.Generator().manual_seed(3)
    steps = [inputs(shape, t, g) for t in range(1, 21)]
    whole = randomize_affine(build_norm("mabn", 3, buffer_size=4, warmup_iters=6))
    resumed = build_norm("mabn", 3, buffer_size=4, warmup_iters=6)

    def train(layer, batches):
        out = []
        for x, grad_out in batches:
            x = x.clone().requires_grad_(True)
            layer(x).backward(grad_out)
            out.append(x.grad)
        return out

    expected = train(whole, steps)
    first = randomize_affine(build_norm("mabn", 3, buffer_size=4, warmup_iters=6))
    train(first, steps[:9])
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(train(resumed, steps[9:]), expected[9:], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_precise_statistics_average_the_second_moment():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), build_norm("mabn", 3, buffer_size=2, warmup_iters=0))
    for _ in range(5):
        model(torch.randn(8, 4) * 2 + 1).sum().backward()
    data = [torch.randn(6, 4) * 3 + 1 for _ in range(4)]
    layer = model[1]
    before = {k: b.clone() for k, b in layer.named_buffers() if k != "running_var"}
    recompute_population_stats(model, data)
    with torch.no_grad():
        second_moments = torch.stack([model[0](x).square().mean(0) for x in data])
    torch.testing.assert_close(layer.running_var, second_moments.mean(0), atol=1e-12, rtol=0)
    for key, buffer in layer.named_buffers():
        if key != "running_var":
            assert torch.equal(buffer, before[key]), key


def test_build_norm_takes_the_specified_options():
    layer = build_norm("mabn", 5, buffer_size=8, warmup_iters=50, momentum=0.02, eps=1e-4)
    assert isinstance(layer, MovingAverageBatchNorm)
    assert (layer.buffer_size, layer.warmup_iters, layer.momentum, layer.eps) == (8, 50, 0.02, 1e-4)
    assert layer.x2_window.shape == layer.psi_window.shape == (8, 5)
    assert (layer.sma_forward, layer.sma_backward, layer.renorm_r) == (True, True, True)
    assert build_norm("mabn", 5).momentum == pytest.approx(1 - 0.98), "the authors' 0.98"
    assert "momentum" in MovingAverageBatchNorm.schedules, "a trainer's momentum schedule sets it"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("buffer_size", 0),
        ("buffer_size", 2.5),
        ("warmup_iters", -1),
        ("eps", 0.0),
        ("sma_forward", "yes"),
        ("renorm_r", 1),
    ],
)
def test_bad_options_fail_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"norm.{key}="):
        registry.choose({"mode": "mabn", key: value})


def test_ablations_get_their_own_label_and_tags():
    full = registry.choose({"mode": "mabn"})
    ablated = registry.choose({"mode": "mabn", "sma_backward": False, "renorm_r": False})
    assert full.label() == "mabn" and full.tags() == ["buffer_size:16"]
    assert ablated.label() == "mabn (without sma_backward, renorm_r)"
    assert ablated.tags() == ["buffer_size:16", "no_sma_backward", "no_renorm_r"]
