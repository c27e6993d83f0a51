"""Which convolution strategy runs which layer: the one picker (cnncli.engine.conv.pick) against the dispatch it
replaced, for every layer of every model the project ships, and the engine map's table against the registry."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cnncli import engine
from cnncli.engine import blas, conv, rules, simd
from cnncli.engine.network import Network, fused_chains
from cnncli.model import graph, spec
from cnncli.model.kinds import window_output

# The batch sizes a model's convolutions see: its recipe's (per dataset too), eval's and train's evaluation
# batches, predict's, and one image (explain, predict of one file); each split into parts on one or two cores.
OTHER_BATCHES = (rules.MAX_SCORE_BATCH, 500, 256, 1)
DTYPES = (np.float32, np.float64)


def old_plain_choice(x_shape, w_shape, stride, padding, dilation, groups, itemsize, backward):
    """The strategy the general convolution chose before the picker, derived from the rules as its if-chain did
    (conv._Geometry, conv2d_forward and conv2d_backward of the former cnncli/engine/conv.py): Winograd if it
    applies and pays; else the blocked loops for the 'same' stride-1 layers they pay for, and (forward only)
    the filters-in-the-lanes pass of the strided layers it pays for; else a GEMM per tap where the tap rule
    takes the layer, then the in-kernel group GEMMs where rules.group_gemms says so (neither, backward, when
    the weight gradient comes from direct dot products); else the chunk loop, with the direct (depthwise)
    kernels for thin groups."""
    n, c, h, wd = x_shape
    f, cg, kh, kw = w_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = window_output(h, kh, sh, ph, dh, False)
    ow = window_output(wd, kw, sw, pw, dw, False)
    unit = (sh, sw) == (1, 1)
    fg = f // groups
    taps = cg * kh * kw
    wp = wd + 2 * pw
    # the direct loops take dilation 1 only (their tap offsets are constants); no shipped layer is dilated
    loops = unit and (dh, dw) == (1, 1)
    direct = rules.depthwise(taps, fg, loops)
    winograd = (rules.winograd_applies((kh, kw), (sh, sw), (dh, dw), groups)
                and rules.winograd_pays(c, n, oh, ow))
    blocked = (not winograd and rules.blocked_applies((sh, sw), (ph, pw), (kh, kw), (dh, dw), groups)
               and rules.blocked_pays(c, f, kh * kw, simd.VECTOR_REGISTERS))
    outer = rules.outer_applies((sh, sw), groups, f, simd.lanes(itemsize)) and rules.outer_pays(c)
    in_kernel = blas.FUNCTIONS is not None and not direct
    by_taps = in_kernel and rules.tap_gemms(unit, cg, wp, ow)
    pitch = wp if by_taps or direct or rules.flat_rows(fg, wp, ow, unit) else ow
    q = (oh - 1) * pitch + ow
    direct_dw = direct or (loops and pitch == wp and rules.direct_weights(taps * fg))
    per, band = rules.sample_group(n, oh, c * kh * kw * pitch * itemsize, c * kh * kw * q * itemsize)
    in_groups = in_kernel and rules.group_gemms(fg, per * min(band, oh) * ow)
    if winograd:
        return "winograd"
    if blocked:
        return "blocked"
    if outer and not backward:
        return "outer"
    if by_taps and not (backward and direct_dw):
        return "taps"
    if in_groups and not (backward and direct_dw):
        return "groups"
    return "depthwise" if direct else "chunks"


def old_chain_choice(x_shape, w_shape, padding, act, pool, itemsize):
    """The block a fused chain ran before the picker (layers.FusedConv.forward): Winograd then the ReLU for a
    conv → relu chain whose convolution takes Winograd; else batch-innermost where rules.lanes admits the batch
    (lanes.Block.fits); else NCHW."""
    n, c, h, wd = x_shape
    f, _, kh, kw = w_shape
    if act == "relu" and not pool and old_plain_choice(x_shape, w_shape, (1, 1), padding, (1, 1), 1, itemsize,
                                                       False) == "winograd":
        return "winograd"
    oh, ow = h + 2 * padding[0] - kh + 1, wd + 2 * padding[1] - kw + 1
    return "lanes" if rules.lanes(n, f * c * kh * kw, c * kh * kw * oh * ow * n * itemsize) else "fused"


def part_sizes(n: int, cores: int) -> set[int]:
    """The sizes of the parts a fast network on ``cores`` cores splits a batch of ``n`` into (Parts.slices)."""
    k = rules.part_count(n, cores)
    return {n * (i + 1) // k - n * i // k for i in range(k)}


def model_calls():
    """(model, layer, x shape, w shape, node, chain) for every conv layer of every model file, at every part size
    a fast network runs it with, on one core or two."""
    for name in spec.builtin_names():
        model = spec.load(name)
        g = graph.build(model, aux=True)
        chains = fused_chains(g)
        recipes = [model.train, *model.train_by_dataset.values()]
        batches = {r["batch_size"] for r in recipes if "batch_size" in r} | {64} | set(OTHER_BATCHES)
        sizes = {size for n in batches for cores in (1, 2) for size in part_sizes(n, cores)}
        for node in g.nodes:
            if node.kind != "conv":
                continue
            act, pool = chains.get(node.name, (None, None))
            chain = None if act is None else (act.kind, pool.options["kernel"][0] if pool is not None else 0)
            for n in sorted(sizes):
                yield name, node, (n, *node.in_shapes[0]), node.params["weight"], chain


@pytest.mark.parametrize("cblas", [True, False], ids=["cblas", "no-cblas"])
def test_the_picker_chooses_what_the_old_dispatch_chose_for_every_shipped_layer(cblas, monkeypatch):
    """For every conv layer of every model in models/, every part size a fast network gives it (recipe, eval and
    predict batches on one or two cores) and both dtypes, with numpy's BLAS exporting a CBLAS GEMM or not: the
    picker's strategy is the one the if-chains it replaced chose (derived above from the same rules), for the
    forward and the backward pass: the refactoring changed no layer's kernels, so no workload's speed."""
    if cblas and blas.FUNCTIONS is None:
        pytest.skip("numpy's BLAS exports no CBLAS GEMM here")
    if not cblas:
        monkeypatch.setattr(blas, "FUNCTIONS", None)
    seen: dict[str, int] = {}
    count = 0
    for name, node, x_shape, w_shape, chain in model_calls():
        o = node.options
        for dtype in DTYPES:
            itemsize = np.dtype(dtype).itemsize
            call = conv.Call(x_shape, w_shape, o["stride"], o["padding"], o["dilation"], o["groups"], itemsize,
                             chain=chain)
            where = (name, node.name, x_shape, np.dtype(dtype).name)
            if chain is not None:
                picked = conv.pick(call).name
                assert picked == old_chain_choice(x_shape, w_shape, o["padding"], *chain, itemsize), where
                seen[picked] = seen.get(picked, 0) + 1
                continue
            for backward in (False, True):
                picked = conv.pick(call, conv.BACKWARD if backward else conv.FORWARD).name
                old = old_plain_choice(x_shape, w_shape, o["stride"], o["padding"], o["dilation"], o["groups"],
                                       itemsize, backward)
                assert picked == old, (*where, "backward" if backward else "forward")
                seen[picked] = seen.get(picked, 0) + 1
            count += 1
    assert count > 1000
    # The models exercise most strategies (which ones depends on the CPU and on numpy's BLAS).
    assert {"winograd", "lanes", "fused"} <= set(seen) and ("taps" in seen) == cblas, seen


def test_a_plain_network_runs_the_reference_and_a_fast_one_the_picked_strategies():
    g = graph.build(spec.load("lenet5-1998"))
    plain, fast = Network(g, "float64"), Network(g, "float64", fast=True, workers=1)
    convs = [n.name for n in g.nodes if n.kind == "conv"]
    assert not any(plain.layers[c].fast for c in convs) and all(fast.layers[c].fast for c in convs)


def test_the_engine_map_lists_every_strategy_in_order_with_its_file():
    """The engine map's table of strategies (cnncli.engine's docstring) holds the registry's names, in its order,
    and the file of each: set(table) == set(STRATEGIES), as set(LAYERS) == set(KINDS)."""
    doc = engine.__doc__
    table = doc[doc.index("Convolution strategies"):]
    rows = re.findall(r"^(\w+)\s{2,}.*?\s{2,}(\S+\.py)\s*$", table.split("\n\n\n")[0], re.MULTILINE)
    assert [name for name, _ in rows] == [s.name for s in conv.STRATEGIES]
    assert dict(rows) == {s.name: s.file for s in conv.STRATEGIES}


def test_a_named_strategy_must_apply():
    x = np.zeros((2, 3, 6, 6))
    w = np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match="the outer strategy does not compute the forward pass"):
        conv.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1, strategy="outer")
    with pytest.raises(ValueError, match="the outer strategy does not compute the backward pass"):
        conv.conv2d_backward(x, w, np.zeros((2, 4, 3, 3)), (2, 2), (1, 1), (1, 1), 1, strategy="outer")
    with pytest.raises(ValueError, match="no convolution strategy 'fft'"):
        conv.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1, strategy="fft")
