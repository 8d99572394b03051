"""The pytest plugin: settings and their precedence, laziness, the fixtures, header and summary.

Runs that involve the lease directory, locks or xdist go through ``runpytest_subprocess``;
pure settings checks run in-process, which is ten times faster.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kernel_ephemeral_range

from pytest_portlease import PortLeaser
from pytest_portlease._config import PortRange


def leases(lease_dir: Path) -> list[tuple[int, int, str]]:
    with PortLeaser(lease_dir) as leaser:
        return [(info.base, info.size, info.label) for info in leaser.status()]


def header(result: pytest.RunResult) -> str:
    lines = [line for line in result.outlines if line.startswith("portlease: dir ")]
    assert len(lines) == 1, result.outlines
    return lines[0]


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ini", "env", "argv", "expected"),
    [
        pytest.param({}, {}, [], "dir {cache}/fm-portalloc (from default), range 10000-32000 "
                     "(from default), ttl 120s (from default)", id="defaults"),
        pytest.param({"portlease_dir": "rel/leases"}, {}, [],
                     "dir {root}/rel/leases (from ini portlease_dir)", id="dir-ini-relative"),
        pytest.param({}, {"FM_PORTALLOC_DATA_DIR": "/fm"}, [],
                     "dir /fm (from FM_PORTALLOC_DATA_DIR)", id="dir-fm"),
        pytest.param({"portlease_dir": "/ini"}, {"FM_PORTALLOC_DATA_DIR": "/fm"}, [],
                     "dir /ini (from ini portlease_dir)", id="dir-ini-over-fm"),
        pytest.param({"portlease_dir": "/ini"}, {"PORTLEASE_DIR": "/env"}, [],
                     "dir /env (from PORTLEASE_DIR)", id="dir-env-over-ini"),
        pytest.param({"portlease_dir": "/ini"}, {"PORTLEASE_DIR": ""}, [],
                     "dir /ini (from ini portlease_dir)", id="dir-empty-env-unset"),
        pytest.param({}, {"PORTLEASE_DIR": "/env"}, ["--portlease-dir", "opt"],
                     "dir {root}/opt (from --portlease-dir)", id="dir-option-over-env"),
        pytest.param({"portlease_range": "30000-30099"}, {}, [],
                     "range 30000-30099 (from ini portlease_range)", id="range-ini"),
        pytest.param({"portlease_range": "30000-30099"}, {"PORTLEASE_RANGE": "31000-31099"}, [],
                     "range 31000-31099 (from PORTLEASE_RANGE)", id="range-env-over-ini"),
        pytest.param({"portlease_range": "30000-30099"}, {"PORTLEASE_RANGE": ""}, [],
                     "range 30000-30099 (from ini portlease_range)", id="range-empty-env-unset"),
        pytest.param({}, {"PORTLEASE_RANGE": "31000-31099"}, ["--portlease-range", "2000-2999"],
                     "range 2000-2999 (from --portlease-range)", id="range-option-over-env"),
        pytest.param({"portlease_ttl": "30"}, {}, [], "ttl 30s (from ini portlease_ttl)",
                     id="ttl-ini"),
        pytest.param({"portlease_ttl": "30"}, {"PORTLEASE_TTL": "40.5"}, [],
                     "ttl 40.5s (from PORTLEASE_TTL)", id="ttl-env-over-ini"),
        pytest.param({}, {"PORTLEASE_TTL": "40"}, ["--portlease-ttl", "50"],
                     "ttl 50s (from --portlease-ttl)", id="ttl-option-over-env"),
    ],
)
def test_settings_and_their_sources_in_the_header(
    pytester: pytest.Pytester,
    nested_fast: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    ini: dict[str, str],
    env: dict[str, str],
    argv: list[str],
    expected: str,
) -> None:
    configure(pytester, monkeypatch, ini, env)
    result = pytester.runpytest(*argv, *nested_fast)
    assert expected.format(root=pytester.path, cache=tmp_path / "xdg-cache") in header(result)
    assert not (pytester.path / "rel").exists()  # resolving a setting touches nothing


@pytest.mark.parametrize(
    ("ini", "env", "argv", "expected"),
    [
        pytest.param({}, {}, [], "False default", id="default"),
        pytest.param({"portlease_patch_port_for": "true"}, {}, [],
                     "True ini portlease_patch_port_for", id="ini"),
        pytest.param({"portlease_patch_port_for": "true"}, {"PORTLEASE_PATCH_PORT_FOR": "0"}, [],
                     "False PORTLEASE_PATCH_PORT_FOR", id="env-over-ini"),
        pytest.param({"portlease_patch_port_for": "true"}, {"PORTLEASE_PATCH_PORT_FOR": ""}, [],
                     "True ini portlease_patch_port_for", id="empty-env-unset"),
        pytest.param({}, {"PORTLEASE_PATCH_PORT_FOR": "off"}, ["--portlease-patch-port-for"],
                     "True --portlease-patch-port-for", id="option-over-env"),
    ],
)
def test_patch_port_for_setting(
    pytester: pytest.Pytester,
    nested_fast: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
    ini: dict[str, str],
    env: dict[str, str],
    argv: list[str],
    expected: str,
) -> None:
    configure(pytester, monkeypatch, ini, env)
    pytester.makepyfile(
        """
        from pytest_portlease.plugin import get_session

        def test_flag(pytestconfig):
            setting = get_session(pytestconfig).patch_port_for_setting
            print("FLAG", setting.value, setting.source)
        """
    )
    result = pytester.runpytest("-s", *argv, *nested_fast)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*FLAG {expected}*"])


RANGE_EXPECTED = (
    "expected LOW-HIGH with 1 <= LOW <= HIGH <= 65535 and LOW <= 65534, such as 20000-20999 "
    "(port 65535 is never leased: fedimint-portalloc computes base + size in 16 bits)"
)
TTL_EXPECTED = "expected a number of seconds greater than 0"


@pytest.mark.parametrize(
    ("ini", "env", "argv", "message"),
    [
        pytest.param({}, {}, ["--portlease-range", "9-3"],
                     f"invalid --portlease-range '9-3' from --portlease-range: {RANGE_EXPECTED}",
                     id="range-option"),
        pytest.param({}, {"PORTLEASE_RANGE": "9-3"}, [],
                     f"invalid --portlease-range '9-3' from PORTLEASE_RANGE: {RANGE_EXPECTED}",
                     id="range-env"),
        pytest.param({"portlease_range": "2000"}, {}, [],
                     f"invalid --portlease-range '2000' from ini portlease_range: {RANGE_EXPECTED}",
                     id="range-ini"),
        pytest.param({}, {}, ["--portlease-ttl", "0"],
                     f"invalid --portlease-ttl '0' from --portlease-ttl: {TTL_EXPECTED}",
                     id="ttl-option"),
        pytest.param({}, {"PORTLEASE_TTL": "soon"}, [],
                     f"invalid --portlease-ttl 'soon' from PORTLEASE_TTL: {TTL_EXPECTED}",
                     id="ttl-env"),
        pytest.param({"portlease_ttl": "inf"}, {}, [],
                     f"invalid --portlease-ttl 'inf' from ini portlease_ttl: {TTL_EXPECTED}",
                     id="ttl-ini"),
        pytest.param({}, {"PORTLEASE_PATCH_PORT_FOR": "maybe"}, [],
                     "invalid --portlease-patch-port-for 'maybe' from PORTLEASE_PATCH_PORT_FOR: "
                     "expected 1, true, yes, on, 0, false, no or off", id="flag-env"),
        pytest.param({"portlease_patch_port_for": "maybe"}, {}, [],
                     "invalid portlease_patch_port_for from ini portlease_patch_port_for (*): "
                     "*'maybe'*", id="flag-ini"),
    ],
)
def test_bad_value_is_a_usage_error_naming_value_and_source(
    pytester: pytest.Pytester,
    nested_fast: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
    ini: dict[str, str],
    env: dict[str, str],
    argv: list[str],
    message: str,
) -> None:
    configure(pytester, monkeypatch, ini, env)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*argv, *nested_fast)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}*"])
    # ...but a bad setting never hides the help that explains how to fix it.
    result = pytester.runpytest("--help", *argv, *nested_fast)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["cooperative cross-process port leases:", "  --portlease-dir=DIR*"]
    )


def configure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ini: dict[str, str], env: dict[str, str]
) -> None:
    """An ini file with ``ini``'s keys, and ``env`` in the environment of the nested run."""
    pytester.makeini("[pytest]\n" + "".join(f"{k} = {v}\n" for k, v in ini.items()))
    for var, value in env.items():
        monkeypatch.setenv(var, value)


def test_help_and_ini_keys_share_their_text(
    pytester: pytest.Pytester, nested_fast: tuple[str, ...]
) -> None:
    result = pytester.runpytest("--help", *nested_fast)
    out = " ".join(result.outlines)
    out = re.sub(r"\s+", " ", out)
    for name in ("dir", "range", "ttl", "patch_port_for"):
        assert f"portlease_{name} (" in out
    assert out.count("env PORTLEASE_RANGE; default 10000-32000") == 2


# -- laziness --------------------------------------------------------------------------------


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "n2"])
def test_lease_directory_untouched_without_fixtures(
    pytester: pytest.Pytester, tmp_path: Path, portlease_args: list[str], xdist: list[str]
) -> None:
    missing, existing = tmp_path / "missing", tmp_path / "existing"
    existing.mkdir()
    (existing / "fm-portalloc.json").write_text("garbage that a reader would warn about")
    before = sorted(p.name for p in existing.iterdir())
    pytester.makepyfile("def test_a(): pass\ndef test_b(): pass\n")
    for directory in (missing, existing):
        result = pytester.runpytest_subprocess(
            *portlease_args, f"--portlease-dir={directory}", "-W", "error", *xdist
        )
        result.assert_outcomes(passed=2)
        assert [line for line in result.outlines if line.startswith("portlease")] == [
            header(result)
        ]
    assert not missing.exists()
    assert sorted(p.name for p in existing.iterdir()) == before
    assert (existing / "fm-portalloc.json").read_text().startswith("garbage")


def test_plugin_works_without_xdist_installed(
    pytester: pytest.Pytester, portlease_args: list[str]
) -> None:
    pytester.makepyfile("def test_a(port_block, free_port):\n    assert port_block(2)\n")
    code = (
        "import sys\n"
        "class NoXdist:\n"  # any import of xdist fails, as if it were not installed
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'xdist':\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoXdist())\n"
        "import pytest\n"
        "sys.exit(pytest.main(sys.argv[1:]))\n"
    )
    result = pytester.run(
        sys.executable, "-c", code, "-p", "no:xdist", "-p", "no:xdist.looponfail", *portlease_args,
        timeout=60,
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["portlease: 2 blocks, 3 ports leased in *"])


# -- fixtures --------------------------------------------------------------------------------


def test_fixtures_semantics_and_labels(
    pytester: pytest.Pytester, portlease_args: list[str], lease_dir: Path
) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_portlease import InvalidArgument, PortBlock, PortLeaser
        from pytest_portlease.plugin import PortBlockFactory

        seen = {}

        def labels(leaser):
            return {info.base: info.label for info in leaser.status()}

        def test_port_block(port_block: PortBlockFactory, port_leaser: PortLeaser):
            a, b = port_block(3), port_block(3)
            assert isinstance(a, PortBlock) and len(a) == 3 and not set(a) & set(b)
            pg = port_block(2, name="pg")
            assert port_block(2, name="pg") is pg
            with pytest.raises(InvalidArgument, match="'pg'.*use one size per name"):
                port_block(3, name="pg")
            with pytest.raises(InvalidArgument, match="invalid size 0"):
                port_block(0)
            assert labels(port_leaser)[a.base] == "pytest test_fixtures_semantics_and_labels0 " \\
                "test_fixtures_semantics_and_labels.py::test_port_block"
            seen["pg"] = pg

        def test_same_named_block_later(port_block):
            assert port_block(2, name="pg") is seen["pg"]

        def test_free_port(free_port: int, port_leaser):
            assert isinstance(free_port, int)
            assert labels(port_leaser)[free_port].endswith("::test_free_port")
            seen["free"] = free_port

        def test_free_port_released_after_its_test(port_leaser):
            held = labels(port_leaser)
            assert seen["free"] not in held and seen["pg"].base in held
        """
    )
    result = pytester.runpytest_subprocess(*portlease_args, "-p", "no:xdist", "-W", "error")
    result.assert_outcomes(passed=4)
    assert leases(lease_dir) == []


def test_labels_under_xdist_name_worker_and_block(
    pytester: pytest.Pytester, portlease_args: list[str]
) -> None:
    # The run id is owner data (status --json), not label text; a named block's label names it.
    pytester.makepyfile(
        """
        def test_label(port_block, port_leaser, worker_id):
            block, pg = port_block(1), port_block(2, name="pg")
            infos = {i.base: i for i in port_leaser.status()}
            root = "pytest test_labels_under_xdist_name_worker_and_block0"
            test = "test_labels_under_xdist_name_worker_and_block.py::test_label"
            assert infos[block.base].label == f"{root} {worker_id} {test}"
            assert infos[pg.base].label == f"{root} {worker_id} name=pg {test}"
            assert infos[block.base].run == infos[pg.base].run == "0123abcd"
        """
    )
    result = pytester.runpytest_subprocess(*portlease_args, "-n", "2", "--dist", "each",
                                           "--testrunuid", "0123abcd")
    result.assert_outcomes(passed=2)


def test_released_after_failing_session(
    pytester: pytest.Pytester, portlease_args: list[str], lease_dir: Path
) -> None:
    pytester.makepyfile(
        """
        def test_fails(port_block, free_port, port_leaser):
            port_block(2, name="db")
            port_leaser.lease(4)
            assert False
        def test_not_run(port_block):
            port_block(1)
        """
    )
    result = pytester.runpytest_subprocess(*portlease_args, "-x")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["portlease: 3 blocks, 7 ports leased in *"])
    assert lease_dir.is_dir() and leases(lease_dir) == []


# -- named blocks ----------------------------------------------------------------------------


NAMED = """
import pathlib

def test_named(port_block):
    block = port_block(2, name="pg")
    pathlib.Path({out!r}).write_text(str(block.base))
"""


def test_named_block_stable_across_runs_and_fresh_when_taken(
    pytester: pytest.Pytester, portlease_args: list[str], lease_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "base"
    pytester.makepyfile(NAMED.format(out=str(out)))

    def run() -> int:
        result = pytester.runpytest_subprocess(*portlease_args, "-p", "no:xdist", "-W", "error")
        result.assert_outcomes(passed=1)
        return int(out.read_text())

    first = run()
    # Without the memory, next-fit would move on past the first block.
    assert run() == first
    with socket.socket() as foreign:  # a listener outside portlease on the remembered block
        foreign.bind(("127.0.0.1", first + 1))
        foreign.listen()
        fresh = run()
    assert fresh != first
    assert run() == fresh  # the memory follows the block it got
    memory = json.loads((lease_dir / "portlease-names.json").read_text())
    assert list(memory["blocks"].values()) == [
        {"base": fresh, "size": 2, "used": memory["blocks"][next(iter(memory["blocks"]))]["used"]}
    ]
    assert json.loads(next(iter(memory["blocks"]))) == [str(pytester.path), None, "pg"]


@pytest.mark.parametrize(
    "memory",
    [b"{not json", b"[1, 2]", b'{"blocks": {"x": 1}}', b'{"blocks": []}',
     b'{"blocks": {"[\\"ROOT\\", null, \\"pg\\"]": {"base": 80000, "size": 2}}}',
     b'{"blocks": {"[\\"ROOT\\", null, \\"pg\\"]": {"base": 20000, "size": 7}}}'],
    ids=["torn", "list", "bad-entry", "bad-blocks", "bad-base", "other-size"],
)
def test_broken_or_stale_memory_costs_only_the_preference(
    pytester: pytest.Pytester,
    portlease_args: list[str],
    lease_dir: Path,
    tmp_path: Path,
    memory: bytes,
) -> None:
    lease_dir.mkdir()
    (lease_dir / "portlease-names.json").write_bytes(
        memory.replace(b"ROOT", str(pytester.path).encode())
    )
    out = tmp_path / "base"
    pytester.makepyfile(NAMED.format(out=str(out)))
    result = pytester.runpytest_subprocess(*portlease_args, "-p", "no:xdist", "-W", "error")
    result.assert_outcomes(passed=1)
    assert "Warning" not in result.stdout.str()
    memory_now = json.loads((lease_dir / "portlease-names.json").read_text())
    assert [v["base"] for v in memory_now["blocks"].values()] == [int(out.read_text())]


# -- reports ---------------------------------------------------------------------------------


FOUR_BLOCKS = """
def test_a(port_block):
    port_block(3)
    port_block(1, name="x")

def test_b(port_block, free_port):
    port_block(2)
"""


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2", "--dist", "each"]],
                         ids=["no-xdist", "n2"])
def test_header_and_summary(
    pytester: pytest.Pytester,
    portlease_args: list[str],
    lease_dir: Path,
    port_range: PortRange,
    xdist: list[str],
) -> None:
    pytester.makepyfile(FOUR_BLOCKS)
    result = pytester.runpytest_subprocess(*portlease_args, "--portlease-ttl", "60", *xdist)
    result.assert_outcomes(passed=2 * (1 + ("each" in xdist)))
    assert header(result) == (
        f"portlease: dir {lease_dir} (from --portlease-dir), range {port_range} "
        f"(from --portlease-range), ttl 60s (from --portlease-ttl), lock timeout 30s (from default)"
    )
    # Every worker ran both tests under --dist each: the controller adds them up.
    expected = (
        "portlease: 8 blocks, 14 ports leased over 2 workers in *s of leasing, of which *s waiting "
        "for the lock"
        if "each" in xdist
        else "portlease: 4 blocks, 7 ports leased in *s of leasing, of which *s waiting for the lock"
    )
    result.stdout.fnmatch_lines([expected])
    assert len([line for line in result.outlines if line.startswith("portlease: ")]) == 2


def test_no_summary_without_leases(pytester: pytest.Pytester, portlease_args: list[str]) -> None:
    pytester.makepyfile("def test_a(): pass")
    result = pytester.runpytest(*portlease_args)
    assert [line for line in result.outlines if line.startswith("portlease")] == [header(result)]


def test_ephemeral_overlap_is_in_the_header(
    pytester: pytest.Pytester, nested_fast: tuple[str, ...]
) -> None:
    eph = kernel_ephemeral_range()
    result = pytester.runpytest(f"--portlease-range={eph.low - 10}-{eph.low + 9}", *nested_fast)
    result.stdout.fnmatch_lines([
        f"portlease: WARNING: range {eph.low - 10}-{eph.low + 9} overlaps this host's ephemeral "
        f"port range {eph} at {eph.low}-{eph.low + 9}*"
    ])


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "n2"])
def test_library_warnings_are_summarised_not_raised(
    pytester: pytest.Pytester, portlease_args: list[str], lease_dir: Path, xdist: list[str]
) -> None:
    lease_dir.mkdir()
    (lease_dir / "fm-portalloc.json").write_text('{"next": 1, "keys": {"20000": "bogus"}}')
    pytester.makepyfile("def test_a(port_block):\n    port_block(1)\n")
    result = pytester.runpytest_subprocess(*portlease_args, "-W", "error", *xdist)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "portlease: PortleaseWarning: *fm-portalloc.json: dropped 1 range (not an object): 20000*"
        "(recorded while leasing, not raised)"
    ])


def run_interrupted(
    pytester: pytest.Pytester, portlease_args: list[str], tmp_path: Path, xdist: list[str]
) -> subprocess.CompletedProcess[str]:
    import os
    import signal
    import time

    ready = tmp_path / "ready"
    pytester.makepyfile(
        f"""
        import pathlib, time

        def test_hold(port_block, free_port, port_leaser):
            port_block(2, name="db")
            port_leaser.lease(1)
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(60)
        """
    )
    # Its own session, so that SIGINT goes to the process group as a terminal's Ctrl-C does.
    with subprocess.Popen(
        [sys.executable, "-m", "pytest", *portlease_args, *xdist], cwd=pytester.path,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    ) as proc:
        try:
            deadline = time.monotonic() + 30
            while not ready.exists():
                # Interrupted before it held its leases, the run would show nothing: fail instead.
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "the nested test never held its leases"
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGINT)
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


@pytest.mark.parametrize("xdist", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "n2"])
def test_released_after_ctrl_c(
    pytester: pytest.Pytester,
    portlease_args: list[str],
    lease_dir: Path,
    tmp_path: Path,
    xdist: list[str],
) -> None:
    done = run_interrupted(pytester, portlease_args, tmp_path, xdist)
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout
    assert "KeyboardInterrupt" in done.stdout
    assert lease_dir.is_dir() and leases(lease_dir) == []

