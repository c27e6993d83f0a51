"""cnncli: train, evaluate, trace and summarize convolutional neural networks.

The folders show the architecture, read top-down from the description of a
model to what the user sees:

    model/      YAML model file -> validated nodes -> graph with every shape inferred
                (no Numba: ``summarize``, ``models`` and ``--help`` stop here)
    engine/     arrays, layers with backward beside forward, Numba kernels, losses,
                optimizers, the runnable network; its docstring is the engine map
    lecture/    the lecture's hand-worked numbers and ``backprop-trace``
    data/       datasets (MNIST, Fashion-MNIST, CIFAR, image folders): found,
                downloaded, verified, decoded; ``source`` is what a run reads
    inputs      a dataset's images → a model's input: adaptation, augmentation
    checkpoint, atomic, schedule, dataset_names
                weight files, crash-safe writes, learning-rate plans, the dataset names
    recipe      whether a training recipe fits the amount of data (steps per epoch, batch norm)
    extras      the optional dependencies and the one check that one is installed
    words       counts in messages ("1 epoch", "20 epochs")
    training, evaluation, predict, summary
                what ``train``, ``eval``, ``predict`` and ``summarize`` compute, as records
    render/     the only package that imports Rich
    cli         the only module that imports Typer
"""

__version__ = "0.1.0"
