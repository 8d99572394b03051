"""The README's main-job suite (examples/) keeps passing, under the repository's own config."""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_examples_pass_under_xdist(
    pytester: pytest.Pytester, portlease_args: list[str], lease_dir: Path
) -> None:
    # Given as a path, examples/ finds the repository's pyproject.toml (rootdir, addopts,
    # filterwarnings = error) as `pytest examples -n 4` from the repository root does.
    result = pytester.runpytest_subprocess(str(EXAMPLES), *portlease_args, "-n", "2")
    assert result.ret == pytest.ExitCode.OK
    assert result.parseoutcomes()["passed"] >= 7  # test_servers.py, and any example added later
    result.stdout.fnmatch_lines(["configfile: pyproject.toml", "portlease: * leased over 2 workers *"])
    assert (lease_dir / "portlease-names.json").exists()  # the named "http" block
