#!/usr/bin/env bash
# Stop the test server that .ci/start-postgres.sh started. The cluster directory stays,
# so the next start is fast; delete $FLOWERBOT_PG_ROOT to start from scratch.
set -euo pipefail

PG_ROOT="${FLOWERBOT_PG_ROOT:-/tmp/flowerbot-postgres}"
DATA_DIR="$PG_ROOT/data"

if [[ ! -s "$DATA_DIR/PG_VERSION" ]]; then
    echo "stop-postgres: no cluster in $DATA_DIR, nothing to stop" >&2
    exit 0
fi

BIN_DIR="$(ls -d /usr/lib/postgresql/"$(cat "$DATA_DIR/PG_VERSION")"/bin 2>/dev/null || dirname "$(command -v pg_ctl)")"
if [[ $EUID -eq 0 ]]; then
    RUN_AS=(runuser -u postgres --)
else
    RUN_AS=()
fi

if "${RUN_AS[@]}" "$BIN_DIR/pg_ctl" status --pgdata="$DATA_DIR" >/dev/null 2>&1; then
    "${RUN_AS[@]}" "$BIN_DIR/pg_ctl" stop --pgdata="$DATA_DIR" --mode=fast --wait >&2
else
    echo "stop-postgres: the server in $DATA_DIR is not running" >&2
fi
