from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from normlab import models
from normlab.models import build_model

TYPICAL_SHAPES = {"mlp": (1, 40), "cnn1d": (1, 40), "cnn": (1, 28, 28), "resnet20": (3, 32, 32)}
NUM_CLASSES = 10

# Channels each norm should be built with, in module order, for the default depth/width.
EXPECTED_NORM_CHANNELS = {
    "mlp": [256, 256, 256],
    "cnn1d": [32, 32, 32],
    "cnn": [32, 32, 64, 64],
    # stem; stage 1: 3 blocks x 2 convs; stages 2 and 3: first block conv1, conv2,
    # projection, then 2 blocks x 2 convs.
    "resnet20": [16] + [16] * 6 + [32] * 3 + [32] * 4 + [64] * 3 + [64] * 4,
}


class RecordingNorm:
    """Norm factory that remembers the channels it was asked for and what it returned."""

    def __init__(self, make: Callable[[int], nn.Module]) -> None:
        self.make = make
        self.channels: list[int] = []
        self.modules: list[nn.Module] = []

    def __call__(self, channels: int) -> nn.Module:
        module = self.make(channels)
        self.channels.append(channels)
        self.modules.append(module)
        return module


def batch_norm_for(name: str) -> Callable[[int], nn.Module]:
    return nn.BatchNorm2d if name in ("cnn", "resnet20") else nn.BatchNorm1d


def group_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(1, channels)


def identity(channels: int) -> nn.Module:
    return nn.Identity()


def hidden_layers(model: nn.Module) -> list[nn.Module]:
    """Every linear/conv except the head: the layers that must each feed a norm."""
    layer_types = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return [m for m in model.modules() if isinstance(m, layer_types) and m is not model.head]


def trace_leaves(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, object, object]]:
    calls = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [
        m.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0], out)))
        for m in leaves
    ]
    model(x)
    for handle in handles:
        handle.remove()
    return calls


def test_the_registered_models_in_order():
    assert models.names() == ("mlp", "cnn1d", "cnn", "resnet20")


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize(("batch_size", "norm_kind"), [(1, "group"), (1, "identity"), (4, "batch")])
def test_logits_shape_and_gradients_reach_every_parameter(name, batch_size, norm_kind):
    shape = TYPICAL_SHAPES[name]
    norm = {"group": group_norm, "identity": identity, "batch": batch_norm_for(name)}[norm_kind]
    torch.manual_seed(0)
    model = build_model(name, shape, NUM_CLASSES, norm)
    logits = model(torch.randn(batch_size, *shape))
    assert logits.shape == (batch_size, NUM_CLASSES)
    F.cross_entropy(logits, torch.arange(batch_size) % NUM_CLASSES).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mlp", (3, 32, 32)),
        ("cnn1d", (3, 17)),
        ("cnn", (3, 32, 32)),
        ("resnet20", (3, 8, 8)),
        ("resnet20", (1, 28, 36)),
    ],
)
def test_other_input_shapes(name, shape):
    model = build_model(name, shape, 7, batch_norm_for(name))
    assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name", models.names())
def test_norm_channels_order_and_names(name):
    norm = RecordingNorm(batch_norm_for(name))
    model = build_model(name, TYPICAL_SHAPES[name], NUM_CLASSES, norm)
    assert norm.channels == EXPECTED_NORM_CHANNELS[name]
    names = {id(module): module_name for module_name, module in model.named_modules()}
    made = {id(module) for module in norm.modules}
    norms_in_tree = [module for module in model.modules() if id(module) in made]
    assert [id(m) for m in norms_in_tree] == [id(m) for m in norm.modules]
    assert all("norm" in names[id(m)].rsplit(".", 1)[-1] for m in norm.modules)


def test_resnet20_norm_count_by_hand():
    norm = RecordingNorm(nn.BatchNorm2d)
    model = build_model("resnet20", (3, 32, 32), NUM_CLASSES, norm)
    n = 3
    main_path_convs = 1 + 2 * 3 * n
    projections = 2
    assert main_path_convs == 19
    assert len(norm.modules) == main_path_convs + projections == 21
    assert len(hidden_layers(model)) == 21


@pytest.mark.parametrize(
    ("name", "shape", "depth", "width", "expected"),
    [
        ("mlp", (1, 40), 2, 7, [7, 7]),
        ("cnn1d", (2, 40), 4, 5, [5, 5, 5, 5]),
        ("cnn", (3, 32, 32), 5, 8, [8, 8, 16, 16, 32]),
        ("resnet20", (3, 32, 32), 8, 4, [4, 4, 4, 8, 8, 8, 16, 16, 16]),
        ("resnet20", (3, 32, 32), 32, 16, [16] * 11 + [32] * 11 + [64] * 11),
    ],
)
def test_depth_and_width_set_the_norm_channels(name, shape, depth, width, expected):
    norm = RecordingNorm(batch_norm_for(name))
    model = build_model(name, shape, NUM_CLASSES, norm, depth=depth, width=width)
    assert norm.channels == expected
    assert model(torch.randn(2, *shape)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", models.names())
def test_every_norm_reads_a_hidden_layer_output(name):
    shape = TYPICAL_SHAPES[name]
    norm = RecordingNorm(batch_norm_for(name))
    model = build_model(name, shape, NUM_CLASSES, norm)
    calls = trace_leaves(model, torch.randn(2, *shape))
    made = {id(module) for module in norm.modules}
    norm_calls = [call for call in calls if id(call[0]) in made]
    producers = []
    for _, norm_input, _ in norm_calls:
        producer = next(mod for mod, _, out in calls if out is norm_input)
        producers.append(producer)
    assert len(norm_calls) == len(norm.modules)
    assert [id(p) for p in producers] == [id(m) for m in hidden_layers(model)]
    assert [p.weight.shape[0] for p in producers] == norm.channels


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn"])
def test_plain_nets_apply_relu_to_every_norm_output(name):
    shape = TYPICAL_SHAPES[name]
    norm = RecordingNorm(batch_norm_for(name))
    model = build_model(name, shape, NUM_CLASSES, norm)
    calls = trace_leaves(model, torch.randn(2, *shape))
    made = {id(module) for module in norm.modules}
    for module, _, norm_output in calls:
        if id(module) in made:
            consumer = next(mod for mod, inp, _ in calls if inp is norm_output)
            assert isinstance(consumer, nn.ReLU)


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("bias_before_norm", [False, True])
def test_bias_before_norm_switch(name, bias_before_norm):
    shape = TYPICAL_SHAPES[name]
    model = build_model(
        name, shape, NUM_CLASSES, batch_norm_for(name), bias_before_norm=bias_before_norm
    )
    layers = hidden_layers(model)
    with_bias = [layer for layer in layers if layer.bias is not None]
    assert len(with_bias) == (len(layers) if bias_before_norm else 0)
    assert all(torch.all(layer.bias == 0) for layer in with_bias)
    assert model.head.bias is not None


@pytest.mark.parametrize("name", models.names())
def test_bias_switch_keeps_weights_and_initial_function(name):
    shape = TYPICAL_SHAPES[name]
    models = {}
    for bias in (False, True):
        torch.manual_seed(0)
        models[bias] = build_model(name, shape, NUM_CLASSES, identity, bias_before_norm=bias)
    without, with_ = models[False].state_dict(), models[True].state_dict()
    assert set(without) < set(with_)
    assert all(torch.equal(without[key], with_[key]) for key in without)
    x = torch.randn(3, *shape)
    torch.testing.assert_close(models[False](x), models[True](x))


def test_batch_statistics_cancel_the_bias_before_norm():
    """Ioffe & Szegedy 2015, §2: with batch statistics the pre-norm bias gets no gradient."""
    grads = {}
    for label, norm in (("batch_norm", nn.BatchNorm1d), ("no_norm", identity)):
        torch.manual_seed(0)
        model = build_model("mlp", (1, 40), NUM_CLASSES, norm, bias_before_norm=True)
        F.cross_entropy(model(torch.randn(8, 1, 40)), torch.arange(8)).backward()
        grads[label] = model.blocks[0].linear.bias.grad.abs().max().item()
    assert grads["batch_norm"] < 1e-6
    assert grads["no_norm"] > 1e-4


def test_resnet20_parameter_count_matches_the_paper():
    model = build_model("resnet20", (3, 32, 32), NUM_CLASSES, nn.BatchNorm2d)
    count = sum(p.numel() for p in model.parameters())
    convs = (
        3 * 16 * 9  # stem
        + 6 * 16 * 16 * 9  # stage 1
        + 16 * 32 * 9
        + 5 * 32 * 32 * 9
        + 16 * 32  # stage 2, with 1x1 projection
        + 32 * 64 * 9
        + 5 * 64 * 64 * 9
        + 32 * 64  # stage 3, with 1x1 projection
    )
    norms = 2 * (16 * 7 + 32 * 7 + 64 * 7)
    head = 64 * NUM_CLASSES + NUM_CLASSES
    assert count == convs + norms + head == 272_474
    assert 260_000 <= count <= 290_000  # He et al. 2016, Table 6: 0.27M


def test_resnet_convs_use_kaiming_fan_out():
    torch.manual_seed(0)
    model = build_model("resnet20", (3, 32, 32), NUM_CLASSES, nn.BatchNorm2d)
    conv = model.stages[2][1].conv2
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    expected_std = (2 / fan_out) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize(
    ("name", "shape", "kwargs", "argument"),
    [
        ("vgg", (1, 40), {}, "model"),
        ("mlp", (1, 40), {"depth": 0}, "depth"),
        ("mlp", (1, 40), {"width": 0}, "width"),
        ("cnn1d", (1, 40), {"depth": 0}, "depth"),
        ("cnn", (1, 28, 28), {"width": -1}, "width"),
        ("resnet20", (3, 32, 32), {"depth": 21}, "depth"),
        ("resnet20", (3, 32, 32), {"depth": 2}, "depth"),
        ("resnet20", (3, 32, 32), {"width": 0}, "width"),
        ("mlp", (1, 40), {"num_classes": 0}, "num_classes"),
        ("cnn", (1, 40), {}, "input_shape"),
        ("cnn1d", (1, 28, 28), {}, "input_shape"),
        ("mlp", (), {}, "input_shape"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(name, shape, kwargs, argument):
    kwargs = {"num_classes": NUM_CLASSES, **kwargs}
    num_classes = kwargs.pop("num_classes")
    with pytest.raises(ValueError, match=argument):
        build_model(name, shape, num_classes, identity, **kwargs)


def test_unknown_model_error_lists_the_models():
    with pytest.raises(ValueError, match="mlp, cnn1d, cnn, resnet20"):
        build_model("vgg", (1, 40), NUM_CLASSES, identity)


# ----------------------------------------------------------------------------- centred weights


def authors_centred(weight: torch.Tensor) -> torch.Tensor:
    """MABN.py's CenConv2d.forward, generalized to any number of input dims: the weight less its
    mean over dim 1, then dim 2, then dim 3 ... (each kept), one output unit at a time."""
    mean = weight
    for dim in range(1, weight.dim()):
        mean = mean.mean(dim=dim, keepdim=True)
    return weight - mean


LAYERS = {
    "linear": (lambda: nn.Linear(6, 4), (5, 6), F.linear, {}),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=1), (2, 3, 7), F.conv1d, {"padding": 1}),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3, stride=2), (2, 3, 6, 6), F.conv2d, {"stride": 2}),
    "grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2), (2, 4, 5, 5), F.conv2d, {"groups": 2}),
}


@pytest.mark.parametrize("kind", LAYERS)
def test_a_centred_layer_is_the_plain_layer_with_the_authors_centred_weight(kind):
    """In float64: the output is the plain op with the weight centred as CenConv2d centres it
    (the bias untouched), and the raw weight's gradient is what autograd gives through the
    authors' centring, which is the centred weight's gradient less its mean per output unit."""
    make, shape, op, keywords = LAYERS[kind]
    torch.manual_seed(0)
    layer = make().double()
    with torch.no_grad():
        layer.bias.normal_()
    raw = layer.weight.detach().clone()
    bias = layer.bias.detach().clone()
    models.centre_weights(layer)
    x = torch.randn(*shape, dtype=torch.float64)
    grad_out = torch.randn_like(layer(x))

    reference_weight = raw.clone().requires_grad_(True)
    centred = authors_centred(reference_weight)
    expected = op(x, centred, bias, **keywords)
    (expected * grad_out).sum().backward()

    out = layer(x)
    (out * grad_out).sum().backward()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.weight, centred.detach(), rtol=0, atol=1e-15)
    rows = layer.weight.detach().flatten(1)
    assert rows.sum(dim=1).abs().max() < 1e-13, "each output unit's weights sum to zero"
    original = layer.parametrizations.weight.original
    torch.testing.assert_close(original, raw, rtol=0, atol=0)
    torch.testing.assert_close(original.grad, reference_weight.grad, rtol=0, atol=1e-12)
    leaf = centred.detach().requires_grad_(True)
    (plain_grad,) = torch.autograd.grad((op(x, leaf, bias, **keywords) * grad_out).sum(), leaf)
    by_unit = plain_grad.flatten(1)
    by_hand = (by_unit - by_unit.mean(dim=1, keepdim=True)).view_as(plain_grad)
    torch.testing.assert_close(original.grad, by_hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, grad_out.sum(dim=[0, *range(2, out.dim())]))


@pytest.mark.parametrize("name", models.names())
def test_every_model_centres_the_weights_before_each_norm_and_only_those(name):
    shape = TYPICAL_SHAPES[name]
    built = {}
    for centred in (False, True):
        torch.manual_seed(0)
        built[centred] = build_model(
            name, shape, NUM_CLASSES, identity, bias_before_norm=True, centred_weights=centred
        )
    plain, centred = built[False], built[True]
    layers = hidden_layers(centred)
    assert len(layers) == len(EXPECTED_NORM_CHANNELS[name]), "one per norm"
    for layer, plain_layer in zip(layers, hidden_layers(plain), strict=True):
        assert parametrize.is_parametrized(layer, "weight")
        raw = layer.parametrizations.weight.original
        torch.testing.assert_close(raw, plain_layer.weight, rtol=0, atol=0)  # the same draws
        torch.testing.assert_close(layer.weight, authors_centred(plain_layer.weight))
        torch.testing.assert_close(layer.bias, plain_layer.bias, rtol=0, atol=0)
    assert not parametrize.is_parametrized(centred.head)
    # the function: the plain model with its pre-norm weights centred by hand
    with torch.no_grad():
        for plain_layer in hidden_layers(plain):
            plain_layer.weight.copy_(authors_centred(plain_layer.weight))
    x = torch.randn(3, *shape)
    torch.testing.assert_close(centred(x), plain(x))
    F.cross_entropy(centred(x), torch.arange(3)).backward()
    assert all(layer.parametrizations.weight.original.grad is not None for layer in layers)


@pytest.mark.parametrize("name", models.names())
def test_each_norm_reads_the_output_of_a_centred_layer(name):
    norm = RecordingNorm(batch_norm_for(name))
    model = build_model(name, TYPICAL_SHAPES[name], NUM_CLASSES, norm, centred_weights=True)
    outputs, inputs = [], []
    for layer in hidden_layers(model):
        layer.register_forward_hook(lambda mod, args, out: outputs.append((mod, out)))
    for module in norm.modules:
        module.register_forward_hook(lambda mod, args, out: inputs.append(args[0]))
    model(torch.randn(2, *TYPICAL_SHAPES[name]))
    assert len(inputs) == len(norm.modules)
    for norm_input in inputs:
        producer = next(mod for mod, out in outputs if out is norm_input)
        assert parametrize.is_parametrized(producer, "weight")
