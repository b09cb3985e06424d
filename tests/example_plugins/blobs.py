"""A data set and a model of a user's own, outside the normlab package (the tests train them
end to end through ``conf/data/blobs.yaml`` and ``conf/model/blob_net.yaml``).

``gaussian_blobs`` returns a :class:`normlab.data.Dataset` of CPU tensors; ``BlobNet`` is built
as ``BlobNet(input_shape, num_classes, norm, **options)`` and asks ``norm(channels)`` for its
normalization layer, so it trains with whichever norm the run chooses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normlab.data import Dataset


def gaussian_blobs(
    train: int = 480, val: int = 120, classes: int = 3, length: int = 8, seed: int = 0
) -> Dataset:
    """Sequences of 2 channels and ``length`` positions: each class a unit Gaussian around its
    own centre, the centres 4 apart, so the classes are far easier to tell apart than chance."""
    generator = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(classes, 2, length, generator=generator)

    def split(count: int) -> tuple[Tensor, Tensor]:
        labels = torch.arange(count) % classes
        noise = torch.randn(count, 2, length, generator=generator)
        return centres[labels] + noise, labels

    x_train, y_train = split(train)
    x_val, y_val = split(val)
    return Dataset("blobs", x_train, y_train, x_val, y_val, classes)


class BlobNet(nn.Module):
    """``conv -> norm -> ReLU``, global average pool, linear head, for inputs (C, L)."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, norm, hidden: int = 16
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(input_shape[0], hidden, 3, padding=1, bias=False)
        self.norm = norm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).mean(dim=2))


class HiddenOnly(nn.Module):
    """A model that does not follow normlab's contract: it takes only its width."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.layer = nn.Linear(hidden, hidden)
