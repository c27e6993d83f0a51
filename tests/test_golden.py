"""The ``golden`` fixture (tests/conftest.py): compares, fails on a missing file, rewrites only when asked."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
HELPERS = CONFTEST.with_name("helpers.py")  # conftest.py imports it

TEST = '''
def test_table(golden):
    golden("table.txt", TEXT)
'''


def _pytest(folder: Path, text: str, *flags: str) -> subprocess.CompletedProcess:
    (folder / "test_table.py").write_text(f"TEXT = {text!r}\n" + TEST)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(folder), *flags],
                          capture_output=True, text=True, cwd=folder)


def test_golden_files_are_compared_and_rewritten_only_with_the_flag(tmp_path):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    shutil.copy(HELPERS, tmp_path / "helpers.py")
    table = tmp_path / "golden" / "table.txt"

    missing = _pytest(tmp_path, "one\n")
    assert missing.returncode == 1 and "golden file" in missing.stdout and "is missing" in missing.stdout
    assert not table.exists()  # a missing file is a failure, never created

    made = _pytest(tmp_path, "one\n", "--update-golden")
    assert made.returncode == 0 and "1 skipped" in made.stdout and "passed" not in made.stdout
    assert table.read_text() == "one\n"

    assert _pytest(tmp_path, "one\n").returncode == 0

    changed = _pytest(tmp_path, "two\n")
    assert changed.returncode == 1 and "differs from the snapshot table.txt" in changed.stdout
    assert table.read_text() == "one\n"

    rewritten = _pytest(tmp_path, "two\n", "--update-golden")
    assert rewritten.returncode == 0 and "1 skipped" in rewritten.stdout and "rewritten" in rewritten.stdout
    assert table.read_text() == "two\n"
