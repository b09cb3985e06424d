"""The built-in modes' labels and styles are written once, in :mod:`normlab.labels`: the mode
registry gives each built-in mode its styles from there, every label a built-in run is drawn
under has one, and a mode from outside the package brings its own."""

from __future__ import annotations

import dataclasses

import pytest

from normlab import labels
from normlab.labels import Style
from normlab.norms import MODES, registry

# a run's norm node -> the label it is drawn under, as the modes' docs name them
DRAWN_AS = [
    ({"mode": "batch"}, "batch"),
    ({"mode": "batch", "virtual_batch_size": 8}, "batch (ghost)"),
    ({"mode": "moving_average"}, "moving_average"),
    ({"mode": "moving_average", "grad_through_batch": True}, "moving_average (grad through batch)"),
    ({"mode": "renorm"}, "renorm"),
    ({"mode": "online"}, "online"),
    ({"mode": "mabn"}, "mabn"),
    ({"mode": "group"}, "group"),
    ({"mode": "layer"}, "layer"),
    ({"mode": "none"}, "none"),
]


@pytest.mark.parametrize(("node", "label"), DRAWN_AS)
def test_every_built_in_label_has_a_style_of_its_own(node, label):
    assert registry.choose(node).label() == label
    assert labels.styles()[label].label == label


def test_the_built_in_styles_are_the_labels_runs_are_drawn_under_each_in_its_own_colour():
    drawn = {label for _, label in DRAWN_AS} | {"mabn + centred weights"}
    assert set(labels.label_order()) == drawn
    colors = [s.color for s in labels.styles().values()]
    assert len(set(colors)) == len(colors)
    assert labels.centred_label("mabn") == "mabn + centred weights"


def test_each_built_in_mode_takes_its_styles_from_labels():
    assert set(MODES) == set(labels.BUILT_IN)
    for name in MODES:
        assert registry.get(name).styles == labels.BUILT_IN[name]


def test_labels_from_outside_take_extras_no_built_in_has_in_order_of_their_names():
    styles = labels.palette(["zeta", "batch", "alpha"])
    assert (styles["alpha"].color, styles["alpha"].marker) == ("#7F3C8D", "*")
    assert (styles["zeta"].color, styles["zeta"].marker) == ("#3969AC", "h")
    built_in = labels.styles().values()
    assert not {styles["alpha"].color, styles["zeta"].color} & {s.color for s in built_in}
    assert not {styles["alpha"].marker, styles["zeta"].marker} & {s.marker for s in built_in}


def test_a_mode_gives_its_styles_only_from_outside_the_package(monkeypatch):
    online = registry.get("online")
    bare = dataclasses.replace(online, name="online_elsewhere", styles=())
    with pytest.raises(ValueError, match="online_elsewhere: a mode from outside the package"):
        registry.register(bare)
    monkeypatch.setitem(labels.BUILT_IN, "online_elsewhere", (Style("x", "#123456", "o"),))
    own = dataclasses.replace(bare, styles=(Style("x", "#654321", "s"),))
    with pytest.raises(ValueError, match=r"built-in mode's styles are normlab\.labels"):
        registry.register(own)
    assert "online_elsewhere" not in registry.names()
