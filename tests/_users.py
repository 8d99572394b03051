"""Running a command as another user (uid 65534, nobody) from a readable copy of the packages it
imports: the checkout may sit in a private directory and the venv's interpreter under /root
(0o700 here), neither of which another user can enter."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = 65534
ROOT = os.geteuid() == 0
#: What the CLI imports, and what pytest with our plugin imports on top.
CLI_PACKAGES = ("pytest_portlease", "filelock", "platformdirs")
PYTEST_PACKAGES = (*CLI_PACKAGES, "pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py")


@functools.cache
def readable_copy(packages: tuple[str, ...]) -> Path:
    """``packages`` copied where any user can read them; removed at exit."""
    import atexit

    root = Path(tempfile.mkdtemp(prefix="portlease-readable-"))
    atexit.register(shutil.rmtree, root, True)
    for name in packages:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        if spec.submodule_search_locations is None:  # a module, such as py.py
            shutil.copy(spec.origin, root)
            continue
        source = Path(spec.origin).parent
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in (root, *root.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def _run(python: str, args: list[str], packages: tuple[str, ...], cwd: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/", "LANG": "C.UTF-8",
        "PYTHONPATH": os.fspath(readable_copy(packages)), "PYTHONDONTWRITEBYTECODE": "1",
        "XDG_CACHE_HOME": "/nonexistent",
    }
    return subprocess.run(
        [python, "-s", *args], capture_output=True, text=True, cwd=cwd, env=env, user=NOBODY,
        group=NOBODY, extra_groups=[], umask=0o022, timeout=120, check=False,
    )


@functools.cache
def nobody_python() -> str:
    """An interpreter of our Python version that nobody can run; skips the test without one.
    The check imports the copied dependencies, none of our code: a broken package must fail the
    tests that use it, not skip them."""
    if not ROOT:
        pytest.skip("running as another uid needs root")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    found += [w for w in (shutil.which(version, path="/usr/local/bin:/usr/bin:/bin"),) if w]
    for python in dict.fromkeys(found):
        try:
            if _run(python, ["-c", "import filelock, platformdirs"], CLI_PACKAGES, "/").returncode == 0:
                return python
        except OSError:
            continue
    pytest.skip(f"no {version} interpreter runs as uid {NOBODY}")


def as_nobody(
    args: list[str], packages: tuple[str, ...] = CLI_PACKAGES, cwd: str = "/"
) -> subprocess.CompletedProcess[str]:
    """``python -s ARGS`` as nobody, importing ``packages`` from a readable copy."""
    return _run(nobody_python(), args, packages, cwd)


@contextlib.contextmanager
def world_dir() -> Iterator[Path]:
    """A directory every uid can reach: pytest's tmp_path lives under a 0o700 directory."""
    path = Path(tempfile.mkdtemp(prefix="portlease-users-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)
