"""Data sets held whole as device tensors, and samplers that cut them into index batches.

There is no DataLoader: a run loads its data set once with :func:`load_dataset`, moves it to
the device, and a sampler from :func:`make_sampler` yields int64 index tensors on that device,
so a training step is ``x_train[indices]`` (airbench style). Data flow one way, config → data →
trainer; this package imports neither the trainer nor Hydra's config machinery.

Each data set registers itself in its own module (:mod:`~normlab.data.registry`):
:mod:`~normlab.data.mnist1d` (generated), :mod:`~normlab.data.idx` (MNIST, MNIST-5k,
Fashion-MNIST) and :mod:`~normlab.data.cifar10`. File formats are parsed from bytes with numpy
and never unpickled. A data set from outside the package is a function named by ``_target_``
in a ``conf/data/NAME.yaml`` that returns a :class:`Dataset` (see the registry).
"""

# the built-in data sets, each registered by importing its module, in the order they are listed
from normlab.data import mnist1d

# isort: split
from normlab.data import idx

# isort: split
from normlab.data import cifar10

# isort: split
from normlab.data.dataset import DataError, Dataset, hold_out_validation
from normlab.data.files import verify_md5
from normlab.data.registry import DataSet, choose, get, load_dataset, names, register
from normlab.data.samplers import (
    SAMPLERS,
    IidSampler,
    NonIidSampler,
    Sampler,
    SamplerStack,
    make_sampler,
)

BUILT_IN = (mnist1d, idx, cifar10)

__all__ = [
    "BUILT_IN",
    "SAMPLERS",
    "DataError",
    "DataSet",
    "Dataset",
    "IidSampler",
    "NonIidSampler",
    "Sampler",
    "SamplerStack",
    "choose",
    "get",
    "hold_out_validation",
    "load_dataset",
    "make_sampler",
    "names",
    "register",
    "verify_md5",
]
