"""cnncli: train, evaluate, trace and summarize convolutional neural networks.

The package reads top-down, one concept per module:

    spec      YAML model file -> validated, block-expanded node list
    shapes    the pure shape/parameter/MAC function of every layer kind
    graph     nodes wired by name, shapes inferred, topological order
    layers    forward and backward of every layer kind (numpy + kernels)
    kernels   Numba @njit kernels for convolution and pooling
    losses, optim, network, data, checkpoint, train, evaluate, trace, summary
    render    the only module that imports rich
    cli       the only module that imports typer
"""

__version__ = "0.1.0"
