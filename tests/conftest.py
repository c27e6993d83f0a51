"""Shared pytest options.

``pytest --update-golden`` (or ``CNNCLI_UPDATE_GOLDEN=1``) rewrites the golden
files under ``tests/golden/`` from the current output instead of comparing
against them; review the diff before committing.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from the current output")


@pytest.fixture
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden")) or os.environ.get("CNNCLI_UPDATE_GOLDEN") == "1"
