"""``cnncli compare``: one recipe for every model, runs equal to `train`'s, going on after a stop, mistakes."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import yaml
from helpers import SignalAt, assert_same_weights, needs_mnist, run_main

from cnncli.commands import compare, training
from cnncli.errors import UsageError
from cnncli.records import runs

# One cache for the module: the runs read the same MNIST files, decoded once.
pytestmark = [needs_mnist, pytest.mark.usefixtures("mnist_env")]

MODEL = """\
name: {name}
input: [1, 28, 28]
classes: 10
train: {{dataset: mnist, lr: {lr}, momentum: 0.9, schedule: cosine, batch_size: 50, epochs: 2, val_size: 100}}
layers:
  - conv: {{filters: {filters}, kernel: 5, stride: 2}}
  - relu
  - flatten
  - dense: {{units: 10}}
"""


@pytest.fixture
def models(tmp_path):
    """Two small models whose files disagree on the learning rate: the first one's recipe must win."""
    paths = []
    for name, lr, filters in (("narrow", 0.05, 2), ("wide", 0.5, 4)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(MODEL.format(name=name, lr=lr, filters=filters))
        paths.append(str(path))
    return paths


def test_every_model_trains_with_the_first_models_recipe_as_train_would(models, tmp_path):
    experiment = compare.plan(models, {"epochs": 2}, limit=500, out=tmp_path / "exp")
    assert experiment.settings["lr"] == 0.05 and [e.name for e in experiment.entries] == ["narrow", "wide"]
    result = compare.run(experiment)
    assert result.status == "completed" and result.exit_code == 0
    assert yaml.safe_load((tmp_path / "exp" / compare.RECORD).read_text())["models"] == models
    # The second model's run is exactly `train wide` with the first model's recipe.
    alone = training.train(training.configure(models[1], dict(experiment.settings), limit=500, out=tmp_path / "alone"))
    assert_same_weights(tmp_path / "exp" / "wide" / "last.npz", alone.last_path)
    assert runs.load(tmp_path / "exp" / "wide").config["lr"] == 0.05


def test_a_stopped_experiment_goes_on_and_ends_as_an_uninterrupted_one(models, tmp_path):
    whole = compare.run(compare.plan(models, {}, limit=500, out=tmp_path / "whole"))
    experiment = compare.plan(models, {}, limit=500, out=tmp_path / "part")

    def reporter(index, entry):
        return SignalAt(1, 3, signal.SIGINT) if index == 1 else None

    stopped = compare.run(experiment, reporter)
    assert stopped.status == "interrupted" and stopped.exit_code == 128 + signal.SIGINT
    first_done = (tmp_path / "part" / "narrow" / "last.npz").stat().st_mtime_ns
    again = compare.run(compare.plan(models, {}, limit=500, out=tmp_path / "part"))
    assert again.status == "completed"
    assert (tmp_path / "part" / "narrow" / "last.npz").stat().st_mtime_ns == first_done  # not trained again
    for name in ("narrow", "wide"):
        assert_same_weights(tmp_path / "whole" / name / "last.npz", tmp_path / "part" / name / "last.npz")
    assert [r.test_acc for r in again.results] == [r.test_acc for r in whole.results]


def test_more_epochs_train_every_run_further(models, tmp_path):
    compare.run(compare.plan(models, {"epochs": 1}, limit=300, out=tmp_path / "exp"))
    longer = compare.run(compare.plan(models, {"epochs": 2}, limit=300, out=tmp_path / "exp"))
    assert [r.epochs_done for r in longer.results] == [2, 2]
    with pytest.raises(UsageError, match="was started with epochs 2, not 1"):
        compare.plan(models, {"epochs": 1}, limit=300, out=tmp_path / "exp")


def test_models_may_be_added_and_train_with_the_folders_recipe(models, tmp_path):
    compare.run(compare.plan(models, {"epochs": 1, "weight_decay": 0.001}, limit=300, out=tmp_path / "exp"))
    kept = (tmp_path / "exp" / "wide" / "last.npz").stat().st_mtime_ns
    third = tmp_path / "third.yaml"
    third.write_text(MODEL.format(name="third", lr=0.3, filters=3))
    grown = compare.plan([*models, str(third)], {}, out=tmp_path / "exp")
    assert grown.limit == 300 and grown.settings["weight_decay"] == 0.001 and grown.settings["lr"] == 0.05
    result = compare.run(grown)
    assert [r.epochs_done for r in result.results] == [1, 1, 1]
    assert (tmp_path / "exp" / "wide" / "last.npz").stat().st_mtime_ns == kept  # not trained again
    config = runs.load(tmp_path / "exp" / "third").config
    assert (config["lr"], config["weight_decay"]) == (0.05, 0.001)
    assert yaml.safe_load((tmp_path / "exp" / compare.RECORD).read_text())["models"] == [*models, str(third)]
    with pytest.raises(UsageError, match="leaves out .*wide.yaml: go on with its models"):
        compare.plan([models[0], str(third)], {}, out=tmp_path / "exp")


def test_the_experiments_share_of_work_is_weighted_by_each_models_cost(models, tmp_path):
    experiment = compare.plan(models, {"epochs": 2}, out=tmp_path / "exp")
    narrow, wide = (e.macs for e in experiment.entries)
    assert wide > narrow
    assert compare.done_fraction(experiment, 0, 2) == pytest.approx(narrow / (narrow + wide))
    assert compare.done_fraction(experiment, 1, 1) == pytest.approx((2 * narrow + wide) / (2 * (narrow + wide)))
    assert compare.done_fraction(experiment, 1, 2) == pytest.approx(1.0)


def test_the_command_draws_the_error_curves_and_writes_json_and_a_figure(models, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "errors.svg"
    args = ["compare", *models, "--epochs", "2", "--limit", "300", "--out", str(tmp_path / "exp")]
    code, out, err = run_main([*args, "--figure", str(figure)], capsys)
    assert code == 0, err
    assert "run 2 of 2: wide" in out and "training error (%)" in out
    assert f"wrote {figure}" in " ".join(out.split())  # a long path may stand on a line of its own
    assert figure.read_bytes().lstrip().startswith(b"<?xml")
    code, out, _ = run_main([*args, "--format", "json"], capsys)  # both runs done: nothing trains again
    record = json.loads(out)
    assert record["status"] == "completed" and [r["model"] for r in record["runs"]] == ["narrow", "wide"]
    narrow = runs.load(tmp_path / "exp" / "narrow")
    np.testing.assert_array_equal(record["runs"][0]["train_acc"], [r["train_acc"] for r in narrow.metrics])


def test_the_recipe_flags_reach_every_run_and_the_experiments_record(models, tmp_path, capsys):
    flags = {"--optimizer": "sgd", "--momentum": "0.5", "--weight-decay": "0.001", "--schedule": "constant",
             "--crop-padding": "2", "--lr": "0.02", "--batch-size": "25", "--seed": "3"}
    args = ["compare", *models, "--epochs", "1", "--limit", "200", "--out", str(tmp_path / "exp"), "--no-flip"]
    code, _, err = run_main([*args, *(x for pair in flags.items() for x in pair)], capsys)
    assert code == 0, err
    want = {"optimizer": "sgd", "momentum": 0.5, "weight_decay": 0.001, "schedule": "constant",
            "crop_padding": 2, "lr": 0.02, "batch_size": 25, "seed": 3, "flip": False}
    record = yaml.safe_load((tmp_path / "exp" / compare.RECORD).read_text())["settings"]
    for name in ("narrow", "wide"):
        config = runs.load(tmp_path / "exp" / name).config
        assert {k: config[k] for k in want} == want == {k: record[k] for k in want}, name
    # Going on needs only the folder (it keeps the recipe): two more epochs with the same settings.
    code, _, err = run_main(["compare", *models, "--out", str(tmp_path / "exp"), "--epochs", "2"], capsys)
    assert code == 0, err
    for name in ("narrow", "wide"):
        folder = runs.load(tmp_path / "exp" / name)
        assert len(folder.metrics) == 2 and {k: folder.config[k] for k in want} == want, name
    # Another recipe is refused, naming the setting, and nothing trains.
    again = ["compare", *models, "--out", str(tmp_path / "exp")]
    code, _, err = run_main([*again, "--weight-decay", "0.002"], capsys)
    assert code == 2 and "was started with weight_decay 0.001, not 0.002" in err
    code, _, err = run_main([*again, "--flip"], capsys)
    assert code == 2 and "was started with flip False, not True" in err
    assert all(len(runs.load(tmp_path / "exp" / name).metrics) == 2 for name in ("narrow", "wide"))


def test_a_recipe_that_does_not_fit_the_data_is_warned_in_every_runs_header(models, tmp_path, capsys):
    args = ["compare", *models, "--epochs", "1", "--limit", "300", "--batch-size", "128", "--out", str(tmp_path / "e")]
    code, out, err = run_main(args, capsys)
    assert code == 0, err
    # 270 training images (30 held out) in batches of 128: 3 steps per epoch, in either model's run
    warning = ("warning: 270 training images in batches of 128 are 3 steps per epoch: fewer than 4 and each epoch "
               "of the recipe is a handful of updates; --batch-size 64 gives 5 steps per epoch")
    # Each run's part of the output (from its "Training ..." header), lines wrapped at the console's width.
    runs = [" ".join(part.split()) for part in out.split("\nTraining ")[1:]]
    assert len(runs) == 2, out
    for run in runs:  # the warning is in the header, before the epochs' table
        assert warning in run and run.index(warning) < run.index("train loss"), out


def test_compare_takes_every_recipe_flag_train_takes():
    import typer.main

    from cnncli.cli import app

    commands = typer.main.get_command(app).commands
    train_only = {"model", "out", "resume", "dtype", "engine", "nproc", "device", "skip_model_check", "weights",
                  "freeze"}  # fine-tuning one model from its weights
    recipe = {p.name for p in commands["train"].params} - train_only
    assert recipe <= {p.name for p in commands["compare"].params}


def test_mistakes_exit_2_before_anything_trains(models, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        ([models[0]], "compare needs at least two models"),
        ([models[0], models[0]], "model narrow is given twice"),
        ([*models, "alexnet"], "model 'alexnet' takes 224"),
        ([*models, "--out", str(foreign)], "is not an experiment folder"),
        ([*models, "--figure", str(tmp_path / "e.gif")], "--figure"),
        ([*models, "--limit", "0"], "--limit must be a positive number"),
        ([*models, "--momentum", "-1"], "--momentum"),
    ]
    for args, message in cases:
        code, _, err = run_main(["compare", *args], capsys)
        assert code == 2 and message in err, (args, err)
    assert (foreign / "notes.txt").read_text() == "mine" and os.listdir(foreign) == ["notes.txt"]
    assert not (tmp_path / "runs").exists()
