"""Plain helpers that test files import by name (``from helpers import run_main``).

Fixtures live in conftest.py, where pytest finds them without an import; this module holds what a test calls or
reads: where the real MNIST files are, the command line run in-process, and the files several test files write
(checkpoints, image folders, run folders). Test files import from here, never from one another: importing a test
module runs its module-level code (an ``importorskip`` there would skip the importer too).
"""

from __future__ import annotations

import math
import os
import signal
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from cnncli.cli import main
from cnncli.commands import training
from cnncli.engine.network import Network
from cnncli.model import graph, spec
from cnncli.records import checkpoint, runs

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the real MNIST files


def _mnist_root() -> Path | None:
    for candidate in (os.environ.get("CNNCLI_DATA"), str(REPO.parent / "shared" / "datasets")):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    return None


#: The folder holding the real MNIST files (``mnist/``), for CNNCLI_DATA: ``$CNNCLI_DATA``, else
#: ``../shared/datasets`` beside the repository; None when neither has them. Read once at import, before any
#: fixture changes the environment.
DATA = _mnist_root()

#: The mark of a test that needs the real MNIST files.
needs_mnist = pytest.mark.skipif(DATA is None, reason="real MNIST files not available")


# --------------------------------------------------------------------------- the command line


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the real entry point (which turns the tool's errors into exit codes) in-process: (code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- checkpoints and training


def mnist_checkpoint(model: str | Path, path: Path, seed: int, dtype: str = "float32") -> Network:
    """Save the initial weights (``seed``) of ``model`` (a built-in name or a file) as a checkpoint that says it
    was trained on MNIST; return the network."""
    net = Network(graph.build(spec.load(str(model))), dtype, seed=seed)
    checkpoint.save(path, net.state_dict(), {}, {"config": {"dataset": "mnist", "dtype": dtype}})
    return net


def weights(path: Path) -> dict[str, np.ndarray]:
    return checkpoint.load(path).weights()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


class SignalAt(training.SilentReporter):
    """Sends ``sig`` to this process after step ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int, sig: int = signal.SIGINT):
        self.at, self.sig, self.sent = (epoch, batch), sig, False

    def step(self, p: training.StepProgress) -> None:
        if (p.epoch, p.batch) == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.sig)


#: A small model of activation maps, ``{c}`` input channels (test_features; test_width draws its maps).
TINY_MAPS = """
name: tiny-maps
input: [{c}, 28, 28]
classes: 10
train: {{dataset: mnist}}
layers:
  - conv: {{filters: 3, kernel: 5, padding: 2}}
  - relu
  - maxpool: {{kernel: 2}}
  - conv: {{name: deep, filters: 4, kernel: 3}}
  - relu
  - flatten
  - dense: {{units: 10}}
"""

#: A model of blocks: stage1 one block, stage2 a group of two (stage2.0, stage2.1), each ending in an add and a ReLU.
BLOCKS = """
name: tiny-blocks
input: [1, 28, 28]
classes: 10
train: {dataset: mnist}
blocks:
  unit:
    args: {filters: ~}
    layers:
      - conv: {name: conv1, filters: $filters, kernel: 3, padding: 1}
      - relu
      - conv: {name: conv2, filters: $filters, kernel: 3, padding: 1}
      - add: {inputs: [in, conv2]}
      - relu
layers:
  - conv: {name: stem, filters: 2, kernel: 3, stride: 2}
  - unit: {name: stage1, filters: 2}
  - maxpool: {kernel: 2}
  - unit: {name: stage2, filters: 2, repeat: 2}
  - flatten
  - dense: {name: fc, units: 10}
"""


def blocks_checkpoint(folder: Path, dtype: str = "float32") -> tuple[Path, Path]:
    """BLOCKS as a model file and a checkpoint of initial weights that says it was trained on MNIST."""
    model = folder / "blocks.yaml"
    model.write_text(BLOCKS)
    ckpt = folder / "blocks.npz"
    mnist_checkpoint(model, ckpt, seed=2, dtype=dtype)
    return model, ckpt


# --------------------------------------------------------------------------- run folders

#: The layers of the made-up runs' gradient records: (name, kind).
RUN_LAYERS = [("conv1", "conv"), ("bn1", "batchnorm"), ("conv2", "conv"), ("fc", "dense")]


def make_run(folder: Path, epochs: int, planned: int, *, val: bool = True, complete: bool = True,
             gradients: bool = True, rate: float = 0.5) -> Path:
    """A run folder with smooth made-up curves: loss 2.3·e^(−rate·epoch), accuracy rising toward 1."""
    folder.mkdir(parents=True)
    config = {"model": "tiny", "name": "tiny", "dataset": "mnist", "epochs": planned, "lr": 0.1}
    (folder / runs.CONFIG).write_text(yaml.safe_dump(config))
    rows = []
    for e in range(1, epochs + 1):
        loss = 2.3 * math.exp(-rate * e)
        rows.append({"epoch": e, "train_loss": loss, "train_acc": 1 - 0.9 * math.exp(-rate * e),
                     "val_loss": loss * 1.1 if val else None, "val_acc": 1 - math.exp(-rate * e) if val else None,
                     "lr": 0.1, "images_per_s": 1000.0, "seconds": 10.0})
    (folder / runs.METRICS).write_text(runs.metrics_csv(rows))
    if gradients:
        grads = [{"epoch": e, "layer": name, "kind": kind, "grad_norm": 10.0 ** (-3 + i - 0.1 * e),
                  "update_ratio": 10.0 ** (-4 + 0.5 * i), "weight_norm": 1.0 + i}
                 for e in range(1, epochs + 1) for i, (name, kind) in enumerate(RUN_LAYERS)]
        (folder / runs.GRADIENTS).write_text(runs.gradients_csv(grads))
    if complete:
        (folder / runs.TEST).write_text('{"loss": 0.1, "accuracy": 0.97, "n": 10000}\n')
    return folder


# --------------------------------------------------------------------------- image folders


def colour_picture(colour: tuple[int, int, int], rng: np.random.Generator, size: tuple[int, int],
                   noise: int) -> np.ndarray:
    """A ``size`` (width, height) RGB picture of ``colour``, each value moved by up to ±``noise``."""
    base = np.array(colour, dtype=np.int64)[None, None, :]
    return np.clip(base + rng.integers(-noise, noise + 1, (size[1], size[0], 3)), 0, 255).astype(np.uint8)


def colour_folder(root: Path, colours: dict[str, tuple[int, int, int]], per_class: int, size: tuple[int, int],
                  noise: int, seed: int) -> Path:
    """An image folder of one class per colour, ``per_class`` noisy PNGs each (``0.png``, ``1.png``, ...)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(colour_picture(colour, rng, size, noise), "RGB").save(root / name / f"{i}.png")
    return root


# --------------------------------------------------------------------------- published weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The key list of torchvision's own networks (its header and ``derive_torchvision_keys.py`` say how it was made).
TORCHVISION_KEYS = Path(__file__).resolve().parent / "data" / "torchvision_keys.txt"


def torchvision_layouts() -> dict[str, dict[str, tuple[int, ...]]]:
    """Each torchvision network's state dict as TORCHVISION_KEYS lists it: model -> key -> shape."""
    layouts: dict[str, dict[str, tuple[int, ...]]] = defaultdict(dict)
    for line in TORCHVISION_KEYS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        model, key, shape = line.split("\t")
        layouts[model][key] = tuple(int(d) for d in shape.split("x")) if shape else ()
    return layouts


def central_difference(arr: np.ndarray, idx, energy, eps: float = 1e-6) -> float:
    """∂energy/∂arr[idx] by a central difference: ``arr[idx]`` moved by ±eps in place (and put back), ``energy()``
    recomputed each time; the error is O(eps²) for a smooth energy."""
    old = arr[idx]
    arr[idx] = old + eps
    up = energy()
    arr[idx] = old - eps
    down = energy()
    arr[idx] = old
    return (up - down) / (2 * eps)


def count_image_opens(monkeypatch) -> list[str]:
    """The paths Pillow opens from now on (the test's ``monkeypatch`` undoes the spy): what a cache saves."""
    from PIL import Image

    opened: list[str] = []
    real = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(str(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return opened
