#!/usr/bin/env bash
# port-for's own test suite, run against --portlease-patch=port-for.
#
# The tests are taken from port-for's sdist on PyPI at CI time (never committed) into a temporary
# directory, and run against the port-for installed in the venv with the switch on. Every failure
# must be listed, with its reason, in .ci/portfor-deselect.txt; anything else fails this script.
# port-for's 1.1 sdists (built with uv_build) ship no tests: then the newest sdist that does,
# PORTFOR_SUITE_VERSION (default 1.0.0), provides them.
#
# Environment: PORTFOR_PYTHON (default .venv/bin/python), PORTFOR_SUITE_VERSION.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PORTFOR_PYTHON:-$ROOT/.venv/bin/python}
FALLBACK=${PORTFOR_SUITE_VERSION:-1.0.0}
say() { printf 'portfor-suite: %s\n' "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }

WORK=$(mktemp -d /tmp/portlease-portfor-suite.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
installed=$("$PY" -c 'import port_for; print(port_for.__version__)')

# The sdist of VERSION into $WORK/sdist-VERSION. pip first (the ordinary client); pip prepares
# the sdist's metadata, which fails for uv_build sdists where its binary cannot be fetched, so
# the PEP 503 simple index (the page pip itself reads), checked against its sha256, is the fallback.
fetch() {
    local version=$1 dir=$WORK/sdist-$1
    mkdir -p "$dir"
    if ! "$PY" -m pip download -q --no-deps --no-binary :all: "port-for==$version" -d "$dir" >/dev/null 2>&1; then
        "$PY" - "$version" "$dir" <<'PYEOF'
import hashlib, re, sys, urllib.parse, urllib.request
version, dest = sys.argv[1:]
index = "https://pypi.org/simple/port-for/"
page = urllib.request.urlopen(index, timeout=60).read().decode()
for href in re.findall(r'href="([^"]+)"', page):
    url, _, digest = urllib.parse.urljoin(index, href).partition("#sha256=")
    name = url.rsplit("/", 1)[-1]
    if name == f"port_for-{version}.tar.gz":
        data = urllib.request.urlopen(url, timeout=60).read()
        if hashlib.sha256(data).hexdigest() != digest:
            sys.exit(f"sha256 mismatch for {url}")
        open(f"{dest}/{name}", "wb").write(data)
        break
else:
    sys.exit(f"no sdist port_for-{version}.tar.gz on {index}")
PYEOF
    fi
    tar -C "$dir" -xzf "$dir"/port_for-"$version".tar.gz
}

fetch "$installed"
suite_version=$installed
if [[ ! -d $WORK/sdist-$installed/port_for-$installed/tests ]]; then
    say "port-for $installed's sdist ships no tests: taking them from port-for $FALLBACK's"
    fetch "$FALLBACK"
    suite_version=$FALLBACK
fi
# Only the tests, in a directory of their own: they import the installed port_for, not the sdist's.
mkdir "$WORK/run"
cp -r "$WORK/sdist-$suite_version/port_for-$suite_version/tests" "$WORK/run/tests"
printf '[pytest]\nfilterwarnings = error\n' >"$WORK/run/pytest.ini"

# Exact node ids (pytest's --deselect matches prefixes: test_binding would take test_binding_high),
# and a listed id that names no test is an error, so that the list cannot go stale.
cat >"$WORK/run/conftest.py" <<'PYEOF'
import os, pytest

def pytest_collection_modifyitems(config, items):
    with open(os.environ["PORTFOR_DESELECT"]) as f:
        listed = {line.split(" # ")[0].strip() for line in f if line.strip() and not line.lstrip().startswith("#")}
    found = {item.nodeid.split("[")[0] for item in items} & listed
    if listed - found:
        raise pytest.UsageError(f"not tests of this suite (.ci/portfor-deselect.txt): {sorted(listed - found)}")
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid.split("[")[0] in listed])
    items[:] = [i for i in items if i.nodeid.split("[")[0] not in listed]
PYEOF

say "port-for $suite_version's tests against port-for $installed with --portlease-patch=port-for"
cd "$WORK/run"
PORTFOR_DESELECT=$ROOT/.ci/portfor-deselect.txt "$PY" -m pytest tests -q -rN -p no:cacheprovider \
    -p no:asyncio -p no:pytest_postgresql -p no:pytest_redis -p no:pytest_mysql \
    --portlease-patch=port-for "--portlease-dir=$WORK/leases" --portlease-range=15100-15199 \
    || die "port-for's suite failed with the switch on (a new difference? list it with its reason)"
say "ok"
