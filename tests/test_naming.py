"""A layer named on the command line (``--layer``, ``--freeze``): a layer, or a block standing for its output."""

from __future__ import annotations

import pytest

from cnncli.errors import UsageError
from cnncli.model import graph, naming, spec
from cnncli.records import freeze


def test_a_block_stands_for_its_output_what_the_layers_after_it_read():
    resnet = spec.load("resnet20")
    g = graph.build(resnet)
    stage = naming.resolve(resnet, "layer3", "--layer")
    assert stage.is_block and g["avgpool"].inputs == (stage.output,) == ("layer3.1.relu2",)
    assert stage.layers[0] == "layer3.down.conv1" and len(stage.layers) == 3 * 7 + 1  # with the shortcut
    block = naming.resolve(resnet, "layer2.down", "--layer")
    assert g["layer2.0.conv1"].inputs == (block.output,)
    one = naming.resolve(resnet, "layer3.0.conv1", "--layer")
    assert one.layers == ("layer3.0.conv1",) and not one.is_block
    google = spec.load("googlenet")
    assert graph.build(google)["maxpool3"].inputs == (naming.resolve(google, "inception3b", "--layer").output,)
    # --freeze follows the same rule: a block is frozen up to and including its output.
    assert freeze.choose(resnet, "layer3").last == stage.output


def test_an_unknown_name_lists_the_names_with_an_ellipsis_where_the_list_is_cut():
    vgg = spec.load("vgg16")
    names = [n.name for n in vgg.nodes]
    assert len(names) > naming.SHOWN
    with pytest.raises(UsageError) as caught:
        naming.resolve(vgg, "conv6_1", "--layer", model="vgg16")
    text = str(caught.value)
    assert text.startswith("--layer conv6_1: model 'vgg16' has no layer or block of that name — did you mean")
    shown = ", ".join(names[:naming.SHOWN])
    assert f"Its layers and blocks: {shown}, … ({len(names) - naming.SHOWN} more)." in text
    assert text.endswith("`cnncli summarize vgg16` lists every name")
    # A short list is whole: the top-level names, blocks among them, and how to name a block's own layers.
    with pytest.raises(UsageError) as caught:
        naming.resolve(spec.load("resnet20"), "stage3", "--layer", model="resnet20")
    text = str(caught.value)
    assert ("has no layer or block of that name. Its layers and blocks: conv1, bn1, relu, layer1, layer2, layer3, "
            "avgpool, fc; a block's layers go on after a dot, as layer1.0.conv1.") in text
    assert "…" not in text


def test_the_layers_of_an_auxiliary_head_are_not_in_the_network_that_predicts():
    google = spec.load("googlenet")
    predicting = [n.spec for n in graph.build(google, aux=False).nodes]
    with pytest.raises(UsageError, match="aux1: the layers of that name feed only an auxiliary training head"):
        naming.resolve(google, "aux1", "--layer", nodes=predicting)
    assert naming.resolve(google, "aux1", "--freeze").output == "aux1.fc2"
