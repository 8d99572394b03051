"""Every fenced Python example of the README runs, so that the README cannot drift.

Each ```python block is preceded by ``<!-- readme-test: MODE ... -->``, which says how it runs:

- ``run``: the block is a test module; it runs under ``-n 2`` and must leave no process behind;
- ``script``: the block is a script, run with ``python``;
- ``collect``: the block is a conftest.py for what the test suite does not have (PostgreSQL
  and Redis binaries, pytest-httpserver, a Docker engine); it must import and define its
  fixtures, and nothing in it is started, so the README's Development section names each such
  block's section (``test_the_readme_names_the_blocks_it_only_collects``);
- ``fixture NAME -n N [django|flask]`` (marked ``integration``, run by ``-m integration``): the
  block is a conftest.py; eight tests that each use
  fixture NAME, and check that the server it gives is their own, run under ``-n N`` with the
  real plugin, and must leave no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCK = re.compile(r"<!-- readme-test: ([^>]*?) -->\n```python\n(.*?)```", re.S)

# A server for the examples' `my-server --port P`: answers every GET with its xdist worker's id,
# so that a test can tell its own server from another worker's.
MY_SERVER = f"""#!{sys.executable}
import http.server, os, sys

port = int(sys.argv[sys.argv.index("--port") + 1])
worker = os.environ.get("PYTEST_XDIST_WORKER", "master").encode()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(worker)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print("listening", flush=True)
server.serve_forever()
"""

CHECK_PORT = """
import os, urllib.request

import pytest

def _port(server):
    return server if isinstance(server, int) else server.port

@pytest.mark.parametrize("i", range(8))
def test_own_server(i, {name}):
    with urllib.request.urlopen(f"http://127.0.0.1:{{_port({name})}}/", timeout=10) as response:
        assert response.read().decode() == os.environ.get("PYTEST_XDIST_WORKER", "master")
"""

CHECK_DJANGO = """
import os, urllib.request

import pytest

@pytest.mark.parametrize("i", range(8))
def test_own_server(i, live_server):
    with urllib.request.urlopen(live_server.url + "/worker/", timeout=10) as response:
        assert response.read().decode() == os.environ.get("PYTEST_XDIST_WORKER", "master")
"""

DJANGO_SETTINGS = """
SECRET_KEY = "readme"
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
ROOT_URLCONF = "readme_urls"
STATIC_URL = "/static/"
USE_TZ = True
"""

DJANGO_URLS = """
import os

from django.http import HttpResponse
from django.urls import path

urlpatterns = [path("worker/", lambda request: HttpResponse(os.environ.get("PYTEST_XDIST_WORKER", "master")))]
"""

CHECK_FLASK = """
import urllib.request

import pytest

@pytest.mark.parametrize("i", range(8))
def test_own_server(i, live_server, app):
    assert live_server.port == app.config["LIVESERVER_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{live_server.port}/ping/", timeout=10) as response:
        assert response.read() == b"pong"
"""


def blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    found = BLOCK.findall(text)
    assert len(found) == text.count("```python"), "a ```python block of the README has no readme-test mode"
    return found


def test_every_python_block_has_a_mode() -> None:
    assert len(blocks()) >= 8


def test_the_readme_names_the_blocks_it_only_collects() -> None:
    # A block that is only collected must not pass for one that runs: the README says which.
    text = README.read_text()
    sections = []
    for match in BLOCK.finditer(text):
        if match.group(1).split()[0] == "collect":
            heading = re.findall(r"^### (.+)$", text[: match.start()], re.M)[-1]
            sections.append(f'"{heading}"')
    assert sections, "no collect-only block: drop this test and the README's sentence"
    named = ", ".join(sections[:-1]) + f" and {sections[-1]}" if len(sections) > 1 else sections[0]
    development = " ".join(text[text.index("\n## Development\n"):].split())
    assert f"only imported as a conftest.py and their fixtures collected; nothing in them is " \
           f"started: the blocks under {named}." in development


def _leftovers(marker: str) -> list[int]:
    """Processes that carry ``marker`` in their environment: started by the run, still alive."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                zombie = f.read().rpartition(b")")[2].split()[:1] == [b"Z"]
        except OSError:
            continue
        if marker.encode() in environ and not zombie:
            pids.append(int(entry))
    return pids


def _cases() -> list[object]:
    # The plugin examples start real servers under -n 4: the integration run (.ci/run) has them.
    return [
        pytest.param(mode, code, marks=[pytest.mark.integration] if mode.startswith("fixture") else [],
                     id=" ".join(mode.split()[:2]) + f" line {i}")
        for i, (mode, code) in enumerate(blocks())
    ]


@pytest.mark.parametrize(("mode", "code"), _cases())
def test_readme_example(
    pytester: pytest.Pytester, portlease_args: list[str], monkeypatch: pytest.MonkeyPatch,
    mode: str, code: str,
) -> None:
    words = mode.split()
    marker = f"PORTLEASE_README_RUN={uuid.uuid4().hex}"
    monkeypatch.setenv("PORTLEASE_README_RUN", marker.partition("=")[2])
    # The examples' plugins stay loaded (xprocess keeps its records in the cache provider's
    # directory): only the unrelated slow ones are turned off.
    settings = [a for a in portlease_args if a.startswith("--portlease-")]
    args = [*settings, "-p", "no:hypothesispytest", "-p", "no:pytest_postgresql", "-p", "no:pytest_redis"]
    bindir = pytester.mkdir("bin")
    server = bindir / "my-server"
    server.write_text(MY_SERVER)
    server.chmod(server.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    try:
        if words[0] == "script":
            for arg in portlease_args:  # the same directory and range, through the environment
                if arg.startswith("--portlease-dir="):
                    monkeypatch.setenv("PORTLEASE_DIR", arg.partition("=")[2])
                if arg.startswith("--portlease-range="):
                    monkeypatch.setenv("PORTLEASE_RANGE", arg.partition("=")[2])
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            return
        if words[0] == "run":
            pytester.makepyfile(test_readme_example=code)
            result = pytester.runpytest_subprocess(*args, "-n", "2")
            assert result.ret == 0, result.outlines
            return
        pytester.makeconftest(code)
        if words[0] == "collect":
            pytester.makepyfile("def test_nothing(): pass\n")
            result = pytester.runpytest_subprocess(*args, "-p", "no:xdist")
            assert result.ret == 0, result.outlines
            return
        assert words[0] == "fixture", mode
        name, workers, kind = words[1], words[3], (words[4:] or ["port"])[0]
        if kind == "django":
            pytester.makepyfile(readme_settings=DJANGO_SETTINGS, readme_urls=DJANGO_URLS)
            pytester.makepyfile(test_readme_example=CHECK_DJANGO)
            # Both plugins define live_server: a project has one of them, and so does each run.
            extra = ["--ds=readme_settings", "-p", "no:flask"]
            monkeypatch.setenv("PYTHONPATH", os.fspath(pytester.path))
        elif kind == "flask":
            pytester.makepyfile(test_readme_example=CHECK_FLASK)
            extra = ["-p", "no:django"]
        else:
            pytester.makepyfile(test_readme_example=textwrap.dedent(CHECK_PORT.format(name=name)))
            extra = []
        result = pytester.runpytest_subprocess(*args, "-n", workers, *extra)
        assert result.ret == 0, result.outlines
        result.assert_outcomes(passed=8)
    finally:
        left = _leftovers(marker)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"the example left {len(left)} process(es) running"
