"""The options of the commands: help in panels, one name for the weights, hints for unknown options."""

from __future__ import annotations

import re

import pytest
import typer
from helpers import run_main
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.commands import evaluation, explain, export, features, predict, training
from cnncli.errors import UsageError
from cnncli.lecture import trace

runner = CliRunner()

#: The panels of the commands with many options, and an option shown in each.
PANELS = {
    "train": {"Recipe": "--lr", "Data and augmentation": "--crop-padding", "Run folder": "--resume",
              "Engine": "--engine"},
    "compare": {"Recipe": "--epochs", "Data and augmentation": "--flip", "Output": "--figure"},
    "eval": {"Data": "--split", "Output": "--top-k"},
    "backprop-trace": {"Network and step": "--steps", "Input": "--sample", "Output": "--dump"},
    "features": {"Input": "--image", "Output": "--max-maps"},
    "explain": {"Input": "--sample", "Explanation": "--layer", "Output": "--out"},
}


def _panels(help_text: str) -> dict[str, set[str]]:
    """The options under each panel title of Rich's help."""
    panels: dict[str, set[str]] = {}
    title = None
    for line in help_text.splitlines():
        head = re.match(r"╭─ (.+?) ─", line)
        if head:
            title = head.group(1)
            panels[title] = set()
        elif title is not None:
            panels[title].update(re.findall(r"(?:^│|\s)(--[a-z][\w-]*)", line))
    return panels


@pytest.mark.parametrize("command", sorted(PANELS))
def test_help_groups_the_options_in_panels(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=120)
    assert result.exit_code == 0, result.output
    shown = _panels(result.output)
    for title, option in PANELS[command].items():
        assert option in shown.get(title, set()), f"{option} not under {title!r}: {shown}"


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def test_eval_help_states_the_worst_mistakes_default_the_command_uses():
    # The CLI states it in words (it does not import the commands to start); evaluation.WORST is the value.
    (option,) = [p for p in _command("eval").params if p.name == "worst"]
    assert option.default is None and f"(default: {evaluation.WORST})" in option.help


def test_every_command_that_reads_weights_takes_both_names():
    readers = []
    for name in typer.main.get_command(app).commands:
        for param in _command(name).params:
            names = set(param.opts) | set(param.secondary_opts)
            if names & {"--weights", "--checkpoint"}:
                assert names == {"--weights", "--checkpoint"}, f"{name}: {sorted(names)}"
                assert param.opts[0] == "--weights"  # the name help and messages show first
                readers.append(name)
    assert sorted(readers) == sorted(WEIGHTS_READERS)


# The domain function each command calls, and the command line around the weights flag.
WEIGHTS_READERS = {
    "eval": (evaluation, "evaluate", ["eval", "lenet5", "{flag}", "{path}"]),
    "predict": (predict, "predict", ["predict", "lenet5", "x.png", "{flag}", "{path}"]),
    "features": (features, "features", ["features", "lenet5", "{flag}", "{path}", "--sample", "0"]),
    "explain": (explain, "explain", ["explain", "lenet5", "{flag}", "{path}", "--sample", "0"]),
    "export": (export, "export", ["export", "lenet5", "{flag}", "{path}", "--to", "onnx", "-o", "m.onnx"]),
    "backprop-trace": (trace, "run", ["backprop-trace", "lenet5", "{flag}", "{path}", "--sample", "0"]),
    "train": (training, "configure", ["train", "lenet5", "{flag}", "{path}"]),  # fine-tuning from them
}


@pytest.mark.parametrize("flag", ["--weights", "--checkpoint"])
@pytest.mark.parametrize("command", sorted(WEIGHTS_READERS))
def test_weights_and_checkpoint_reach_the_command(command, flag, tmp_path, capsys, monkeypatch):
    module, function, line = WEIGHTS_READERS[command]
    seen = []

    def called(*args, **kwargs):
        seen.append(kwargs["weights"] if "weights" in kwargs else args[1])
        raise UsageError("reached")

    monkeypatch.setattr(module, function, called)
    path = tmp_path / "w.npz"
    code, _, err = run_main([part.format(flag=flag, path=path) for part in line], capsys)
    assert code == 2 and "reached" in err, err
    assert seen == [path]


@pytest.mark.parametrize("line,hint", [
    (["train", "lenet5", "--epoch", "1"], "No such option: --epoch — did you mean --epochs"),
    (["train", "lenet5", "--output", "x"], "No such option: --output — did you mean --out?"),
    (["train", "--model", "lenet5"], "No such option: --model (model is an argument: give it without --model)"),
    (["predict", "lenet5", "--images", "x.png"], "(images is an argument: give it without --images)"),
    (["eval", "lenet5", "--epochs", "3"], "No such option: --epochs (--epochs is an option of compare, train)"),
], ids=["misspelt", "close-name", "argument", "argument-list", "other-command"])
def test_an_unknown_option_gets_a_hint(line, hint, capsys):
    code, out, err = run_main(line, capsys)
    text = " ".join(err.replace("│", " ").split())
    assert code == 2
    assert hint in text, text
    assert f"Try 'cnncli {line[0]} -h' for help" in text
    assert "--help?" not in text and "Traceback" not in out + err
