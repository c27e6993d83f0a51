"""Whether a training recipe fits the amount of data it is given: the one home of that rule.

A model file's recipe (batch size, epochs, schedule) is made for its dataset:
tens of thousands of images, hundreds of steps per epoch. Given a folder of a
few hundred images it still runs, but an epoch is then a step or two, and a
model with batch norm validates and tests with running statistics that lag far
behind its weights (validation loss climbing into the thousands while the
training loss falls). :func:`check` finds such a recipe before the first step
and says which batch size fits; :mod:`cnncli.render.training` draws its advice
in the run's header.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class RecipeWarning(UserWarning):
    """A recipe that runs but likely not as meant (shown as one line, as the tool's warnings are)."""


#: Fewer steps than this per epoch and every epoch's validation score, checkpoint and schedule point
#: (warm-up and decay are counted in epochs) rests on a handful of updates.
MIN_STEPS_PER_EPOCH = 4
#: With batch norm, fewer steps per epoch than this and the running statistics that validation and test
#: use (each step weighs in by the layer's momentum, 0.1: about the last 10 steps) mix weights of
#: several epochs back, which on a small dataset change a lot from one epoch to the next.
MIN_STEPS_PER_EPOCH_BATCHNORM = 10
#: With batch norm, fewer images than this per batch and each step's mean and variance of a channel are
#: too noisy: training normalises by them, test time by the running averages, and the two part.
MIN_BATCHNORM_BATCH = 8

#: What went wrong: too few steps per epoch, or too few images per batch-norm statistic.
FEW_STEPS, SMALL_BATCH = "few steps", "small batch"


@dataclass(frozen=True)
class Advice:
    """A recipe that does not fit its data, and a batch size that does (None when no batch size does)."""

    problem: str                    # FEW_STEPS or SMALL_BATCH
    n_train: int                    # training images (after --limit and the validation split)
    batch_size: int
    steps_per_epoch: int
    batchnorm: bool                 # the model normalises with batch statistics
    wanted: int                     # the rule's bound: steps per epoch, or images per batch
    better_batch: int | None = None
    better_steps: int | None = None


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps in one pass over ``n_train`` images (the last batch may be smaller)."""
    return math.ceil(n_train / batch_size)


def check(n_train: int, batch_size: int, batchnorm: bool) -> list[Advice]:
    """What is wrong with training on ``n_train`` images in batches of ``batch_size`` (empty: nothing)."""
    steps = steps_per_epoch(n_train, batch_size)
    advice = []
    if batchnorm and batch_size < MIN_BATCHNORM_BATCH:
        bigger = MIN_BATCHNORM_BATCH if n_train >= MIN_BATCHNORM_BATCH else None
        advice.append(Advice(SMALL_BATCH, n_train, batch_size, steps, batchnorm, MIN_BATCHNORM_BATCH, bigger,
                             None if bigger is None else steps_per_epoch(n_train, bigger)))
    wanted = MIN_STEPS_PER_EPOCH_BATCHNORM if batchnorm else MIN_STEPS_PER_EPOCH
    if steps < wanted:
        better = _batch_for(n_train, wanted, MIN_BATCHNORM_BATCH if batchnorm else 1)
        advice.append(Advice(FEW_STEPS, n_train, batch_size, steps, batchnorm, wanted, better,
                             None if better is None else steps_per_epoch(n_train, better)))
    return advice


def _batch_for(n_train: int, steps: int, smallest: int) -> int | None:
    """The largest power of two, at least ``smallest``, that gives ``steps`` steps per epoch; None if none does."""
    batch = 1 << max(0, (n_train // steps).bit_length() - 1)  # the largest power of two <= n_train / steps
    while batch >= smallest:
        if steps_per_epoch(n_train, batch) >= steps:
            return batch
        batch //= 2
    return None


def uses_batchnorm(graph) -> bool:
    """Whether a model graph (:class:`cnncli.model.graph.Graph`) has a batch-norm layer that normalises with
    batch statistics while training (a frozen one uses its running statistics throughout)."""
    return any(node.kind == "batchnorm" and not node.frozen for node in graph.nodes)
