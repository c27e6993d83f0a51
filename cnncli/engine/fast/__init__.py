"""Speed paths of the engine; see :mod:`cnncli.engine` for which layers take them and why."""

# The blocks here run the convolution's kernels and are strategies of its table, which imports them: the
# convolution package is loaded first, so that a program importing a block first does not meet it half made.
import cnncli.engine.conv  # noqa: F401
