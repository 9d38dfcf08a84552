#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the test suite and print its URL on stdout.
#
# The server is a private cluster under $FLOWERBOT_PG_ROOT (default /tmp/flowerbot-postgres),
# listening on 127.0.0.1 only. It is not the Debian "main" cluster, so the script never
# touches a database someone else uses. Running it again reuses the running server.
#
# Installs the Debian `postgresql` package when no server binaries are found and the
# script runs as root. As root, the server runs as the `postgres` user because
# PostgreSQL refuses to run as root.
#
# Settings (environment):
#   FLOWERBOT_PG_ROOT  cluster directory (data, socket, log)   default /tmp/flowerbot-postgres
#   FLOWERBOT_PG_PORT  TCP port; when unset, 5432 if free, else the next free port up to 5531
#
# Output: one line, postgresql+asyncpg://flowerbot:flowerbot@127.0.0.1:<port>/flowerbot
# The role `flowerbot` (password `flowerbot`) has CREATEDB, which the test fixtures need.
# Durability is off (fsync, synchronous_commit, full_page_writes) because this server
# contains test data only, and a crash loses nothing anyone needs.
set -euo pipefail

PG_ROOT="${FLOWERBOT_PG_ROOT:-/tmp/flowerbot-postgres}"
DATA_DIR="$PG_ROOT/data"
SOCKET_DIR="$PG_ROOT/run"
LOG_FILE="$PG_ROOT/postgres.log"
PORT_FILE="$PG_ROOT/port"
ROLE=flowerbot
PASSWORD=flowerbot

log() { echo "start-postgres: $*" >&2; }

find_bin_dir() {
    local candidate
    # Newest major version first.
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -V -r); do
        if [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    return 1
}

port_in_use() {
    # Bash's /dev/tcp connects, so a listener on the port makes this succeed.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

choose_port() {
    if [[ -n "${FLOWERBOT_PG_PORT:-}" ]]; then
        echo "$FLOWERBOT_PG_PORT"
        return 0
    fi
    local port
    for port in $(seq 5432 5531); do
        if ! port_in_use "$port"; then
            echo "$port"
            return 0
        fi
    done
    log "no free TCP port between 5432 and 5531 on 127.0.0.1; set FLOWERBOT_PG_PORT"
    return 1
}

if [[ $EUID -eq 0 ]]; then
    RUN_AS=(runuser -u postgres --)
else
    RUN_AS=()
fi

# 1. Server binaries.
if ! BIN_DIR="$(find_bin_dir)"; then
    if [[ $EUID -ne 0 ]]; then
        log "PostgreSQL is not installed and this script is not root; install the 'postgresql' package"
        exit 1
    fi
    log "installing the Debian postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BIN_DIR="$(find_bin_dir)"
fi
if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    log "user 'postgres' is missing; the postgresql package creates it"
    exit 1
fi
log "server binaries: $BIN_DIR"

# 2. Cluster directory.
mkdir -p "$PG_ROOT" "$SOCKET_DIR"
if [[ $EUID -eq 0 ]]; then
    chown postgres:postgres "$PG_ROOT" "$SOCKET_DIR"
fi

if [[ ! -s "$DATA_DIR/PG_VERSION" ]]; then
    log "initialising a cluster in $DATA_DIR"
    rm -rf "$DATA_DIR"
    "${RUN_AS[@]}" "$BIN_DIR/initdb" --pgdata="$DATA_DIR" --username=postgres --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >&2
fi

# 3. Start, or reuse the running server.
if "${RUN_AS[@]}" "$BIN_DIR/pg_ctl" status --pgdata="$DATA_DIR" >/dev/null 2>&1; then
    PORT="$(cat "$PORT_FILE")"
    log "reusing the server already running on 127.0.0.1:$PORT"
else
    PORT="$(choose_port)"
    if port_in_use "$PORT"; then
        log "port $PORT on 127.0.0.1 is taken by another process; unset FLOWERBOT_PG_PORT or pick a free one"
        exit 1
    fi
    log "starting on 127.0.0.1:$PORT (log: $LOG_FILE)"
    "${RUN_AS[@]}" "$BIN_DIR/pg_ctl" start --pgdata="$DATA_DIR" --log="$LOG_FILE" --wait --timeout=60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$SOCKET_DIR \
            -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >&2
    echo "$PORT" >"$PORT_FILE"
fi

# 4. Wait until the server accepts connections.
for _ in $(seq 1 60); do
    if "$BIN_DIR/pg_isready" --quiet --host=127.0.0.1 --port="$PORT"; then
        break
    fi
    sleep 1
done
if ! "$BIN_DIR/pg_isready" --quiet --host=127.0.0.1 --port="$PORT"; then
    log "the server on 127.0.0.1:$PORT did not become ready within 60 s; see $LOG_FILE"
    exit 1
fi

# 5. Role and database, created only when missing.
psql_admin() {
    "${RUN_AS[@]}" "$BIN_DIR/psql" --no-psqlrc --quiet --tuples-only --no-align \
        --host="$SOCKET_DIR" --port="$PORT" --username=postgres --dbname=postgres \
        --set=ON_ERROR_STOP=1 "$@"
}
if [[ "$(psql_admin --command="SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]]; then
    log "creating role $ROLE"
    psql_admin --command="CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'" >&2
fi
if [[ "$(psql_admin --command="SELECT 1 FROM pg_database WHERE datname = '$ROLE'")" != "1" ]]; then
    log "creating database $ROLE"
    psql_admin --command="CREATE DATABASE $ROLE OWNER $ROLE" >&2
fi

echo "postgresql+asyncpg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$ROLE"
