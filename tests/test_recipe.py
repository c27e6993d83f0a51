"""The rule that warns when a recipe does not fit its data (cnncli.commands.recipe): it fires for a big-dataset recipe
on a small folder, and never for the built-in models on their own datasets with their own recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cnncli.commands import recipe, tasks, training
from cnncli.data import mnist_detect
from cnncli.model import graph, spec

MODELS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "models").glob("*.yaml"))
#: Training images of each dataset the built-in models train on (the published sizes).
TRAIN_IMAGES = {"mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000,
                # the canvases cnncli draws: as many as mnist_detect.load draws by default
                **{name: mnist_detect.DEFAULT_COUNTS["train"] for name in mnist_detect.DATASETS}}


def _n_train(images: int, val_size: int) -> int:
    return images - training.validation_count(images, val_size)


def test_a_small_folder_with_a_big_dataset_recipe_is_told_which_batch_size_fits():
    # 216 images, 21 of them held out for validation, in resnet20's batches of 128: 2 steps per epoch.
    n_train = _n_train(216, 5000)
    assert n_train == 195
    (advice,) = recipe.check(n_train, 128, batchnorm=True)
    assert (advice.problem, advice.steps_per_epoch) == (recipe.FEW_STEPS, math.ceil(195 / 128))
    assert advice.better_batch == 16 and advice.better_steps == math.ceil(195 / 16) == 13
    assert advice.better_steps >= recipe.MIN_STEPS_PER_EPOCH_BATCHNORM
    assert 2 * advice.better_batch > 195 / recipe.MIN_STEPS_PER_EPOCH_BATCHNORM  # the largest power of two that fits
    # Without batch norm two steps per epoch are still too few, and a bigger batch fits.
    (plain,) = recipe.check(n_train, 128, batchnorm=False)
    assert plain.problem == recipe.FEW_STEPS and plain.better_batch == 32 and plain.better_steps == 7
    assert recipe.check(n_train, 16, batchnorm=True) == []


def test_too_few_images_per_batch_norm_statistic():
    (advice,) = recipe.check(5000, 4, batchnorm=True)
    assert advice.problem == recipe.SMALL_BATCH and advice.better_batch == recipe.MIN_BATCHNORM_BATCH
    assert advice.better_steps == math.ceil(5000 / recipe.MIN_BATCHNORM_BATCH)
    assert recipe.check(5000, 4, batchnorm=False) == []
    # Too few images for any batch size that batch norm can use: no batch size is offered.
    assert all(a.better_batch is None for a in recipe.check(40, 32, batchnorm=True))


def _recipes():
    for name in MODELS:
        model = spec.load(name)
        own = model.train_settings(None)["dataset"]
        # a classifier on Fashion-MNIST too (its recipes' datasets entries); a detector on its own boxes alone
        for dataset in dict.fromkeys([own] if tasks.detects(model) else [own, "fashion-mnist"]):
            yield pytest.param(name, dataset, id=f"{name}-{dataset}")


@pytest.mark.parametrize("name, dataset", list(_recipes()))
def test_no_warning_for_a_built_in_model_on_its_dataset_with_its_recipe(name, dataset):
    model = spec.load(name)
    settings = model.train_settings(dataset)
    batchnorm = recipe.uses_batchnorm(graph.build(model))
    n_train = _n_train(TRAIN_IMAGES[settings["dataset"]], settings["val_size"])
    assert recipe.check(n_train, settings["batch_size"], batchnorm) == []


@pytest.mark.parametrize("name, limit", [("lenet5", 300), ("lenet5", 500), ("lenet5", 1000), ("lenet5-1998", 300),
                                         ("resnet20", 2000), ("resnet20", 5000), ("vgg11-bn", 5000)])
def test_no_warning_for_a_reasonable_limit(name, limit):
    model = spec.load(name)
    settings = model.train_settings(None)
    batchnorm = recipe.uses_batchnorm(graph.build(model))
    assert recipe.check(_n_train(limit, settings["val_size"]), settings["batch_size"], batchnorm) == []
