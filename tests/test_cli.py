"""The command line: help, versions, and user mistakes as exit status 2 without a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import run_main
from typer.testing import CliRunner

from cnncli import __version__
from cnncli.cli import app

runner = CliRunner()
# Every registered command (the app is the registry); the core ones must be among them.
COMMANDS = tuple(c.name or c.callback.__name__ for c in app.registered_commands)
assert {"train", "eval", "backprop-trace", "summarize", "models", "predict", "plot"} <= set(COMMANDS)


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_does_not_import_numba():
    code = ("import sys\nfrom cnncli.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('NUMBA' if 'numba' in sys.modules else 'CLEAN')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("CLEAN")


def test_unknown_command_and_bad_flag_exit_2(capsys):
    assert run_main(["fly"], capsys)[0] == 2
    assert run_main(["summarize", "lenet5", "--batch", "0"], capsys)[0] == 2


def test_unknown_model_is_a_message_not_a_traceback(capsys):
    code, out, err = run_main(["summarize", "lenet6"], capsys)
    assert code == 2
    assert "unknown model 'lenet6' — did you mean 'lenet5'?" in err
    assert "Traceback" not in out + err


def test_debug_shows_the_traceback(capsys):
    code, out, err = run_main(["--debug", "summarize", "lenet6"], capsys)
    assert code == 2 and "Traceback" in err


def test_bad_model_file_names_file_layer_and_option(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [1, 28, 28]\nlayers:\n  - conv: {filter: 6, kernel: 5}\n")
    code, out, err = run_main(["summarize", str(bad)], capsys)
    assert code == 2
    assert f"{bad}: layers[0] (conv): unknown option 'filter' — did you mean 'filters'?" in err
    assert "Traceback" not in err


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "cnncli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout
