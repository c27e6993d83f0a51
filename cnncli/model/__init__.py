"""The model description: a YAML file becomes a graph of layers with every shape known.

    kinds   every layer kind: its options and one pure shape / parameter / MAC function
    spec    YAML text -> a validated, block-expanded list of nodes
    graph   the nodes wired by name with every shape inferred

Nothing here imports Numba or allocates a weight array: ``summarize``,
``models`` and ``--help`` stop at this package and never load the engine.
"""
