"""The package map in ``cnncli/__init__.py`` holds: every room and top-level module is in it, and imports go one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cnncli

PACKAGE = Path(cnncli.__file__).parent

#: The rooms bottom-up, as the map lists them; the small top-level modules with the rank they sit at.
ROOMS = ["model", "engine", "data", "exchange", "records", "lecture", "commands", "render", "cli"]
RANK = {name: i for i, name in enumerate(ROOMS)}
RANK.update({"errors": -1, "atomic": -1, "words": -1, "dataset_names": -1, "extras": RANK["engine"] + 0.5,
             "__main__": len(ROOMS)})


def _room(parts: tuple[str, ...]) -> str:
    """The room of ``cnncli.<room>.…`` (a subpackage or a top-level module)."""
    return parts[1]


def _imports(path: Path):
    """(room imported, line) for every ``cnncli`` import of one file, also those inside functions."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cnncli":
            if node.module == "cnncli":
                for alias in node.names:
                    if alias.name != "__version__":
                        yield alias.name, node.lineno
            else:
                yield _room(tuple(node.module.split("."))), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cnncli."):
                    yield _room(tuple(alias.name.split("."))), node.lineno


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("cnncli",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) == 2:
            continue
        yield path, _room(parts)


def test_every_room_and_top_level_module_is_ranked_and_named_in_the_map():
    doc = cnncli.__doc__
    found = {room for _, room in _modules()}
    assert found == set(RANK), f"ranked here but absent: {set(RANK) - found}; present but not ranked: {found - set(RANK)}"
    for name in found - {"__main__"}:
        assert name in doc, f"cnncli/__init__.py's map does not name {name}"


def test_imports_go_one_way():
    upward = [f"{path.relative_to(PACKAGE)}:{line}: {room} imports {other}"
              for path, room in _modules() for other, line in _imports(path)
              if other != room and RANK[other] > RANK[room]]
    assert upward == [], "imports against the map's order:\n" + "\n".join(upward)


def test_every_choice_list_has_one_home_and_the_engine_implements_it():
    """The model file's names (model.spec) are what the engine's registries implement and what the CLI offers."""
    from cnncli import cli
    from cnncli.commands import training
    from cnncli.engine import losses, optim
    from cnncli.model import spec
    from cnncli.records import schedule

    assert set(losses.LOSSES) == set(spec.LOSSES)
    assert set(losses.ALIASES.values()) <= set(spec.LOSSES)
    assert set(optim.OPTIMIZERS) == set(spec.OPTIMIZERS)
    assert set(schedule.SCHEDULES) == set(spec.SCHEDULES)
    offered = {e.value for e in cli.LossName}
    assert {losses.ALIASES.get(name, name) for name in offered} == set(spec.LOSSES)
    assert {e.value for e in cli.Optimizer} == set(spec.OPTIMIZERS)
    assert {e.value for e in cli.Schedule} == set(spec.SCHEDULES)
    # The run's own choices are declared by the CLI (loading training to read them would load the engine on
    # every --help); they are held to the lists training checks against.
    assert {e.value for e in cli.Engine} == set(training.ENGINES)
    assert {e.value for e in cli.Device} == set(training.DEVICES)
    assert {e.value for e in cli.DType} == set(training.DTYPES)


def test_the_fused_block_imports_first():
    # The strategy table imports the fused block and the block imports the convolution's kernels: a program
    # that imports the block before anything else must not meet the table half made.
    proc = subprocess.run([sys.executable, "-c", "import cnncli.engine.fast.fused"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
