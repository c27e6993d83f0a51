"""Shared pytest options and fixtures.

Golden files (``tests/golden/*.txt``) are snapshots of output that a person
reviewed when it was written, not independent truth: a test comparing against
one catches a change, and the numbers inside are checked elsewhere against
references the tests compute. ``pytest --update-golden`` (and only that flag)
rewrites them from the current output; every test that rewrote a file is
reported as skipped, so a regenerating run never passes silently. Review the
diff (``git diff tests/golden``) before committing it. Without the flag a
missing golden file is a failure, never created.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from the current output (the tests that do are skipped)")


@pytest.fixture
def golden(request) -> Callable[[str, str], None]:
    """``golden(name, text)``: assert ``text`` equals ``tests/golden/<name>``; with --update-golden, rewrite it."""
    update = bool(request.config.getoption("--update-golden"))

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            old = path.read_text(encoding="utf-8") if path.is_file() else None
            path.write_text(text, encoding="utf-8")
            what = "created" if old is None else ("unchanged" if old == text else "rewritten")
            pytest.skip(f"--update-golden: {path.name} {what}; review `git diff tests/golden` "
                        "and run the tests again without the flag")
        if not path.is_file():
            pytest.fail(f"golden file {path} is missing: create it with `pytest --update-golden`, "
                        "review it and commit it")
        assert text == path.read_text(encoding="utf-8"), (
            f"the output differs from the snapshot {path.name}; if the change is intended, run "
            "`pytest --update-golden` and review `git diff tests/golden`")

    return check


@pytest.fixture
def lenet_checkpoint(tmp_path):
    """A LeNet-5 checkpoint of initial weights (seed 3) that says it was trained on MNIST, and its network."""
    from cnncli.engine.network import Network
    from cnncli.model import graph, spec
    from cnncli.records import checkpoint

    net = Network(graph.build(spec.load("lenet5")), "float32", seed=3)
    path = tmp_path / "lenet5.npz"
    checkpoint.save(path, net.state_dict(), {}, {"config": {"dataset": "mnist", "dtype": "float32"}})
    return path, net
