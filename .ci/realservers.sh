#!/usr/bin/env bash
# Real PostgreSQL, Redis and MariaDB servers, and asyncio servers on pytest-asyncio's
# unused_tcp_port, under xdist, in two pytest runs at once, with --portlease-patch=all.
#
# Installs the servers if they are missing, then runs examples/realservers with -n 4 twice at
# the same time: two pytest processes sharing one --portlease-dir and one narrow port range, and
# a Redis factory pinned to a small range of its own (REALSERVERS_PINNED). Fails unless both pass
# with no port conflict; prints how many servers started and how many conflicts there were. PostgreSQL refuses to run as root, so as root the suite runs as the
# `postgres` user that the Debian package creates (runuser), from a virtualenv that user can
# read (the project's own .venv may sit under /root).
#
# Environment:
#   REALSERVERS_MODE=patched    (default) the switch on, one lease directory: asserts 0 conflicts
#   REALSERVERS_MODE=off        the switch off: port-for and pytest-asyncio choose, port-for from
#                               the same ports (REALSERVERS_PORTS); reports, never fails
#   REALSERVERS_MODE=separate   the switch on, but each run with a lease directory of its own;
#                               reports, never fails
#   REALSERVERS_MODE=contrast   off, then separate
#   REALSERVERS_MODE=all        patched, then off, then separate; fails only as patched does
#   REALSERVERS_REPEAT=N        double runs to make in each mode (default 1)
#   REALSERVERS_CONTRAST_REPEAT=N  double runs for off and separate under contrast and all
#                               (default REALSERVERS_REPEAT)
#   REALSERVERS_RANGE=LOW-HIGH  the ports both runs share (default 15000-15099)
#   REALSERVERS_WORKERS=N       xdist workers per run (default 4)
#   REALSERVERS_TIMEOUT=S       seconds one pytest run may take (default 300): a worker that
#                               shares a port with the other run can wait forever
#   REALSERVERS_PYTHON=PATH     an interpreter with pytest-portlease[test] installed
#   REALSERVERS_VENV=DIR        where to build one otherwise (default /var/tmp/portlease-realservers)
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${REALSERVERS_MODE:-patched}
REPEAT=${REALSERVERS_REPEAT:-1}
RANGE=${REALSERVERS_RANGE:-15000-15089}
PINNED=${REALSERVERS_PINNED:-15090-15099}
WORKERS=${REALSERVERS_WORKERS:-4}
TIMEOUT=${REALSERVERS_TIMEOUT:-300}
VENV=${REALSERVERS_VENV:-/var/tmp/portlease-realservers}

say() { printf 'realservers: %s\n' "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }
[[ $MODE =~ ^(patched|off|separate|contrast|all)$ ]] \
    || die "REALSERVERS_MODE must be patched, off, separate, contrast or all, not '$MODE'"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REALSERVERS_REPEAT must be a positive integer, not '$REPEAT'"
# One row per mode, appended by each mode's run: the parent of contrast and all prints them together.
TABLE=${REALSERVERS_TABLE:-}
print_table() {
    printf 'realservers: %-9s %11s %8s %14s %15s %12s %8s\n' mode 'double runs' servers \
        'failed starts' 'port conflicts' 'failed runs' seconds
    while read -r mode runs servers failed conflicts failed_runs seconds; do
        printf 'realservers: %-9s %11s %8s %14s %15s %12s %8s\n' "$mode" "$runs" "$servers" \
            "$failed" "$conflicts" "$failed_runs" "$seconds"
    done <"$1"
}
if [[ $MODE == contrast || $MODE == all ]]; then
    modes=(off separate)
    [[ $MODE == contrast ]] || modes=(patched off separate)
    TABLE=$(mktemp /tmp/portlease-realservers-table.XXXXXX)
    rc=0
    for mode in "${modes[@]}"; do
        repeat=${REALSERVERS_CONTRAST_REPEAT:-$REPEAT}
        [[ $mode != patched ]] || repeat=$REPEAT
        REALSERVERS_MODE=$mode REALSERVERS_REPEAT=$repeat REALSERVERS_TABLE=$TABLE \
            bash "${BASH_SOURCE[0]}" || rc=$?
    done
    print_table "$TABLE"
    rm -f "$TABLE"
    exit "$rc"
fi

is_root() { [[ $(id -u) == 0 ]]; }

# -- the servers (and, as root, what the unprivileged run needs) ------------------------------
updated=
apt_install() {
    is_root || die "install $* first (apt-get install $*)"
    say "installing $*"
    # We start servers of our own on leased ports: keep the packages' services from starting.
    local policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    [[ -n $updated ]] || apt-get update -qq >/dev/null
    updated=1
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
missing=()
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || command -v pg_ctl >/dev/null \
    || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v mysqld >/dev/null || [[ -x /usr/sbin/mysqld ]] || missing+=(mariadb-server)
((${#missing[@]} == 0)) || apt_install "${missing[@]}"

RUNAS=()
RUNNER=$(id -un)
if is_root; then
    RUNNER=postgres
    id postgres >/dev/null 2>&1 || die "no 'postgres' user: is the postgresql package installed?"
    RUNAS=(runuser -u postgres --)
    if ! runuser -u postgres -- test -r "$ROOT/examples/realservers/conftest.py"; then
        # The checkout sits where the postgres user cannot read it (CI clones into a private
        # temporary directory): run from a readable copy of it.
        SRC=$VENV-src
        rm -rf "$SRC" && mkdir -p "$SRC"
        tar -C "$ROOT" --exclude=./.venv --exclude=./.git -cf - . | tar -C "$SRC" -xf -
        chmod -R a+rX "$SRC"
        say "running from a copy in $SRC, which the postgres user can read"
        ROOT=$SRC
    fi
fi

PY=${REALSERVERS_PYTHON:-$ROOT/.venv/bin/python}
imports='import pytest_portlease, pytest_postgresql, pytest_redis, pytest_mysql, pymysql, pytest_asyncio, xdist, psycopg'
if ! "${RUNAS[@]}" "$PY" -c "$imports" 2>/dev/null; then
    [[ -z ${REALSERVERS_PYTHON:-} ]] || die "$PY cannot import the suite's dependencies ($imports)"
    is_root || die "$PY lacks the realservers extra: pip install -e '$ROOT[realservers]'"
    # An editable install: the venv follows the working tree; rebuilt when pyproject changes.
    stamp="$ROOT $(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [[ $(cat "$VENV/.stamp" 2>/dev/null) != "$stamp" ]]; then
        say "building $VENV for the postgres user"
        rm -rf "$VENV"
        # Debian's python3 makes venvs only with python3-venv (ensurepip) installed.
        /usr/bin/python3 -m venv "$VENV" >/dev/null 2>&1 \
            || { apt_install python3-venv && rm -rf "$VENV" && /usr/bin/python3 -m venv "$VENV"; }
        "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[realservers]" \
            >"$VENV.pip.log" 2>&1 || { cat "$VENV.pip.log"; die "could not install $ROOT[realservers]"; }
        printf '%s\n' "$stamp" >"$VENV/.stamp"
    fi
    PY=$VENV/bin/python
    "${RUNAS[@]}" "$PY" -c "$imports" || die "$PY cannot import the suite's dependencies"
fi

# -- the double runs ----------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/portlease-realservers.XXXXXX)
is_root && chown postgres: "$WORK"
RECORD=$WORK/record.jsonl
# MariaDB's install_db runs as --user=<mysql user> and makes that account (unix_socket auth) and a
# `test` database of its own: the runner's name and another database name.
args=(-m pytest examples/realservers -n "$WORKERS" -q -rs "--portlease-range=$RANGE"
      "--mysql-user=$RUNNER" --mysql-dbname=portlease)
extra_env=(REALSERVERS_PINNED="$PINNED")
if [[ $MODE == off ]]; then
    extra_env+=(REALSERVERS_PORTS="$RANGE")  # port-for chooses from the same ports
else
    args+=(--portlease-patch=all)
fi
lease_dir() { [[ $MODE == separate ]] && echo "$WORK/leases-$1" || echo "$WORK/leases"; }

say "$MODE: $REPEAT x 2 concurrent runs of examples/realservers, -n $WORKERS, ports $RANGE"
say "as $(is_root && echo postgres || id -un), with $PY; logs in $WORK"
# Processes of this script's runs that outlived them (after a timeout): the servers by their
# working directory (PostgreSQL and Redis chdir into their data directory under $WORK), and
# pytest's workers by the record file named in their environment.
reap_leftovers() {
    local proc pid n=0 uid
    uid=$(id -u "$RUNNER")
    for proc in /proc/[0-9]*; do
        [[ $(stat -c %u "$proc" 2>/dev/null) == "$uid" ]] || continue
        pid=${proc#/proc/}
        if [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$WORK"/* ]] \
            || { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qxF "REALSERVERS_RECORD=$RECORD"; then
            kill -KILL "$pid" 2>/dev/null && n=$((n + 1))
        fi
    done
    ((n == 0)) || say "killed $n leftover process(es) of timed-out runs"
}

started_at=$SECONDS
failed_runs=0
cd "$ROOT"
for round in $(seq "$REPEAT"); do
    pids=()
    for run in a b; do
        "${RUNAS[@]}" timeout -k 10 "$TIMEOUT" \
            env -u PORTLEASE_PATCH_PORT_FOR -u PORTLEASE_PATCH -u PORTLEASE_DIR -u PORTLEASE_RANGE \
            PATH="/usr/local/bin:/usr/bin:/bin" HOME="$WORK" PYTHONDONTWRITEBYTECODE=1 \
            REALSERVERS_RECORD="$RECORD" REALSERVERS_RUN="$round$run" "${extra_env[@]}" \
            "$PY" "${args[@]}" "--portlease-dir=$(lease_dir "$run")" --basetemp "$WORK/t$round$run" \
            >"$WORK/run-$round$run.log" 2>&1 &
        pids+=($!)
    done
    for i in 0 1; do
        run=$([[ $i == 0 ]] && echo a || echo b)
        if wait "${pids[$i]}"; then rc=0; else rc=$?; fi
        ((rc != 124 && rc != 137)) || echo "timed out after ${TIMEOUT}s" >>"$WORK/run-$round$run.log"
        say "run $round$run: exit $rc: $(tail -n 1 "$WORK/run-$round$run.log")"
        if ((rc != 0)); then
            failed_runs=$((failed_runs + 1))
            [[ $MODE != patched ]] || cat "$WORK/run-$round$run.log"
        fi
    done
    reap_leftovers
done

in_logs=$(cat "$WORK"/run-*.log | grep -ci 'address already in use' || true)
skipped=$(cat "$WORK"/run-*.log | grep -c '^SKIPPED' || true)
summary=$("$PY" - "$RECORD" "$in_logs" <<'EOF'
import json, sys
from itertools import combinations

import os
records = [json.loads(line) for line in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
started = [r for r in records if r["event"] == "started"]
failed = [r for r in records if r["event"] == "failed"]
in_use = [r for r in failed if "address already in use" in (r["message"] + r["log"]).lower()]
already = [r for r in failed if r["error"] == "AlreadyRunning" and r not in in_use]
# Two servers "started" on one port at once is a silent conflict: mirakuru found the other
# run's server answering and took it for its own. A server never seen to stop (its run timed
# out) lived at most until its run's last record.
run_end = {}
for r in records:
    run_end[r["run"]] = max(run_end.get(r["run"], 0), r["t"])
def life(r):
    stops = [s["t"] for s in records if s["event"] == "stopped" and s["t"] >= r["t"]
             and (s["run"], s["pid"], s["server"], s["port"]) == (r["run"], r["pid"], r["server"], r["port"])]
    return r["t"], min(stops, default=run_end[r["run"]])
shared = sum(1 for a, b in combinations(started, 2) if a["port"] == b["port"]
             and max(life(a)[0], life(b)[0]) < min(life(a)[1], life(b)[1]))
conflicts = len(in_use) + len(already) + shared
kinds = {k: sum(r["server"] == k for r in started) for k in ("postgresql", "redis", "mysql", "asyncio")}
print(f"{len(started)} {conflicts} {len(failed)} {kinds['postgresql']} {kinds['redis']} "
      f"{kinds['mysql']} {kinds['asyncio']} {len(in_use)} {len(already)} {shared} {int(sys.argv[2])}")
EOF
)
read -r servers conflicts failed_starts pg redis mysql aio in_use already shared in_logs <<<"$summary"
say "$MODE: $servers servers started ($pg postgresql, $redis redis, $mysql mariadb, $aio asyncio)," \
    "$failed_starts failed starts," \
    "$conflicts port conflicts ($in_use address already in use, $already already running on" \
    "the port, $shared ports served twice; 'address already in use' in pytest logs: $in_logs)," \
    "$failed_runs of $((2 * REPEAT)) pytest runs failed, $((SECONDS - started_at))s"
row="$MODE $REPEAT $servers $failed_starts $conflicts $failed_runs $((SECONDS - started_at))"
if [[ -n $TABLE ]]; then
    printf '%s\n' "$row" >>"$TABLE"
else
    print_table <(printf '%s\n' "$row")
fi

if [[ $MODE == patched ]]; then
    ((failed_runs == 0)) || die "$failed_runs pytest run(s) failed"
    ((conflicts == 0 && in_logs == 0)) || die "$conflicts port conflict(s)"
    ((skipped == 0)) || die "$skipped skip line(s): a server or plugin is missing"
    ((servers >= 4 * WORKERS * REPEAT)) || die "only $servers servers started"
    ((pg > 0 && redis > 0 && mysql > 0 && aio > 0)) || die "a kind of server never started"
fi
rm -rf "$WORK"
