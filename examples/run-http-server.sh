#!/bin/sh
# A service start script that used to hard-code its port (`http.server 8000`), now given one by
# `portlease run`, which leases a free port, renews the lease while the server runs, and releases
# it when the server stops:
#
#   portlease run --label docs-server -- examples/run-http-server.sh [DIRECTORY]
#
# Every other leaser on this host (pytest sessions, other scripts, fedimint-portalloc) skips the
# port meanwhile, and `portlease status` shows who holds it.
set -eu

: "${PORTLEASE_PORT:?start me through: portlease run -- $0}"
root=${1:-.}

echo "serving $root on http://127.0.0.1:$PORTLEASE_PORT/ (all ports: $PORTLEASE_PORTS)" >&2
# exec, so that the signals `portlease run` forwards (SIGTERM, SIGHUP, SIGINT) reach the server
# itself, not a shell waiting for it.
exec "${PYTHON:-python3}" -m http.server --bind 127.0.0.1 --directory "$root" "$PORTLEASE_PORT"
