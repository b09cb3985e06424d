"""A packed model's SGD step without the optimizer's wrapper (normlab.optim.fused_sgd_step)
against torch.optim.SGD's own step, and where it declines."""

import pytest
import torch

from normlab.optim import fused_sgd_step

SHAPES = [(6, 5), (6,), (3, 2, 4), (50,)]


def _params(dtype):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(s, dtype=dtype, generator=generator).requires_grad_() for s in SHAPES]


def _groups(params, decay):
    """Weight decay on the matrices, none on the vectors (as build_optimizer groups them)."""
    return [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": decay},
        {"params": [p for p in params if p.dim() == 1], "weight_decay": 0.0},
    ]


def _set_grads(params, step):
    generator = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, dtype=p.dtype, generator=generator)


@pytest.mark.parametrize(
    ("momentum", "nesterov", "decay"), [(0.9, False, 0.1), (0.9, True, 0.0), (0.0, False, 0.1)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_it_steps_as_torchs_sgd(momentum, nesterov, decay, dtype):
    """Four steps, the first torch's own (it makes the momentum buffers): the parameters and
    buffers equal those of torch.optim.SGD's step, fused (the same kernel: exactly) and
    unfused (torch's reference loop: to rounding)."""
    options = {"lr": 0.05, "momentum": momentum, "nesterov": nesterov}
    ours = _params(dtype)
    optimizer = torch.optim.SGD(_groups(ours, decay), **options, fused=True)
    references = {}
    for fused in (True, False):
        params = _params(dtype)
        reference = torch.optim.SGD(_groups(params, decay), **options, fused=fused)
        references[fused] = (params, reference)
    taken = []
    for step in range(4):
        _set_grads(ours, step)
        taken.append(fused_sgd_step(optimizer) or optimizer.step() or False)
        for params, reference in references.values():
            _set_grads(params, step)
            reference.step()
    assert taken == [momentum == 0, True, True, True]
    for fused, (params, reference) in references.items():
        exact = {"rtol": 0, "atol": 0} if fused else {}
        for a, b in zip(ours, params, strict=True):
            torch.testing.assert_close(a, b, **exact)
            if momentum:
                torch.testing.assert_close(
                    optimizer.state[a]["momentum_buffer"],
                    reference.state[b]["momentum_buffer"],
                    **exact,
                )


def test_it_declines_where_it_does_not_apply():
    """Nothing stepped and False returned: AdamW, an unfused SGD, a missing gradient, and the
    first momentum step."""

    def declined(optimizer, params):
        before = [p.detach().clone() for p in params]
        assert not fused_sgd_step(optimizer)
        assert all(torch.equal(a, b) for a, b in zip(params, before, strict=True))

    params = _params(torch.float32)
    _set_grads(params, 0)
    declined(torch.optim.AdamW(params, lr=0.1, fused=True), params)
    declined(torch.optim.SGD(params, lr=0.1), params)
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, fused=True)
    declined(sgd, params)  # no momentum buffers yet
    sgd.step()
    params[1].grad = None
    declined(sgd, params)
