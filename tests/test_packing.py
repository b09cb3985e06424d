"""A cell's seeds packed into one model: each seed trains as its unpacked run does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from normlab.config.identity import run_directory
from normlab.config.validation import validate
from normlab.models import build_model
from normlab.norms import registry
from normlab.packing import (
    ConvolutionBackend,
    NormGroup,
    Pack,
    PackedLinear,
    activations_per_example,
    oversized_reason,
    pack_model,
    relative_step_cost,
)
from normlab.records import CHECKPOINT_FILE
from normlab.train import pack_key, run, run_seeds

MODES = ("batch", "moving_average", "renorm", "online", "mabn", "group", "layer", "none")
SEEDS = (0, 1, 2)
# a few steps of a tiny run, logging every step
TINY = ["steps=6", "eval_every=2", "batch_size=4", "model.depth=2", "model.width=8"]
SWEPT = [t for t in TINY if not t.startswith("batch_size")]  # a sweep sets its own


def _mode(mode: str) -> list[str]:
    return [f"norm={mode}"] + (["norm.groups=4"] if mode == "group" else [])


ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# the seeds of a pack and their modes: one mode, or a setting's modes packed together
MIXED = ("batch", "batch", "moving_average", "renorm", "online", "online", "group", "none")


@pytest.mark.parametrize(
    ("modes", "model", "centred", "device"),
    [
        *(((mode,) * 3, "cnn1d", False, "cpu") for mode in MODES),
        (("batch",) * 3, "mlp", False, "cpu"),
        (("mabn",) * 3, "cnn1d", True, "cpu"),
        (("batch",) * 3, "mlp", True, "cpu"),
        (MIXED, "mlp", False, "cpu"),
        (MODES, "cnn1d", False, "cpu"),
        (("mabn", "batch", "mabn", "layer"), "cnn1d", True, "cpu"),
        *(pytest.param((m,) * 3, "cnn1d", False, "cuda", marks=ON_CUDA) for m in MODES),
        pytest.param(("batch",) * 3, "mlp", True, "cuda", marks=ON_CUDA),
        pytest.param(MODES, "cnn1d", False, "cuda", marks=ON_CUDA),
    ],
)
def test_a_packed_step_is_each_seeds_own_step(
    modes, model, centred, device, monkeypatch, packed_ops
):
    """Forward, gradients and buffers of a packed model equal each seed's unpacked model (the
    reference: the seeds' own models, stepped one by one with torch.nn.functional), also with
    centred weights (a parametrization the packed layers carry over), with seeds of different
    modes in one pack (each mode's seeds one group), and on CUDA."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full fp32 on both sides
    choices = {
        m: registry.choose({"mode": m, **({"groups": 4} if m == "group" else {})}) for m in modes
    }
    order = sorted(range(len(modes)), key=lambda i: modes.index(modes[i]))  # groups in turn
    seeds = range(len(modes))
    models = []
    for seed in order:
        torch.manual_seed(seed)
        build = choices[modes[seed]].build
        models.append(
            build_model(model, (1, 40), 10, build, depth=2, width=8, centred_weights=centred)
        )
    models = [m.to(device) for m in models]
    groups = [NormGroup(choices[m].build, modes.count(m)) for m in dict.fromkeys(modes)]
    pack = Pack(pack_model(models, groups).to(device), models)
    for seed in seeds:
        pack.load_seed(seed)
    x = [
        torch.randn(4, 1, 40, generator=torch.Generator().manual_seed(9 + s)).to(device)
        for s in seeds
    ]
    y = [torch.tensor([s % 10, 3, 5, 7], device=device) for s in seeds]
    packed_x = torch.stack(x).transpose(0, 1).reshape(4, len(seeds), 40)
    for _ in range(2):
        logits = pack.model(packed_x).view(4, len(seeds), 10)
        sum(F.cross_entropy(logits[:, s], y[s]) for s in seeds).backward()
        for s in seeds:
            own = models[s](x[s])
            F.cross_entropy(own, y[s]).backward()
            torch.testing.assert_close(logits[:, s], own, rtol=1e-5, atol=1e-6)
    expected = [
        ({n: p.grad.clone() for n, p in m.named_parameters()}, dict(m.named_buffers()))
        for m in models
    ]
    expected = [(g, {n: b.clone() for n, b in bufs.items()}) for g, bufs in expected]
    for s in seeds:
        pack.store_seed(s)
        grads, buffers = expected[s]
        for name, param in models[s].named_parameters():
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-5)
        for name, buffer in models[s].named_buffers():
            torch.testing.assert_close(buffer, buffers[name], rtol=1e-5, atol=1e-6)


def test_a_packed_1d_cnn_at_batch_1_runs_atens_convolutions_as_each_seeds_own_step():
    """At batch 1 on CPU a packed step of the 1-D CNN runs ATen's own convolutions, not
    oneDNN's; its outputs and gradients still equal each seed's own model's (stepped with
    oneDNN, the unpacked run's kernels). Other batch sizes and 2-D models keep oneDNN, and
    the flag is restored on the way out, also when the step raises."""
    choice = registry.choose({"mode": "batch"})
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(build_model("cnn1d", (1, 40), 10, choice.build, depth=2, width=8))
    pack = Pack(pack_model(models, [NormGroup(choice.build, len(SEEDS))]), models)
    for seed in SEEDS:
        pack.load_seed(seed)
    x = [torch.randn(1, 1, 40, generator=torch.Generator().manual_seed(s)) for s in SEEDS]
    cpu = torch.device("cpu")
    backend = ConvolutionBackend(pack.model, 1, cpu)
    with backend:
        assert not torch.backends.mkldnn.enabled
        logits = pack.model(torch.cat(x, dim=1)).view(1, len(SEEDS), 10)
        sum(F.cross_entropy(logits[:, s], torch.tensor([s])) for s in SEEDS).backward()
    assert torch.backends.mkldnn.enabled
    for s in SEEDS:
        own = models[s](x[s])
        F.cross_entropy(own, torch.tensor([s])).backward()
        torch.testing.assert_close(logits[:, s], own, rtol=1e-5, atol=1e-6)
    pack.store_seed(0)  # the packed gradients, into seed 0's model beside its own
    reference = models[0]
    torch.manual_seed(0)
    alone = build_model("cnn1d", (1, 40), 10, choice.build, depth=2, width=8)
    F.cross_entropy(alone(x[0]), torch.tensor([0])).backward()
    for (name, ours), theirs in zip(reference.named_parameters(), alone.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5, msg=name)
    with pytest.raises(RuntimeError), backend:
        raise RuntimeError("a step that fails")
    assert torch.backends.mkldnn.enabled
    mlp = build_model("mlp", (1, 40), 10, choice.build, depth=2, width=8)
    cnn = build_model("cnn", (1, 28, 28), 10, choice.build, depth=2, width=8)
    others = ((pack.model, 2), (mlp, 1), (cnn, 1))
    assert not any(ConvolutionBackend(model, batch, cpu).aten for model, batch in others)


def _metrics(run_dir) -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "metrics.csv")


def _packed_and_alone(compose_config, *overrides):
    cfgs = [compose_config(*TINY, *overrides, f"seed={s}") for s in SEEDS]
    packed = run_seeds(cfgs)
    alone_cfgs = [compose_config(*TINY, *overrides, f"seed={s}", "sweep=alone") for s in SEEDS]
    alone = [run(cfg) for cfg in alone_cfgs]
    return packed, alone


@pytest.mark.parametrize("mode", ["batch", "renorm", "online", "group"])
def test_packed_runs_record_what_their_unpacked_runs_record(compose_config, mode, packed_ops):
    """Same run ids, statuses, logged numbers and per-step traces to float tolerance
    (summation order differs), one record per seed."""
    packed, alone = _packed_and_alone(compose_config, *_mode(mode), "trace.steps=2")
    for p, a in zip(packed, alone, strict=True):
        assert p["run_id"] == a["run_id"] and p["status"] == a["status"] == "completed"
        ours, theirs = _metrics(p["run_dir"]), _metrics(a["run_dir"])
        assert list(ours.columns) == list(theirs.columns)
        numbers = [c for c in theirs.columns if not c.endswith("_seconds")]
        pd.testing.assert_frame_equal(ours[numbers], theirs[numbers], rtol=1e-4, atol=1e-5)
        ours, theirs = (pd.read_csv(Path(r["run_dir"]) / "trace.csv") for r in (p, a))
        assert list(theirs["step"]) == [0, 1, 4, 5]
        pd.testing.assert_frame_equal(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("batch", "bias"), [(1, True), (4, True), (3, False)])
def test_packed_linear_is_each_seeds_linear_layer(batch, bias, packed_ops):
    """Per seed ``x_s @ W_s.T + b_s`` in float64, its backward checked against finite
    differences (gradcheck) and its output against ``F.linear`` seed by seed."""
    seeds, fan_in, fan_out = 3, 5, 4
    layer = PackedLinear(seeds, fan_in, fan_out, bias).double()
    torch.nn.init.normal_(layer.weight)
    x = torch.randn(batch, seeds * fan_in, dtype=torch.float64, requires_grad=True)
    params = (layer.weight, layer.bias) if bias else (layer.weight,)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))
    weights = layer.weight.view(seeds, fan_out, fan_in)
    biases = layer.bias.view(seeds, fan_out) if bias else [None] * seeds
    inputs = x.chunk(seeds, 1)
    expected = torch.cat(
        [F.linear(x_s, w, b) for x_s, w, b in zip(inputs, weights, biases, strict=True)], dim=1
    )
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    # a first layer's input (the data) needs no gradient: the parameters' still match F.linear's
    grad = torch.randn_like(expected)
    packed = torch.autograd.grad((layer(x.detach()) * grad).sum(), params)
    reference = torch.autograd.grad((expected * grad).sum(), params)
    for ours, theirs in zip(packed, reference, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("batch", "bias"), [(1, True), (4, False)])
def test_the_packed_linear_op_passes_opcheck(batch, bias):
    """``normlab::packed_linear``'s registration: schema, autograd kernel, fake (meta) tensors
    and AOT dispatch (torch.library.opcheck, every util)."""
    from normlab import extension

    assert extension.entries() is not None, "the compiled CPU kernels failed to build"
    weight = torch.randn(3 * 4, 5, requires_grad=True)
    args = (torch.randn(batch, 3 * 5, requires_grad=True), weight)
    args += (torch.randn(3 * 4, requires_grad=True) if bias else None, 3)
    torch.library.opcheck(torch.ops.normlab.packed_linear.default, args, test_utils="ALL")


@pytest.mark.parametrize(
    ("extra", "factors"),
    [
        (["optim=adamw", "optim.weight_decay=0.1"], (0.5, 1.0, 2.0)),
        (["optim.weight_decay=0.1"], (0.5, 1.0, 2.0, 0.3)),
        (["optim.weight_decay=0.1", "optim.nesterov=true"], (1.0, 0.25, 3.0)),
        (["optim.weight_decay=0.1", "optim.momentum=0.0"], (2.0, 1.0, 0.5)),
    ],
)
def test_lr_factors_pack_with_each_seeds_own_learning_rate(
    compose_config, extra, factors, packed_ops
):
    """The selection stage packs factors: each run steps with its own learning rate, with
    weight decay and clipping (every term of the step scales with it): AdamW, and SGD with
    momentum, Nesterov's and none, also at factors that are not powers of two."""
    extra = [*extra, "optim.grad_clip=0.5"]
    cfgs = [compose_config(*TINY, *extra, f"optim.lr_factor={f}") for f in factors]
    packed = run_seeds(cfgs)
    for factor, summary in zip(factors, packed, strict=True):
        alone = run(compose_config(*TINY, *extra, f"optim.lr_factor={factor}", "sweep=alone"))
        assert summary["run_id"] == alone["run_id"]
        ours, theirs = _metrics(summary["run_dir"]), _metrics(alone["run_dir"])
        for column in ("loss", "lr", "param_norm", "grad_norm", "val_loss"):
            torch.testing.assert_close(
                torch.tensor(ours[column].values),
                torch.tensor(theirs[column].values),
                rtol=1e-4,
                atol=1e-5,
                equal_nan=True,
            )


def test_a_diverging_seed_stops_alone(compose_config, monkeypatch):
    """Seed 1 at a huge learning rate diverges and is recorded so at its own step; the other
    two train on exactly as in a pack without it, and from then on in a pack of two."""
    from normlab import packed_trainer

    widths = []
    step = packed_trainer.PackedTrainer._train_step

    def counted(self):
        widths.append(self.seeds)
        step(self)

    monkeypatch.setattr(packed_trainer.PackedTrainer, "_train_step", counted)
    huge = ["optim.lr=1e6", "steps=8"]
    cfgs = [compose_config(*TINY, *huge, f"optim.lr_factor={f}") for f in (1e-6, 1.0, 2e-6)]
    packed = run_seeds(cfgs)
    assert [s["status"] for s in packed] == ["completed", "diverged", "completed"]
    stopped = packed[1]["steps"]
    assert 0 < stopped < 8 and widths == [3] * stopped + [2] * (8 - stopped)
    alone = run(compose_config(*TINY, *huge, "optim.lr_factor=1.0", "sweep=alone"))
    for key in ("status", "steps", "divergence_step", "divergence_signal", "run_id"):
        assert packed[1][key] == alone[key]
    without = run_seeds(
        [
            compose_config(*TINY, *huge, f"optim.lr_factor={f}", "sweep=without")
            for f in (1e-6, 2e-6)
        ]
    )
    for ours, theirs in zip((packed[0], packed[2]), without, strict=True):
        a, b = _metrics(ours["run_dir"]), _metrics(theirs["run_dir"])
        numbers = [c for c in a.columns if not c.endswith("_seconds")]
        pd.testing.assert_frame_equal(a[numbers], b[numbers], rtol=1e-6, atol=1e-7)
        assert all(math.isfinite(v) for v in a["param_norm"])


def test_each_seed_is_timed_for_its_share_of_the_steps_it_trained(compose_config, monkeypatch):
    """With every packed step taking one (fake) second, a seed's train_seconds is the sum of
    1 / (seeds in the pack) over the steps it trained: k / 3 for the seed that diverged at step
    k, k / 3 + (8 - k) / 2 for the two that trained on in a pack of two."""
    from normlab import packed_trainer

    clock = iter(range(10**6))

    class OneSecondSteps:  # _train_step reads the clock twice a step: start, end
        @staticmethod
        def perf_counter() -> float:
            return float(next(clock))

    monkeypatch.setattr(packed_trainer, "time", OneSecondSteps)
    huge = ["optim.lr=1e6", "steps=8"]
    cfgs = [compose_config(*TINY, *huge, f"optim.lr_factor={f}") for f in (1e-6, 1.0, 2e-6)]
    packed = run_seeds(cfgs)
    k = packed[1]["steps"]
    assert [s["status"] for s in packed] == ["completed", "diverged", "completed"] and k < 8
    expected = [k / 3 + (8 - k) / 2, k / 3, k / 3 + (8 - k) / 2]
    assert [s["train_seconds"] for s in packed] == pytest.approx(expected)


def test_the_last_seed_running_trains_on_as_its_own_run(compose_config):
    """The first seed diverges and leaves one: that one trains on alone, at its own learning
    rate (no longer a factor of the first's), as its unpacked run does."""
    huge = ["optim.lr=1e6", "steps=8"]
    cfgs = [compose_config(*TINY, *huge, f"optim.lr_factor={f}") for f in (1.0, 1e-6)]
    packed = run_seeds(cfgs)
    assert [s["status"] for s in packed] == ["diverged", "completed"]
    alone = run(compose_config(*TINY, *huge, "optim.lr_factor=1e-6", "sweep=alone"))
    a, b = _metrics(packed[1]["run_dir"]), _metrics(alone["run_dir"])
    numbers = [c for c in b.columns if not c.endswith("_seconds")]
    pd.testing.assert_frame_equal(a[numbers], b[numbers], rtol=1e-4, atol=1e-5)


def test_resume_after_a_kill_resumes_every_seed(compose_config, monkeypatch):
    """A pack killed after its first checkpoint resumes each seed from its own checkpoint and
    ends with the numbers of a pack never stopped."""
    cfgs = [compose_config(*TINY, f"seed={s}") for s in SEEDS]
    resumed = _killed_after_step_four_and_resumed(cfgs, monkeypatch)
    whole = run_seeds([compose_config(*TINY, f"seed={s}", "sweep=whole") for s in SEEDS])
    for ours, theirs in zip(resumed, whole, strict=True):
        assert ours["status"] == "completed" and ours["resumed_from_step"] == 4
        a, b = _metrics(ours["run_dir"]), _metrics(theirs["run_dir"])
        numbers = [c for c in a.columns if not c.endswith("_seconds")]
        pd.testing.assert_frame_equal(a[numbers], b[numbers], rtol=1e-6, atol=1e-7)


def test_a_resumed_pack_of_lr_factors_keeps_each_seeds_momentum(
    compose_config, monkeypatch, packed_ops
):
    """Each seed's checkpoint holds its own momentum (the packed SGD's buffer holds it times
    the seed's factor): killed and resumed, every factor ends as its unpacked run."""
    factors = (1.0, 0.5, 2.0)
    cfgs = [compose_config(*TINY, f"optim.lr_factor={f}") for f in factors]
    resumed = _killed_after_step_four_and_resumed(cfgs, monkeypatch)
    for factor, ours in zip(factors, resumed, strict=True):
        alone = run(compose_config(*TINY, f"optim.lr_factor={factor}", "sweep=alone"))
        assert ours["resumed_from_step"] == 4
        a, b = _metrics(ours["run_dir"]), _metrics(alone["run_dir"])
        numbers = [c for c in a.columns if not c.endswith("_seconds")]
        pd.testing.assert_frame_equal(a[numbers], b[numbers], rtol=1e-4, atol=1e-5)


def _killed_after_step_four_and_resumed(cfgs, monkeypatch) -> list[dict]:
    from normlab import packed_trainer

    original = packed_trainer.PackedTrainer._iteration

    def killed_after_step_four(self):
        original(self)
        if self.step == 4:
            raise KeyboardInterrupt  # as kill -9 would, after the checkpoint of step 4

    monkeypatch.setattr(packed_trainer.PackedTrainer, "_iteration", killed_after_step_four)
    with pytest.raises(KeyboardInterrupt):
        run_seeds(cfgs)
    monkeypatch.setattr(packed_trainer.PackedTrainer, "_iteration", original)
    for cfg in cfgs:
        assert (run_directory(validate(cfg)) / CHECKPOINT_FILE).exists()
    return run_seeds(cfgs)


def test_pack_is_left_out_of_the_run_id(compose_config):
    packed = validate(compose_config("pack=true"))
    alone = validate(compose_config("pack=false"))
    assert run_directory(packed) == run_directory(alone)
    assert pack_key(compose_config("pack=false")) == (None, None)
    one, two = pack_key(compose_config("seed=1")), pack_key(compose_config("seed=2"))
    assert one == two and one[0] is not None
    assert pack_key(compose_config("batch_size=8"))[0] != one[0]


SMALL_MLP = ("model=mlp", "model.depth=2", "model.width=16", "device=cpu")


def test_activations_per_example_are_every_layers_outputs(compose_config):
    """Hand count: each of 2 hidden layers outputs 16 values from its linear layer, its norm and
    its ReLU, then 10 class scores."""
    run = validate(compose_config(*SMALL_MLP))
    assert activations_per_example(run) == 2 * 3 * 16 + 10


def test_a_steps_cost_grows_with_its_batchs_activations(compose_config):
    """106 values an example: a step at batch 8 costs 1 + 8 * 106 / 20,000 of one at batch 1."""
    run = validate(compose_config(*SMALL_MLP, "batch_size=8"))
    assert relative_step_cost(run) == pytest.approx(1 + 8 * 106 / 20_000, rel=1e-12)


def test_a_cpu_cell_past_pack_max_activations_trains_one_seed_per_process(compose_config):
    """106 values an example: batch 4 holds 424 a seed-step and packs under a limit of 500;
    batch 8 holds 848, and its sweep jobs train alone, saying why."""
    limit = "pack_max_activations=500"
    key, reason = pack_key(compose_config(*SMALL_MLP, limit, "batch_size=4"))
    assert key is not None and reason is None
    key, reason = pack_key(compose_config(*SMALL_MLP, limit, "batch_size=8"))
    assert key is None
    assert "model=mlp at batch_size=8 holds 848 activations" in reason and "=500" in reason
    unlimited = pack_key(compose_config(*SMALL_MLP, "pack_max_activations=0", "batch_size=8"))
    assert unlimited[0] is not None
    big = validate(compose_config(*SMALL_MLP, limit, "batch_size=8"))
    assert oversized_reason(big, torch.device("cuda")) is None, "the limit is the CPU's"
    default = validate(compose_config(*SMALL_MLP, "batch_size=8"))
    assert run_directory(big) == run_directory(default), "the limit is not in the run id"


def test_a_sweep_packs_a_cells_seeds_and_counts_each_as_a_run(cli):
    result = cli("-m", "norm=batch", "seed=0,1,2", "batch_size=4,8", *SWEPT)
    assert result.code == 0, result.err
    summaries = [json.loads((d / "summary.json").read_text()) for d in result.run_dirs()]
    assert len(summaries) == 6 and {s["packed_runs"] for s in summaries} == {3}
    assert all(s["status"] == "completed" for s in summaries)
    assert result.err.count("completed, 6 steps") == 6 and "6/6 runs (6 completed)" in result.err
    again = cli("-m", "norm=batch", "seed=0,1,2", "batch_size=4,8", *SWEPT, "pack=false")
    assert "6/6 runs (6 skipped)" in again.err, "pack=false: the same run ids"


def test_an_outside_mode_trains_its_seeds_one_per_process_and_says_so_once(cli, monkeypatch):
    example = Path(__file__).parent / "example_mode"
    monkeypatch.syspath_prepend(str(example))
    search = f"hydra.searchpath=[file://{example / 'conf'}]"
    result = cli(search, "-m", "norm=evonorm_b0", "seed=0,1", "batch_size=4,8", *SWEPT)
    assert result.code == 0, result.err
    assert result.err.count("one per process") == 1
    summaries = [json.loads((d / "summary.json").read_text()) for d in result.run_dirs()]
    assert len(summaries) == 4 and all("packed_runs" not in s for s in summaries)


# a setting's modes, as a sweep over norm=... gives them (a switch makes batch a second norm)
SETTING = (
    ("norm=batch",),
    ("norm=batch", "norm.switch_at=0.5"),
    ("norm=moving_average",),
    ("norm=renorm",),
    ("norm=online",),
    ("norm=group", "norm.groups=4"),
)
RAMP = ("momentum=ramp", "momentum.unit=steps", "momentum.finish=4")


def test_a_settings_modes_pack_together_as_their_unpacked_runs(compose_config):
    """The modes of one setting, two seeds each and interleaved, share one pack key and train
    in one pack, each mode's layers on their own schedules (a momentum ramp, renorm's rmax and
    dmax, a switch to population statistics at half-way): every run records the numbers and
    trace of its unpacked run."""
    runs = [(mode, seed) for seed in (0, 1) for mode in SETTING]
    common = (*TINY, *RAMP, "trace.steps=2")
    cfgs = [compose_config(*common, *mode, f"seed={seed}") for mode, seed in runs]
    assert len({pack_key(cfg) for cfg in cfgs}) == 1
    packed = run_seeds(cfgs)
    assert {s["packed_runs"] for s in packed} == {len(runs)}
    for (mode, seed), ours in zip(runs, packed, strict=True):
        alone = run(compose_config(*common, *mode, f"seed={seed}", "sweep=alone"))
        assert ours["run_id"] == alone["run_id"] and ours["status"] == alone["status"]
        a, b = _metrics(ours["run_dir"]), _metrics(alone["run_dir"])
        numbers = [c for c in b.columns if not c.endswith("_seconds")]
        pd.testing.assert_frame_equal(a[numbers], b[numbers], rtol=1e-4, atol=1e-5)
        a, b = (pd.read_csv(Path(r["run_dir"]) / "trace.csv") for r in (ours, alone))
        pd.testing.assert_frame_equal(a, b, rtol=1e-4, atol=1e-5)


def test_a_mode_whose_seeds_diverge_leaves_a_mixed_pack(compose_config):
    """renorm's only seed diverges at a huge learning rate: its group leaves the pack, and the
    batch and online seeds train on as their unpacked runs do."""
    huge = ["optim.lr=1e6", "steps=8"]
    runs = [("batch", 1e-6), ("renorm", 1.0), ("online", 2e-6)]
    cfgs = [compose_config(*TINY, *huge, f"norm={m}", f"optim.lr_factor={f}") for m, f in runs]
    packed = run_seeds(cfgs)
    assert [s["status"] for s in packed] == ["completed", "diverged", "completed"]
    for (mode, factor), ours in zip(runs, packed, strict=True):
        extra = [f"norm={mode}", f"optim.lr_factor={factor}", "sweep=alone"]
        alone = run(compose_config(*TINY, *huge, *extra))
        for key in ("status", "steps", "divergence_step", "run_id"):
            assert ours.get(key) == alone.get(key)
        a, b = _metrics(ours["run_dir"]), _metrics(alone["run_dir"])
        numbers = [c for c in b.columns if not c.endswith("_seconds")]
        pd.testing.assert_frame_equal(a[numbers], b[numbers], rtol=1e-4, atol=1e-5)


def _launcher_cfg(mode: str, steps: int = 10):
    from omegaconf import OmegaConf

    return OmegaConf.create({"norm": {"mode": mode}, "steps": steps, "batch_size": 4})


def test_a_setting_splits_between_its_modes_to_give_each_worker_a_pack():
    """A sweep of one setting on two workers: its pack splits at the norm boundary nearest
    half its runs (two packs of modes, as before a setting packed whole); never within a norm,
    never when packs of equal length already fill the workers or on one worker."""
    from hydra_plugins.normlab_launcher.normlab_launcher import _spread

    cfg = _launcher_cfg

    modes = ["batch", "renorm", "batch", "online", "renorm", "online", "group"]
    cfgs = [cfg(m) for m in modes]
    whole = [list(range(len(modes)))]
    assert _spread(whole, cfgs, 1) == whole
    assert _spread(whole, cfgs, 2) == [[0, 2, 1, 4], [3, 5, 6]]  # batch, renorm | online, group
    three = _spread(whole, cfgs, 3)  # then the larger of the two splits
    assert sorted(map(sorted, three)) == [[0, 2], [1, 4], [3, 5, 6]]
    assert _spread([[0, 2]], cfgs, 2) == [[0, 2]], "one norm: nothing to split"
    both = [[0, 1], [2, 3]]
    assert _spread(both, cfgs, 2) == both


def test_a_pack_that_would_train_alone_at_the_end_splits_between_its_modes():
    """A study's final stage on two workers: four settings of 5 modes x 5 seeds, 40,000,
    10,000, 2,500 and 312 steps. Each pack lasts its steps times (4 + its runs) seed-steps, so
    the longest, 1,160,000, would leave the other worker idle after 371,548. Split 10 | 15 runs
    (560,000 and 760,000), the workers end at 841,548 and 850,000; splitting its 15 again
    (360,000 and 560,000) would end at 929,048, so it stays."""
    from hydra_plugins.normlab_launcher.normlab_launcher import _spread

    modes = ["batch", "moving_average", "renorm", "online", "group"]
    cfgs, packs = [], []
    for steps in (40_000, 10_000, 2_500, 312):
        runs = [_launcher_cfg(mode, steps) for mode in modes for _ in range(5)]
        packs.append(list(range(len(cfgs), len(cfgs) + len(runs))))
        cfgs.extend(runs)
    spread = _spread(packs, cfgs, 2)
    assert spread[1:4] == packs[1:], "the shorter settings stay whole"
    assert sorted(spread[0] + spread[4]) == packs[0]
    assert [len(spread[0]), len(spread[4])] == [10, 15]
    halves = [{cfgs[i].norm.mode for i in pack} for pack in (spread[0], spread[4])]
    assert halves == [set(modes[:2]), set(modes[2:])], "each mode's seeds in one pack"
    assert _spread(packs, cfgs, 1) == packs
