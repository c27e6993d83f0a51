"""cnncli: train, evaluate, trace and summarize convolutional neural networks.

The folders show the architecture, read top-down from the description of a
model to what the user sees:

    model/      YAML model file -> validated nodes -> graph with every shape inferred
                (no Numba: ``summarize``, ``models`` and ``--help`` stop here)
    engine/     arrays, layers with backward beside forward, Numba kernels, losses,
                optimizers, the runnable network; its docstring is the engine map
    data/       datasets (MNIST, Fashion-MNIST, CIFAR, image folders; of boxes:
                mnist-detect, YOLO folders): found, downloaded, verified,
                decoded; ``source`` is what a run reads
    exchange/   other engines' files: PyTorch state dicts read without torch, the
                PyTorch module and ONNX graph ``export`` writes, the torch engine
    records/    what a run is made of and leaves behind: checkpoints, run folders,
                gradient flow, learning-rate schedules, input plans, frozen layers,
                published weights, and ``trained``, the one loader of a trained model
    lecture/    the lecture's hand-worked numbers and ``backprop-trace``
    commands/   what each command computes, as records (``training``, ``evaluation``,
                ``predict``, ``features``, ``explain``, ``compare``, ``export``, ``summary``);
                ``tasks`` (classification or detection) and ``average_precision`` (COCO's mAP)
    render/     the only package that imports Rich; draws the commands' records
    cli         the only module that imports Typer

Five small modules sit at the top because every room above uses them:

    errors         the tool's own exceptions, raised deep down, turned into a message
                   and exit status 2 at the CLI edge
    atomic         the files a command writes: their paths checked before any work,
                   each written whole or not at all (nothing a user made is lost)
    extras         the optional dependencies and the one check that one is installed
    words          counts in messages ("1 epoch", "20 epochs")
    dataset_names  the dataset names, without loading any dataset code (``model`` checks
                   a model file's ``dataset:`` with them)

Imports go one way, up the list above: model -> engine -> data -> exchange -> records
-> lecture -> commands -> render -> cli, with the small modules below them all but
``extras``, which sits just above the engine (it loads PyTorch inside the engine's
guard of the OpenMP thread pools). ``tests/test_layout.py`` holds the code to this map.
"""

__version__ = "0.1.0"
