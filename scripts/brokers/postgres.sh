# shellcheck shell=bash
# PostgreSQL 15 from Debian on 127.0.0.1:5432: database and user factbus.
# Sourced by scripts/brokers.sh (after scripts/brokers/common.sh); never run alone.
# Defines postgres_packages, _up, _launch, _wait, _stop, _kill9, _info and
# postgres_env (see scripts/brokers.sh).

PG_BIN="${FACTBUS_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_MAJOR=15
PG_DIR="$STATE_DIR/postgres"
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/postgres.log"
PG_SOCKDIR="/var/run/postgresql"

PG_URL="postgresql://factbus:factbus@127.0.0.1:5432/factbus"

postgres_packages() { [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/psql" ] || echo "postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR"; }
pg_as_postgres() { (cd / && runuser -u postgres -- "$@"); }
pg_pid() { pidfile_pid "$PG_DATA/postmaster.pid"; }
pg_alive() { pid_is "$(pg_pid)" 'postgres|postmaster'; }
pg_ready() { [ -x "$PG_BIN/pg_isready" ] && "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p 5432 -t 2; }
postgres_up() {
    [ -x "$PG_BIN/psql" ] || return 1
    PGPASSWORD=factbus PGCONNECT_TIMEOUT=3 "$PG_BIN/psql" -X -q -At "$PG_URL" -c 'select 1' >/dev/null 2>&1
}

pg_init() {
    id postgres >/dev/null 2>&1 || die "postgres: OS user 'postgres' missing (package postgresql-$PG_MAJOR not installed?)"
    mkdir -p "$PG_DIR"
    chown postgres:postgres "$PG_DIR"
    mkdir -p "$PG_SOCKDIR"
    chown postgres:postgres "$PG_SOCKDIR"; chmod 2775 "$PG_SOCKDIR"
    if [ ! -s "$PG_DATA/PG_VERSION" ]; then
        log "postgres: initdb $PG_DATA"
        rm -rf "$PG_DATA"
        pg_as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=peer --auth-host=scram-sha-256 >>"$PG_DIR/initdb.log" 2>&1 \
            || { tail_log "$PG_DIR/initdb.log"; die "postgres: initdb failed"; }
    fi
    if ! grep -q "^include_if_exists = 'factbus.conf'" "$PG_DATA/postgresql.conf"; then
        printf "\n# added by factbus scripts/brokers.sh\ninclude_if_exists = 'factbus.conf'\n" >>"$PG_DATA/postgresql.conf"
    fi
    write_if_changed "$PG_DATA/factbus.conf" "# managed by factbus scripts/brokers.sh (rewritten on start)
listen_addresses = '127.0.0.1'
port = 5432
max_connections = 200
unix_socket_directories = '$PG_SOCKDIR'
password_encryption = 'scram-sha-256'
logging_collector = off
log_min_messages = warning
log_connections = off" || true
    chown postgres:postgres "$PG_DATA/factbus.conf"
}

# pids of processes whose working directory is the data dir (postmaster and backends chdir there)
pg_dir_users() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/cwd" 2>/dev/null)" = "$PG_DATA" ] && echo "${p#/proc/}"
    done
    return 0
}

postgres_launch() {
    pg_init
    if pg_alive; then log "postgres: postmaster $(pg_pid) exists, waiting for it"; return 0; fi
    if [ -f "$PG_DATA/postmaster.pid" ]; then
        # left by a killed postmaster. Postgres itself refuses to start while that pid still
        # exists (e.g. an unreaped zombie), so once no process uses the data dir any more
        # (orphaned backends exit when they notice the postmaster died) the file is removed.
        local deadline=$((SECONDS + 20)) users
        while users="$(pg_dir_users)"; [ -n "$users" ]; do
            [ "$SECONDS" -lt "$deadline" ] \
                || die "postgres: processes $(echo "$users" | tr '\n' ' ')still use $PG_DATA but no postmaster runs"
            sleep 0.3
        done
        log "postgres: removing stale postmaster.pid (pid $(pg_pid || echo ?) is gone)"
        rm -f "$PG_DATA/postmaster.pid"
    fi
    local sock_lock="$PG_SOCKDIR/.s.PGSQL.5432.lock" lock_pid
    if [ -f "$sock_lock" ]; then
        lock_pid="$(pidfile_pid "$sock_lock" || true)"
        if ! pid_is "$lock_pid" 'postgres|postmaster'; then
            rm -f "$sock_lock" "$PG_SOCKDIR/.s.PGSQL.5432"
        fi
    fi
    log "postgres: pg_ctl start (data $PG_DATA)"
    pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -W start >/dev/null \
        || { tail_log "$PG_LOG"; die "postgres: pg_ctl start failed"; }
}

pg_provision() {
    pg_as_postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKDIR" -p 5432 -d postgres >/dev/null <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'factbus') THEN
    CREATE ROLE factbus LOGIN CREATEDB PASSWORD 'factbus';
  ELSE
    ALTER ROLE factbus LOGIN CREATEDB PASSWORD 'factbus';
  END IF;
END
$$;
SELECT 'CREATE DATABASE factbus OWNER factbus' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'factbus')\gexec
SQL
}

pg_why() { "$PG_BIN/pg_isready" -h 127.0.0.1 -p 5432; }
postgres_wait() {
    wait_until postgres "$TIMEOUT" pg_ready pg_alive "$PG_LOG" pg_why
    if ! postgres_up; then
        log "postgres: creating role/database factbus"
        pg_provision || die "postgres: could not create role/database factbus"
        postgres_up || die "postgres: cannot log in as factbus at $PG_URL"
    fi
}

postgres_stop() {
    if ! pg_alive; then
        port_open 5432 && die "postgres: something else listens on 5432 (not $PG_DATA)"
        log "postgres: not running"; return 0
    fi
    log "postgres: pg_ctl stop -m fast"
    pg_as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null \
        || die "postgres: pg_ctl stop failed"
}

postgres_kill9() {
    local pid children
    pid="$(pg_pid || true)"
    if ! pid_is "$pid" 'postgres|postmaster'; then log "postgres: no postmaster to kill"; return 0; fi
    children="$(ps -o pid= --ppid "$pid" | tr -s ' \n' ' ' || true)"
    log "postgres: kill -9 postmaster $pid"
    kill -KILL "$pid"
    wait_pid_gone "$pid" 30 || die "postgres: $pid survived kill -9"
    # backends notice the dead postmaster and exit; a new postmaster refuses to start while they live
    local c
    for c in $children; do
        wait_pid_gone "$c" 10 || kill -KILL "$c" 2>/dev/null || true
    done
}

postgres_info() { echo "$PG_URL pid=$(pg_pid || echo -)"; }

# ----------------------------------------------------------------------------- interface
# The functions every scripts/brokers/<name>.sh defines (see scripts/brokers.sh).

postgres_env() { # the FACTBUS_TEST_*_URL exports of the tests that use this broker
    cat <<'EOF'
export FACTBUS_TEST_POSTGRES_URL=postgresql://factbus:factbus@127.0.0.1:5432/factbus
EOF
}
