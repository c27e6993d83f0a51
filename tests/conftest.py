"""Shared pytest options and fixtures (plain helpers that tests import are in helpers.py).

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

import dataclasses
import http.server
import threading
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
    # helpers (and so cnncli) imported by the fixtures that need them: test_golden's nested pytest runs of this
    # file then start without importing the engine
    from helpers import mnist_checkpoint

    path = tmp_path / "lenet5.npz"
    return path, mnist_checkpoint("lenet5", path, seed=3)


@pytest.fixture(scope="module")
def mnist_env(tmp_path_factory):
    """For a whole module (``pytest.mark.usefixtures("mnist_env")``): the real MNIST files as CNNCLI_DATA, no
    downloads, and a private cache that the module's tests share (MNIST is decoded into it once)."""
    with pytest.MonkeyPatch.context() as mp:
        from helpers import DATA

        if DATA is not None:
            mp.setenv("CNNCLI_DATA", str(DATA))
        mp.setenv("CNNCLI_OFFLINE", "1")
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """For the dataset tests (``pytest.mark.usefixtures("isolated_data")``): a private cache, no CNNCLI_DATA,
    no system copies of a dataset, and mirrors that cannot reach the internet."""
    from cnncli import data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("CNNCLI_DATA", raising=False)
    monkeypatch.delenv("CNNCLI_OFFLINE", raising=False)
    # Port 9 (discard) on loopback: connection refused at once.
    monkeypatch.setenv("CNNCLI_MIRRORS", "http://127.0.0.1:9/")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(data.fetch, "DOWNLOAD_TIMEOUT", 5.0)
    # No system copies in unit tests: they would shadow the fake datasets.
    for key, info in list(data.DATASETS.items()):
        monkeypatch.setitem(data.DATASETS, key, dataclasses.replace(info, system_dirs=()))


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (mode, body)``; mode ok | drop (promise the body, send half, hang up)."""

    def do_GET(self):  # noqa: N802
        self.server.hits.append(self.path)
        mode, body = self.server.routes.get(self.path, ("404", b""))
        if mode == "404":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A local HTTP server: ``server.url``, ``server.routes`` (path -> (mode, body), see _Handler), and
    ``server.hits``, the paths asked for."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.routes, srv.hits = {}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
