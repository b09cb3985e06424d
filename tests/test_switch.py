"""The switch point (``norm.switch_at``, ``norm.switch_freeze``): a run trains with batch
statistics, then with its layers' population statistics, the running statistics still absorbing
each batch or frozen. References: a plain run of the same seed, ``F.batch_norm`` in inference
mode over running statistics copied before each forward, and EMAs rolled by hand in float64."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from normlab.config.identity import from_record, record_config, run_id
from normlab.config.validation import validate
from normlab.errors import ConfigError
from normlab.norms import OnlineNorm, RunningStatsNorm, registry
from normlab.records import RunRecord
from normlab.train import build_run_model, load_run_data, seed_everything
from normlab.trainer import Trainer

RUNNING_MODES = [m for m in registry.names() if issubclass(registry.get(m).layer, RunningStatsNorm)]
SHORT = ("batch_size=16", "steps=8", "eval_every=4")


def _trainer(compose_config, tmp_path, name: str, *overrides: str) -> Trainer:
    config = validate(compose_config(*SHORT, *overrides))
    cpu = torch.device("cpu")
    data = load_run_data(config, cpu)
    seed_everything(config.seed)
    model = build_run_model(config, data)
    trainer = Trainer(config, data, model, RunRecord(tmp_path / name), cpu)
    trainer.model.train()
    return trainer


class Observed:
    """Per norm layer and forward: the input, the output, and the running statistics, weight
    and bias as the forward found them (float64 copies), and the buffers after it."""

    def __init__(self, trainer: Trainer) -> None:
        self.calls: dict[str, list[dict[str, torch.Tensor]]] = {n: [] for n in trainer.norms}
        self.handles = []
        for name, layer in trainer.norms.items():
            self.handles.append(layer.register_forward_pre_hook(self._before(name)))
            self.handles.append(layer.register_forward_hook(self._after(name)))

    def _before(self, name):
        def hook(layer, args):
            self.calls[name].append(
                {
                    "x": args[0].detach().double(),
                    "mean": layer.running_mean.detach().double().clone(),
                    "var": layer.running_var.detach().double().clone(),
                    "weight": layer.weight.detach().double().clone(),
                    "bias": layer.bias.detach().double().clone(),
                }
            )

        return hook

    def _after(self, name):
        def hook(layer, args, out):
            call = self.calls[name][-1]
            call["y"] = out.detach().double()
            call["mean_after"] = layer.running_mean.detach().double().clone()
            call["var_after"] = layer.running_var.detach().double().clone()

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _same_state(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("freeze", [False, True])
def test_before_the_switch_a_plain_run_after_it_population_statistics(
    compose_config, tmp_path, freeze
):
    plain = _trainer(compose_config, tmp_path, "plain")
    switched = _trainer(
        compose_config, tmp_path, "switched", "norm.switch_at=0.5", f"norm.switch_freeze={freeze}"
    )
    assert switched.switch_step == 4
    for _ in range(4):
        plain._train_step()
        switched._train_step()
        assert _same_state(plain, switched), "before the switch: the plain run, bit for bit"
    observed = Observed(switched)
    for _ in range(4):
        switched._train_step()
    observed.remove()
    momentum = 0.1  # the default constant schedule
    for calls in observed.calls.values():
        assert len(calls) == 4
        for c in calls:
            expected = F.batch_norm(
                c["x"], c["mean"], c["var"], c["weight"], c["bias"], False, 0.0, 1e-5
            )
            torch.testing.assert_close(c["y"], expected, rtol=1e-5, atol=1e-5)
            if freeze:
                assert torch.equal(c["mean_after"], c["mean"])
                assert torch.equal(c["var_after"], c["var"])
            else:
                dims = [0, *range(2, c["x"].dim())]
                ema_mean = (1 - momentum) * c["mean"] + momentum * c["x"].mean(dim=dims)
                batch_var = c["x"].var(dim=dims, unbiased=True)
                ema_var = (1 - momentum) * c["var"] + momentum * batch_var
                torch.testing.assert_close(c["mean_after"], ema_mean, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(c["var_after"], ema_var, rtol=1e-5, atol=1e-6)


def test_the_switch_stops_the_gradient_through_the_statistics(compose_config, tmp_path):
    """After the switch the input gradient is the inference-mode one: weight / sqrt(var + eps)
    times the output gradient, channel by channel, with no batch-statistics terms."""
    trainer = _trainer(compose_config, tmp_path, "grad", "norm.switch_at=0")
    layer = next(iter(trainer.norms.values()))
    x = torch.randn(16, layer.num_features, 5, requires_grad=True)
    grad_out = torch.randn(16, layer.num_features, 5)
    trainer._apply_schedules()
    scale = (layer.weight / (layer.running_var + layer.eps).sqrt()).detach()
    layer(x).backward(grad_out)
    torch.testing.assert_close(x.grad, grad_out * scale.view(1, -1, 1))


def test_switch_at_zero_uses_population_statistics_from_the_first_step(compose_config, tmp_path):
    trainer = _trainer(compose_config, tmp_path, "zero", "norm.switch_at=0")
    assert trainer.switch_step == 0
    observed = Observed(trainer)
    trainer._train_step()
    observed.remove()
    for calls in observed.calls.values():
        (c,) = calls
        assert torch.equal(c["mean"], torch.zeros_like(c["mean"]))
        assert torch.equal(c["var"], torch.ones_like(c["var"])), "the initial buffers"
        expected = F.batch_norm(c["x"], c["mean"], c["var"], c["weight"], c["bias"], False)
        torch.testing.assert_close(c["y"], expected, rtol=1e-5, atol=1e-5)


def test_switch_at_one_trains_as_a_plain_run(compose_config, tmp_path):
    plain = _trainer(compose_config, tmp_path, "plain")
    never = _trainer(compose_config, tmp_path, "never", "norm.switch_at=1")
    assert never.switch_step == never.total == 8
    for _ in range(8):
        plain._train_step()
        never._train_step()
    assert _same_state(plain, never)
    assert all(layer.statistics == "batch" for layer in never.norms.values())


def test_online_keeps_its_per_sample_recurrence_after_the_switch():
    """Chiley et al. 2019, section 2: mu_t = a mu + (1-a) mu(x_t), var_t = a var + (1-a) var(x_t)
    + a(1-a)(mu(x_t) - mu)^2, sample by sample, rolled here in float64."""
    torch.manual_seed(0)
    layer = OnlineNorm(3, alpha_fwd=0.9).double()
    layer.statistics = "population"
    x = torch.randn(4, 3, 5, dtype=torch.float64) * 2 + 1
    a, mu, var = 0.9, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y, (x - 0.0) / (1.0 + 1e-5) ** 0.5, msg="the initial mu 0, var 1")
    for sample in x:
        m, v = sample.mean(dim=1), sample.var(dim=1, unbiased=False)
        mu, var = a * mu + (1 - a) * m, a * var + (1 - a) * v + a * (1 - a) * (m - mu).square()
    torch.testing.assert_close(layer.running_mean, mu)
    torch.testing.assert_close(layer.running_var, var)


# ------------------------------------------------------------------ config and record


def test_the_options_are_recorded_only_when_set_and_change_no_other_id(compose_config):
    plain = validate(compose_config("norm=batch"))
    explicit = validate(compose_config("norm=batch", "norm.switch_at=null"))
    assert "switch_at" not in record_config(plain)["norm"]
    assert run_id(explicit) == run_id(plain), "the default changes nothing"
    switched = validate(compose_config("norm=batch", "norm.switch_at=0.25"))
    config = record_config(switched)
    assert config["norm"]["switch_at"] == 0.25 and "switch_freeze" not in config["norm"]
    assert run_id(switched) != run_id(plain)
    frozen = validate(
        compose_config("norm=batch", "norm.switch_at=0.25", "norm.switch_freeze=true")
    )
    assert record_config(frozen)["norm"]["switch_freeze"] is True
    assert run_id(frozen) != run_id(switched)
    assert run_id(from_record(record_config(frozen))) == run_id(frozen), "read back, same id"


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (("norm.switch_at=1.5",), "norm.switch_at", "a number in [0, 1]"),
        (("norm.switch_at=-0.1",), "norm.switch_at", "a number in [0, 1]"),
        (("norm=group", "norm.switch_at=0.5"), "norm.switch_at", "only running-statistics"),
        (("norm=none", "norm.switch_freeze=true"), "norm.switch_freeze", "only running-stat"),
        (("norm.switch_freeze=true",), "norm.switch_freeze", "unless norm.switch_at is set"),
    ],
)
def test_bad_switch_options_name_the_key(compose_config, overrides, key, allowed):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(*overrides))
    assert error.value.key == key and allowed in str(error.value)


def test_the_baselines_take_the_default_switch_options(compose_config):
    run = validate(compose_config("norm=group", "norm.switch_at=null", "norm.switch_freeze=false"))
    assert record_config(run)["norm"] == {"mode": "group", "eps": 1e-5, "groups": 8}


def test_a_bad_switch_fails_in_one_line_through_the_cli(cli):
    result = cli("norm=layer", "norm.switch_at=0.5")
    assert result.code != 0
    (line,) = result.err.strip().splitlines()
    assert "norm.switch_at=0.5" in line and "only running-statistics modes" in line
    assert result.run_dirs() == []


@pytest.mark.parametrize("freeze", [False, True], ids=["ema", "frozen"])
@pytest.mark.parametrize("mode", RUNNING_MODES)
def test_every_running_statistics_mode_switches_in_a_run(cli, mode, freeze):
    result = cli(
        f"norm={mode}",
        "norm.switch_at=0.5",
        f"norm.switch_freeze={str(freeze).lower()}",
        "batch_size=16",
        "steps=6",
        "eval_every=3",
        "sweep=switch",
    )
    assert result.code == 0, result.err
    summary = result.summary()
    assert summary["status"] == "completed" and summary["switch_step"] == 3
    (run_dir,) = result.run_dirs()
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [(int(r["step"]), float(r["uses_population"])) for r in rows] == [
        (0, 0.0),
        (3, 0.0),
        (6, 1.0),
    ], "a row reports the statistics of the last step before it"
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 6
