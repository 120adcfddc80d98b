#!/usr/bin/env bash
# Install and run an unmodified jinaga-server (npm) on PostgreSQL, on 127.0.0.1, for the Jinaga
# bridge tests (tests/jinaga/) and for trying the bridge by hand. See docs/jinaga.md.
#
#   bash scripts/jinaga-server.sh start    npm ci (if needed), create the database (if needed),
#                                          start the server (if not running), wait until it answers
#   bash scripts/jinaga-server.sh stop     stop the server (SIGTERM); the database is kept
#   bash scripts/jinaga-server.sh status   "jinaga-server up|down ..."; exit 3 if down
#   bash scripts/jinaga-server.sh env      print the FACTBUS_TEST_JINAGA_* exports
#   bash scripts/jinaga-server.sh node     install node and npm (Debian packages) if missing
#
# Every command is idempotent. Needs the PostgreSQL that scripts/brokers.sh starts (run
# `bash scripts/brokers.sh start postgres` first; `make test` does) and root for the database
# setup (psql as the OS user postgres over the local socket, like brokers.sh).
#
# What it makes:
#   - scripts/jinaga-server/node_modules: jinaga-server 3.7.5, jinaga 6.11.3, express, pinned by
#     scripts/jinaga-server/package-lock.json (`npm ci`)
#   - database factbus_jinaga, schema from the package's own setup.sql (run as postgres, because
#     the package's setup.sh connects to the database before creating it and fails on a new
#     server), privileges granted to the role `factbus` that brokers.sh creates (password factbus)
#   - scripts/jinaga-server/server.js listening on 127.0.0.1:$FACTBUS_JINAGA_PORT, under /jinaga
#
# Tunables (environment):
#   FACTBUS_JINAGA_DIR      state (pid file, log)          default /var/lib/factbus/jinaga-server
#   FACTBUS_JINAGA_PORT     TCP port on 127.0.0.1          default 8091
#   FACTBUS_JINAGA_DB       database name                  default factbus_jinaga
#   FACTBUS_PG_BIN          PostgreSQL binaries            default /usr/lib/postgresql/15/bin
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT="$SCRIPT_DIR/jinaga-server"
STATE_DIR="${FACTBUS_JINAGA_DIR:-/var/lib/factbus/jinaga-server}"
PORT="${FACTBUS_JINAGA_PORT:-8091}"
DB="${FACTBUS_JINAGA_DB:-factbus_jinaga}"
PG_BIN="${FACTBUS_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_SOCKDIR="/var/run/postgresql"
APP_ROLE=factbus          # created by scripts/brokers.sh
APP_PASSWORD=factbus
PIDFILE="$STATE_DIR/server.pid"
LOG="$STATE_DIR/server.log"
URL="http://127.0.0.1:$PORT/jinaga"
PG_STORE="postgresql://$APP_ROLE:$APP_PASSWORD@127.0.0.1:5432/$DB"
STAMP="$PROJECT/node_modules/.installed"

log() { printf '[jinaga-server] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
server_pid() { [ -s "$PIDFILE" ] && head -n1 "$PIDFILE" | tr -dc '0-9'; }
server_alive() {
    local pid; pid="$(server_pid || true)"
    pid_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "jinaga-server/server.js"
}
# the replicator answers OPTIONS /save with the content types it accepts
server_answers() {
    node -e '
        fetch(process.argv[1], { method: "OPTIONS", signal: AbortSignal.timeout(3000) })
            .then((r) => process.exit(/x-jinaga-graph-v1/.test(r.headers.get("accept-post") || "") ? 0 : 1))
            .catch(() => process.exit(1));' "$URL/save" 2>/dev/null
}
port_taken() { # something accepts TCP connections on 127.0.0.1:$PORT
    node -e '
        const s = require("net").connect(Number(process.argv[1]), "127.0.0.1");
        s.on("connect", () => process.exit(0)).on("error", () => process.exit(1));
        setTimeout(() => process.exit(1), 2000);' "$PORT" 2>/dev/null
}

ensure_node() { # Debian's nodejs (18 on Debian 12) is enough for jinaga (>= 17) and express
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        [ "$(id -u)" = 0 ] || die "node and npm are missing; install them (apt-get install nodejs npm)"
        log "apt-get update; apt-get install nodejs npm"
        apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
            --no-install-recommends nodejs npm >/dev/null || die "apt-get install nodejs npm failed"
    fi
}

install() {
    ensure_node
    # the stamp holds the lock file's checksum (mtimes change with every git checkout)
    local want; want="$(sha256sum "$PROJECT/package-lock.json" | cut -d' ' -f1)"
    if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        log "npm ci in $PROJECT"
        (cd "$PROJECT" && npm ci --no-audit --no-fund --silent) || die "npm ci failed"
        echo "$want" >"$STAMP"
    fi
}

psql_admin() { # as the superuser postgres over the local socket (peer authentication)
    (cd / && runuser -u postgres -- "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKDIR" -p 5432 "$@")
}

create_database() { # idempotent: creates what is missing, (re)grants every time
    [ "$(id -u)" = 0 ] || die "creating the database needs root (psql as the OS user postgres)"
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p 5432 -t 3 \
        || die "PostgreSQL does not answer on 127.0.0.1:5432 (run: bash scripts/brokers.sh start postgres)"
    if ! PGPASSWORD="$APP_PASSWORD" "$PG_BIN/psql" -X -q -At "$PG_STORE" \
        -c "select 1 from public.bookmark limit 1" >/dev/null 2>&1; then
        log "creating database $DB from jinaga-server's setup.sql"
        psql_admin -d postgres >/dev/null <<SQL
SELECT 'CREATE DATABASE $DB' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB')\gexec
SQL
        psql_admin -d "$DB" -f "$PROJECT/node_modules/jinaga-server/setup.sql" >/dev/null
    fi
    # the grants of the package's setup.sh, to the role brokers.sh creates
    psql_admin -d "$DB" >/dev/null <<SQL
GRANT CONNECT ON DATABASE $DB TO $APP_ROLE;
GRANT USAGE ON SCHEMA public TO $APP_ROLE;
GRANT SELECT,INSERT ON TABLE public.fact_type TO $APP_ROLE;
GRANT SELECT, USAGE ON SEQUENCE fact_type_fact_type_id_seq TO $APP_ROLE;
GRANT SELECT,INSERT ON TABLE public.role TO $APP_ROLE;
GRANT SELECT, USAGE ON SEQUENCE role_role_id_seq TO $APP_ROLE;
GRANT SELECT,INSERT,DELETE ON TABLE public.fact TO $APP_ROLE;
GRANT SELECT, USAGE ON SEQUENCE fact_fact_id_seq TO $APP_ROLE;
GRANT SELECT,INSERT,DELETE ON TABLE public.edge TO $APP_ROLE;
GRANT SELECT,INSERT,DELETE ON TABLE public.ancestor TO $APP_ROLE;
GRANT SELECT,INSERT ON TABLE public.public_key TO $APP_ROLE;
GRANT SELECT, USAGE ON SEQUENCE public_key_public_key_id_seq TO $APP_ROLE;
GRANT SELECT,INSERT,DELETE ON TABLE public.signature TO $APP_ROLE;
GRANT SELECT,INSERT ON TABLE public.user TO $APP_ROLE;
GRANT SELECT,INSERT,UPDATE,DELETE ON TABLE public.bookmark TO $APP_ROLE;
-- not needed by the server: lets tests/jinaga corrupt a stored fact, to check that the
-- bridge verifies every hash it pulls
GRANT UPDATE (data) ON TABLE public.fact TO $APP_ROLE;
SQL
    PGPASSWORD="$APP_PASSWORD" "$PG_BIN/psql" -X -q -At "$PG_STORE" -c "select 1 from public.fact limit 1" >/dev/null \
        || die "role $APP_ROLE cannot read $DB after setup"
}

start() {
    install
    create_database
    mkdir -p "$STATE_DIR"
    if server_alive && server_answers; then log "already running at $URL (pid $(server_pid))"; return 0; fi
    if ! server_alive; then
        if port_taken; then
            die "something else listens on 127.0.0.1:$PORT (set FACTBUS_JINAGA_PORT)"
        fi
        log "starting on $URL (log: $LOG)"
        rm -f "$PIDFILE"
        (cd "$PROJECT" && JINAGA_PG_STORE="$PG_STORE" JINAGA_PORT="$PORT" JINAGA_PIDFILE="$PIDFILE" \
            setsid nohup node "$PROJECT/server.js" >>"$LOG" 2>&1 </dev/null &)
        local wait_pid=$((SECONDS + 10))
        until [ -s "$PIDFILE" ]; do
            [ "$SECONDS" -lt "$wait_pid" ] || { tail -n 30 "$LOG" >&2 || true; die "the server did not start (log: $LOG)"; }
            sleep 0.1
        done
    fi
    local deadline=$((SECONDS + 60))
    until server_answers; do
        server_alive || { tail -n 30 "$LOG" >&2 || true; die "the server exited (log: $LOG)"; }
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$LOG" >&2 || true; die "no answer from $URL after 60s"; }
        sleep 0.3
    done
    log "up at $URL (pid $(server_pid))"
}

stop() {
    local pid; pid="$(server_pid || true)"
    if ! server_alive; then log "not running"; rm -f "$PIDFILE"; return 0; fi
    kill -TERM "$pid"
    local deadline=$((SECONDS + 15))
    while pid_alive "$pid"; do
        [ "$SECONDS" -lt "$deadline" ] || { kill -KILL "$pid" 2>/dev/null || true; break; }
        sleep 0.2
    done
    rm -f "$PIDFILE"
    log "stopped"
}

status() {
    if server_alive && server_answers; then
        echo "jinaga-server up $URL pid=$(server_pid)"
    else
        echo "jinaga-server down $URL"; return 3
    fi
}

env_exports() {
    echo "export FACTBUS_TEST_JINAGA_URL=$URL"
    echo "export FACTBUS_TEST_JINAGA_PG_STORE=$PG_STORE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) env_exports ;;
    node) ensure_node ;;
    *) echo "usage: $0 start|stop|status|env|node" >&2; exit 2 ;;
esac
