"""Published weights against PyTorch: for every built-in model with ``--weights imagenet``, a state dict in
torchvision's layout (random values, batch-norm statistics far from 0 and 1), saved with ``torch.save`` under a
published-style name and loaded by cnncli as ``--weights imagenet`` loads the published file (found, its hash
checked, read without torch, renamed by the model file's ``names:``, auxiliary heads skipped), gives on a
batch of two 224×224 images the logits that

* torchvision's network gives with that same dict and ImageNet's preparation: ``tests/torchvision_nets.py``
  builds it under torchvision's own module names and loads the original dict with
  ``load_state_dict(strict=True)``, so no name map is involved and the model file's ``names:``, layers and
  preparation are checked independently (GoogLeNet as its weights run: eval mode, no auxiliary heads,
  ``transform_input=True`` after ImageNet's statistics, where cnncli normalises with 0.5 and 0.5);
* the module ``cnncli export --to torch`` writes for the loaded network gives. Its layers carry cnncli's
  names (``conv1_1``, ``fc6``), not torchvision's (``features.0``, ``classifier.0``), so it takes the
  exported state dict, not the original one.

Tolerance: every logit within ``TOLERANCE`` times the largest logit's magnitude. Against the same network in
float64, PyTorch's own float32 logits are off by up to 1.7e-6 of that (VGG-16: dot products of 25,088
terms), cnncli's and the exported module's by up to 1.3e-6, and any two float32 results differ by up to
1.5e-6: sums of products in other orders (tiled GEMMs, Winograd's transforms, oneDNN's kernels), each
rounding at float32's 6e-8. 2e-5 leaves ten times that for other thread counts and kernels; a layer wired
to the wrong weights (VGG-16's conv5_1 and conv5_2 swapped), ResNet-50's stride on the wrong convolution or
GoogLeNet's inputs normalised as the other networks' move them by the order of the logits themselves, and
GoogLeNet's batch norms with PyTorch's default ε = 1e-5 instead of its 0.001 by 0.9 % of the largest.

Cost (VGG-16's 138 M parameters, 550 MB float32, dominate): the values are drawn by torch's generator and
saved while hashed; torchvision's network and the exported module are built on the meta device (no initial
values drawn) and take the tensors as they are (``assign=True``: the generated arrays are shared, not
copied). Skipped without PyTorch.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import IMAGENET_MEAN, IMAGENET_STD, torchvision_layouts

from cnncli.engine import losses
from cnncli.exchange import torch_module
from cnncli.model import spec
from cnncli.records import published, trained

torch = pytest.importorskip("torch")
import torchvision_nets  # noqa: E402  (after the skip: it needs torch)

LAYOUTS = torchvision_layouts()

BATCH = 2
#: Each logit's largest difference between two computations, as a share of the largest logit (see above).
TOLERANCE = 2e-5


def _torchvision_state(model: str, seed: int) -> dict[str, np.ndarray]:
    """Random weights in torchvision's layout (``LAYOUTS``), float32: He-normal convolution and dense
    weights, small biases, and batch norms whose scale, shift and running statistics are far from 1 and 0
    (so that a norm applied with the wrong statistics, or not at all, shows). Drawn by torch's generator,
    four times as fast as numpy's for VGG-16's 138 M values."""
    gen = torch.Generator().manual_seed(seed)
    layout = LAYOUTS[model]
    norms = {key.rsplit(".", 1)[0] for key in layout if key.endswith(".running_var")}
    state = {}
    for key, shape in layout.items():
        layer, suffix = key.rsplit(".", 1)
        if suffix == "num_batches_tracked":
            state[key] = np.array(1000, dtype=np.int64)
            continue
        if layer in norms:
            low, high = {"weight": (0.5, 1.5), "bias": (-0.2, 0.2), "running_mean": (-0.5, 0.5),
                         "running_var": (0.5, 2.0)}[suffix]
            values = torch.empty(shape).uniform_(low, high, generator=gen)
        elif suffix == "weight":
            values = torch.empty(shape).normal_(0.0, math.sqrt(2.0 / math.prod(shape[1:])), generator=gen)
        else:
            values = torch.empty(shape).normal_(0.0, 0.05, generator=gen)
        state[key] = values.numpy()
    return state


class _Hashing(io.RawIOBase):
    """A file being written, whose SHA-256 is taken on the way (no second reading of VGG-16's 550 MB)."""

    def __init__(self, file):
        self.file, self.digest = file, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)


def _published_file(tmp: Path, model: str, state: dict[str, np.ndarray]) -> Path:
    """``state`` saved with torch.save under a published-style name (``vgg16-<hash>.pth``), and a copy of the
    model file whose ``weights:`` section names that file; the copy of the model file is returned."""
    weights = spec.load(model).weights["imagenet"]
    part = tmp / "weights.part"
    with open(part, "wb") as f:
        hashing = _Hashing(f)
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, hashing)
    name = weights.filename.replace(weights.hash_prefix, hashing.digest.hexdigest()[:len(weights.hash_prefix)])
    part.rename(tmp / name)
    model_file = tmp / f"{model}.yaml"
    text = (spec.builtin_dir() / f"{model}.yaml").read_text(encoding="utf-8")
    model_file.write_text(text.replace(weights.url, weights.url.replace(weights.filename, name)), encoding="utf-8")
    return model_file


@pytest.fixture
def offline_weights(tmp_path, monkeypatch):
    """A folder of weights (CNNCLI_WEIGHTS) and a private cache; downloading is off."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNCLI_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    monkeypatch.delenv("CNNCLI_MIRRORS", raising=False)
    return tmp_path


def test_every_model_with_published_weights_has_torchvisions_network_here():
    assert set(published.models_with("imagenet")) <= set(torchvision_nets.BUILDERS)


@pytest.mark.parametrize("model", published.models_with("imagenet"))
def test_published_weights_give_torchvisions_logits_in_cnncli_and_in_the_export(model, offline_weights):
    state = _torchvision_state(model, seed=sum(map(ord, model)))
    model_file = _published_file(offline_weights, model, state)

    # cnncli: the weights and the preparation as `predict MODEL --weights imagenet` reads them.
    loaded = trained.load(str(model_file), "imagenet", data=trained.RECORDED)
    assert loaded.checkpoint.meta["published"]["name"] == "imagenet"
    pixels = np.random.default_rng(1).integers(0, 256, (BATCH, *loaded.source.image_shape), dtype=np.uint8)
    prepare = loaded.plan.preparer(loaded.network.dtype, loaded.source.normalise)
    ours = loaded.network.predict(pixels, BATCH, losses.get(loaded.spec.loss).source(loaded.graph), prepare)

    # torchvision: its names, the original dict, its preparation (ImageNet's statistics for every model).
    with torch.device("meta"):  # no initial values: every one is loaded next
        reference = torchvision_nets.BUILDERS[model]()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True, assign=True)
    x = (pixels / 255.0 - np.array(IMAGENET_MEAN)[:, None, None]) / np.array(IMAGENET_STD)[:, None, None]
    with torch.inference_mode():
        theirs = reference.eval()(torch.from_numpy(x.astype(np.float32))).numpy()
    del reference

    # The loaded network as `cnncli export --to torch` writes it: the module's source and its state dict.
    net, graph = loaded.network, loaded.graph
    namespace: dict = {}
    exec(compile(torch_module.module_source(graph, loaded.spec.name, str(model_file), "model.pt"), "model.py",
                 "exec"), namespace)
    with torch.device("meta"):
        exported = namespace[torch_module.class_name(loaded.spec.name)]()
    exported.load_state_dict(torch_module.state_dict(graph, net.params, net.buffers), strict=True, assign=True)
    with torch.inference_mode():
        exported_logits = exported.eval()(torch.from_numpy(prepare(pixels))).numpy()

    assert ours.shape == theirs.shape == exported_logits.shape == (BATCH, 1000)
    atol = TOLERANCE * float(np.abs(theirs).max())
    np.testing.assert_allclose(ours, exported_logits, rtol=0, atol=atol, err_msg="cnncli against its export")
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol, err_msg="cnncli against torchvision")
    np.testing.assert_allclose(exported_logits, theirs, rtol=0, atol=atol, err_msg="export against torchvision")
