"""Speed paths of the engine; see :mod:`cnncli.engine` for which layers take them and why."""
