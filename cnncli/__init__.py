"""cnncli: train, evaluate, trace and summarize convolutional neural networks.

The folders show the architecture, read top-down from the description of a
model to what the user sees:

    model/      YAML model file -> validated nodes -> graph with every shape inferred
                (no Numba: ``summarize``, ``models`` and ``--help`` stop here)
    engine/     arrays, layers with backward beside forward, Numba kernels, losses,
                optimizers, the runnable network; its docstring is the engine map
    lecture/    the lecture's hand-worked numbers and ``backprop-trace``
    data, checkpoint, atomic, schedule
                datasets, weight files, crash-safe writes, learning-rate plans
    training, evaluation, summary
                what ``train``, ``eval`` and ``summarize`` compute, as records
    render/     the only package that imports Rich
    cli         the only module that imports Typer
"""

__version__ = "0.1.0"
