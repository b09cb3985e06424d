"""Classifiers with a configurable normalization layer after every hidden linear/conv layer.

Every hidden layer is ``layer -> norm(channels) -> ReLU``; the classifier head is a plain
``nn.Linear`` with a bias and no norm. The norm comes from a factory the caller passes in
(``norm(channels) -> nn.Module``, working on ``(N, C)`` and ``(N, C, *spatial)``), so this
package knows nothing about which normalization is being studied. Norm modules sit under
readable names (``blocks.0.norm``, ``stem.norm``, ``stages.1.0.shortcut.norm``) because the
trainer logs per-layer diagnostics under ``named_modules()`` names.

Each model registers itself in its own module (:mod:`~normlab.models.registry`):
:mod:`~normlab.models.mlp`, :mod:`~normlab.models.convnet` (cnn1d, cnn) and
:mod:`~normlab.models.resnet` (resnet20). A model from outside the package is a class named by
``_target_`` in a ``conf/model/NAME.yaml``, built as ``Class(input_shape, num_classes, norm,
**options)``.

``bias_before_norm`` decides whether the layer feeding each norm has a bias. With batch
statistics that bias is cancelled by the mean subtraction and gets zero gradient; Ioffe &
Szegedy (2015, §2) show that normalizing without the gradient accounting for the statistics
makes such a bias grow without bound, so the switch exists to reproduce that. When on, the
bias starts at zero and is added after the weights are drawn, so for a fixed seed both
settings have identical weights and compute the same function at initialization.

Initialization: mlp, cnn1d and cnn use PyTorch's default ``nn.Linear``/``nn.Conv*d`` init;
resnet20 draws its convs from Kaiming normal (fan_out, relu) as torchvision does. Heads use
PyTorch's default ``nn.Linear`` init everywhere. Norm modules are never touched.
"""

# the built-in models, each registered by importing its module, in the order they are listed
from normlab.models import mlp

# isort: split
from normlab.models import convnet

# isort: split
from normlab.models import resnet

# isort: split
from normlab.models.parts import (
    NormFactory,
    centre_weights,
    forward_activations,
    prenorm_biases,
    prenorm_layers,
)
from normlab.models.registry import CONTRACT, Model, build_model, choose, get, names, register

BUILT_IN = (mlp, convnet, resnet)

__all__ = [
    "BUILT_IN",
    "CONTRACT",
    "Model",
    "NormFactory",
    "build_model",
    "centre_weights",
    "choose",
    "forward_activations",
    "get",
    "names",
    "prenorm_biases",
    "prenorm_layers",
    "register",
]
