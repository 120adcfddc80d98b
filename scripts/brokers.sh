#!/usr/bin/env bash
# Install (if missing) and run real message brokers natively on 127.0.0.1 for factbus tests/CI.
#
#   bash scripts/brokers.sh start   [name...]   install if missing, start if not running, wait until each answers
#   bash scripts/brokers.sh stop    [name...]   graceful stop
#   bash scripts/brokers.sh restart [name...]   graceful stop, then start
#   bash scripts/brokers.sh kill9   [name...]   kill -9 the server process, then start again (data kept)
#   bash scripts/brokers.sh status  [name...]   one line per broker: "<name> up|down ..."; exit 3 if any is down
#   bash scripts/brokers.sh env                 print the FACTBUS_TEST_*_URL exports
#
# names: rabbitmq redis postgres kafka (default: all four). Every command is idempotent.
# Needs root for start/stop (apt-get, runuser). Debian 12; no systemd, no Docker, no downloads
# other than Debian's apt repositories and Maven Central. See docs/brokers.md.
#
# Tunables (environment):
#   FACTBUS_BROKERS_DIR     state root (data, logs, pid files)     default /var/lib/factbus
#   FACTBUS_BROKER_TIMEOUT  seconds to wait for each broker         default 120
#   FACTBUS_KAFKA_VERSION   org.apache.kafka:kafka_2.13 version     default 4.3.1
#   FACTBUS_KAFKA_HEAP      Kafka JVM heap options                  default "-Xms256m -Xmx1g"
#   FACTBUS_PG_BIN          PostgreSQL server binaries              default /usr/lib/postgresql/15/bin
#   FACTBUS_RABBITMQ_MANAGEMENT  1 (default): management plugin, HTTP API on 127.0.0.1:15672; 0: off
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HELPERS="$SCRIPT_DIR/brokers"
STATE_DIR="${FACTBUS_BROKERS_DIR:-/var/lib/factbus}"
TIMEOUT="${FACTBUS_BROKER_TIMEOUT:-120}"
KAFKA_VERSION="${FACTBUS_KAFKA_VERSION:-4.3.1}"
KAFKA_HEAP="${FACTBUS_KAFKA_HEAP:--Xms256m -Xmx1g}"
PG_BIN="${FACTBUS_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_MAJOR=15
RABBITMQ_MANAGEMENT="${FACTBUS_RABBITMQ_MANAGEMENT:-1}"

ALL_BROKERS=(rabbitmq redis postgres kafka)

RABBITMQ_NODE="rabbit@localhost"
RABBITMQ_PIDFILE="/var/lib/rabbitmq/mnesia/${RABBITMQ_NODE}.pid"
RABBITMQ_LOG="/var/log/rabbitmq/${RABBITMQ_NODE}.log"

REDIS_DIR="$STATE_DIR/redis"
REDIS_PIDFILE="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"

PG_DIR="$STATE_DIR/postgres"
PG_DATA="$PG_DIR/data"
PG_LOG="$PG_DIR/postgres.log"
PG_SOCKDIR="/var/run/postgresql"

KAFKA_DIR="$STATE_DIR/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs/$KAFKA_VERSION"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PIDFILE="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/kafka.log"

# ----------------------------------------------------------------------------- helpers

log() { printf '[brokers] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }

need_root() { [ "$(id -u)" = 0 ] || die "'$1' needs root (apt-get, runuser); run it as root"; }

find_python() {
    local p
    for p in /usr/bin/python3 "$(command -v python3 || true)"; do
        if [ -n "$p" ] && [ -x "$p" ]; then PY="$p"; return 0; fi
    done
    return 1
}
PY=""

probe() { "$PY" "$HELPERS/probe.py" "$@" 2>/dev/null; }
probe_verbose() { "$PY" "$HELPERS/probe.py" "$@"; }

# alive = exists and is not a zombie (killed processes may wait a while to be reaped by init)
pid_alive() {
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    local st; st="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)"
    [ "$st" != Z ]
}
# pid_is <pid> <regex>: the pid is alive and its command line matches (guards against stale
# pid files whose pid was reused after a reboot or after everything was killed)
pid_is() {
    pid_alive "${1:-}" || return 1
    local cmd; cmd="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null)" || return 1
    [[ "$cmd" =~ $2 ]]
}
pidfile_pid() { [ -s "$1" ] && head -n1 "$1" | tr -dc '0-9'; }

# write $2 (content) to file $1 only when it differs; returns 0 if the file changed
write_if_changed() {
    local f="$1" content="$2"
    if [ -f "$f" ] && [ "$(cat "$f")" = "$content" ]; then return 1; fi
    printf '%s\n' "$content" >"$f"
    return 0
}

tail_log() { # file [lines]
    local f="$1" n="${2:-25}"
    if [ -r "$f" ]; then
        log "---- last $n lines of $f ----"
        tail -n "$n" "$f" | sed 's/^/[brokers]   | /' >&2 || true
    fi
}

# apt-get install with no service auto-start; 'apt-get update' once per run
APT_LOG="$STATE_DIR/apt.log"
APT_UPDATED=0
apt_install() {
    need_root "apt-get install"
    mkdir -p "$STATE_DIR"
    local created_policy=0 rc=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # keep package postinsts from starting Debian's own instances (we start our own)
        printf '#!/bin/sh\n# temporary, created by factbus scripts/brokers.sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update (log: $APT_LOG)"
        apt-get -o DPkg::Lock::Timeout=300 update >>"$APT_LOG" 2>&1 || rc=$?
        if [ "$rc" = 0 ]; then APT_UPDATED=1; fi
    fi
    if [ "$rc" = 0 ]; then
        log "apt-get install $* (log: $APT_LOG)"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q \
            --no-install-recommends "$@" >>"$APT_LOG" 2>&1 || rc=$?
    fi
    if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "$rc" != 0 ]; then
        tail_log "$APT_LOG" 30
        die "apt-get failed installing: $*"
    fi
}

# wait_until <broker> <timeout> <check-fn> <alive-fn> <logfile> [why-fn]
#   check-fn: succeeds when the broker answers; alive-fn: fails when the server process is gone;
#   why-fn: prints why the check fails (run once on timeout)
wait_until() {
    local name="$1" timeout="$2" check="$3" alive="$4" logf="$5" why="${6:-}"
    local deadline=$((SECONDS + timeout)) dead_since=""
    while :; do
        if "$check"; then return 0; fi
        if ! "$alive"; then
            # give a just-forked process a few seconds to write its pid file
            if [ -z "$dead_since" ]; then dead_since=$SECONDS
            elif [ $((SECONDS - dead_since)) -ge 5 ]; then
                tail_log "$logf"
                die "$name did not come up: its server process is not running (log: $logf)"
            fi
        else
            dead_since=""
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail_log "$logf"
            if [ -n "$why" ]; then "$why" 2>&1 | sed 's/^/[brokers] last check: /' >&2 || true; fi
            die "$name did not come up within ${timeout}s (log: $logf)"
        fi
        sleep 0.5
    done
}

port_open() { probe tcp 127.0.0.1 "$1"; }

wait_port_closed() { # port seconds
    local deadline=$((SECONDS + $2))
    while port_open "$1"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.3
    done
}

wait_pid_gone() { # pid seconds
    local deadline=$((SECONDS + $2))
    while pid_alive "$1"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.3
    done
}

# ----------------------------------------------------------------------------- rabbitmq

rabbitmq_pkgs() { [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || echo rabbitmq-server; }
rabbitmq_up() { probe amqp 127.0.0.1 5672; }
rabbitmq_pid() { pidfile_pid "$RABBITMQ_PIDFILE"; }
rabbitmq_alive() { pid_is "$(rabbitmq_pid)" 'beam'; }

rabbitmq_configure() {
    mkdir -p /etc/rabbitmq /var/log/rabbitmq /var/lib/rabbitmq
    chown rabbitmq:rabbitmq /var/log/rabbitmq /var/lib/rabbitmq
    # Erlang refuses a cookie readable by others; server and CLI both use the rabbitmq user's
    # HOME (/var/lib/rabbitmq), since the Debian wrappers su to rabbitmq when run as root
    if [ -e /var/lib/rabbitmq/.erlang.cookie ]; then
        chown rabbitmq:rabbitmq /var/lib/rabbitmq/.erlang.cookie
        chmod 400 /var/lib/rabbitmq/.erlang.cookie
    fi
    # Fixed node name: independent of the machine's hostname (which may be odd or not resolve).
    # The CLI tools read the same file, so plain `rabbitmqctl status` works too.
    write_if_changed /etc/rabbitmq/rabbitmq-env.conf "# managed by factbus scripts/brokers.sh
NODENAME=$RABBITMQ_NODE
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=5672
# epmd and Erlang distribution on loopback only
export ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS=\"-kernel inet_dist_use_interface {127,0,0,1}\"" || true
    local conf="# managed by factbus scripts/brokers.sh
listeners.tcp.default = 127.0.0.1:5672
# guest/guest may only log in over loopback (RabbitMQ's default, kept)
loopback_users.guest = true
default_user = guest
default_pass = guest
disk_free_limit.absolute = 50MB"
    if [ "$RABBITMQ_MANAGEMENT" = 1 ]; then
        conf="$conf
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672"
        printf '[rabbitmq_management].\n' >/etc/rabbitmq/enabled_plugins
    else
        printf '[].\n' >/etc/rabbitmq/enabled_plugins
    fi
    write_if_changed /etc/rabbitmq/rabbitmq.conf "$conf" || true
    chown rabbitmq:rabbitmq /etc/rabbitmq/rabbitmq.conf /etc/rabbitmq/enabled_plugins
}

rabbitmq_launch() {
    rabbitmq_configure
    if rabbitmq_alive; then
        log "rabbitmq: node process $(rabbitmq_pid) exists, waiting for it"
        return 0
    fi
    log "rabbitmq: starting rabbitmq-server -detached (node $RABBITMQ_NODE)"
    # the Debian wrapper drops to the rabbitmq user when run as root
    (cd /var/lib/rabbitmq && /usr/sbin/rabbitmq-server -detached) >>"$STATE_DIR/rabbitmq-launch.log" 2>&1 \
        || { tail_log "$STATE_DIR/rabbitmq-launch.log"; die "rabbitmq: rabbitmq-server -detached failed"; }
}

rabbitmq_why() { probe_verbose amqp 127.0.0.1 5672; }
rabbitmq_wait() { wait_until rabbitmq "$TIMEOUT" rabbitmq_up rabbitmq_alive "$RABBITMQ_LOG" rabbitmq_why; }

rabbitmq_stop() {
    local pid; pid="$(rabbitmq_pid || true)"
    pid_is "$pid" beam || pid=""
    if [ -z "$pid" ] && ! port_open 5672; then log "rabbitmq: not running"; return 0; fi
    log "rabbitmq: rabbitmqctl shutdown"
    if ! timeout 90 /usr/sbin/rabbitmqctl -q shutdown >/dev/null 2>&1; then
        if pid_alive "$pid"; then
            log "rabbitmq: rabbitmqctl shutdown failed, sending SIGTERM to $pid"
            kill -TERM "$pid" 2>/dev/null || true
            wait_pid_gone "$pid" 60 || { kill -KILL "$pid" 2>/dev/null || true; }
        fi
    fi
    wait_port_closed 5672 30 || die "rabbitmq: port 5672 still open after stop (not ours?)"
}

rabbitmq_kill9() {
    local pid; pid="$(rabbitmq_pid || true)"
    if pid_is "$pid" beam; then
        log "rabbitmq: kill -9 $pid"
        kill -KILL "$pid"
        wait_pid_gone "$pid" 30 || die "rabbitmq: $pid survived kill -9"
    else
        log "rabbitmq: no node process to kill"
    fi
}

rabbitmq_info() { echo "amqp://guest:guest@127.0.0.1:5672/ node=$RABBITMQ_NODE pid=$(rabbitmq_pid || echo -)"; }

# ----------------------------------------------------------------------------- redis

redis_pkgs() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null || echo redis-server redis-tools; }
redis_up() { probe redis 127.0.0.1 6379; }
redis_alive() { pid_is "$(pidfile_pid "$REDIS_PIDFILE")" 'redis-server'; }

redis_launch() {
    mkdir -p "$REDIS_DIR"
    local user=root
    if id redis >/dev/null 2>&1; then user=redis; chown redis: "$REDIS_DIR"; fi
    if redis_alive; then log "redis: process exists, waiting for it"; return 0; fi
    log "redis: starting redis-server on 127.0.0.1:6379 (user $user, no persistence)"
    runuser -u "$user" -- redis-server --bind 127.0.0.1 --port 6379 --protected-mode yes \
        --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" --dir "$REDIS_DIR" \
        --save '' --appendonly no --databases 16 \
        || { tail_log "$REDIS_LOG"; die "redis: redis-server failed to start"; }
}

redis_why() { probe_verbose redis 127.0.0.1 6379; }
redis_wait() { wait_until redis "$TIMEOUT" redis_up redis_alive "$REDIS_LOG" redis_why; }

redis_stop() {
    if ! port_open 6379; then log "redis: not running"; return 0; fi
    log "redis: SHUTDOWN NOSAVE"
    redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true
    wait_port_closed 6379 30 || die "redis: port 6379 still open after SHUTDOWN"
}

redis_kill9() {
    local pid; pid="$(pidfile_pid "$REDIS_PIDFILE" || true)"
    if pid_is "$pid" redis-server; then
        log "redis: kill -9 $pid"; kill -KILL "$pid"; wait_pid_gone "$pid" 30 || die "redis: $pid survived kill -9"
        rm -f "$REDIS_PIDFILE"
    else
        log "redis: no process to kill"
    fi
}

redis_info() { echo "redis://127.0.0.1:6379/0 pid=$(pidfile_pid "$REDIS_PIDFILE" || echo -)"; }

# ----------------------------------------------------------------------------- postgres

PG_URL="postgresql://factbus:factbus@127.0.0.1:5432/factbus"

pg_pkgs() { [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/psql" ] || echo "postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR"; }
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

# ----------------------------------------------------------------------------- kafka

JAVA=""
find_java() {
    local j
    for j in "${FACTBUS_KAFKA_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)"; do
        if [ -n "$j" ] && [ -x "$j" ]; then
            local major
            major="$("$j" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}' | cut -d. -f1)"
            if [ -n "$major" ] && [ "$major" -ge 17 ]; then JAVA="$j"; return 0; fi
        fi
    done
    return 1
}

kafka_pkgs() {
    find_java || echo openjdk-17-jre-headless
    if [ ! -f "$KAFKA_LIBS/.complete" ]; then command -v mvn >/dev/null || echo maven; fi
}
kafka_pid() { pidfile_pid "$KAFKA_PIDFILE"; }
kafka_alive() { pid_is "$(kafka_pid)" 'kafka\.Kafka'; }
kafka_up() { probe kafka 127.0.0.1 9092; }

kafka_resolve() {
    if [ -f "$KAFKA_LIBS/.complete" ]; then return 0; fi
    command -v mvn >/dev/null || die "kafka: mvn not found"
    local t0 tmp work
    t0="$(now)"
    tmp="$KAFKA_LIBS.tmp.$$"
    work="$KAFKA_DIR/mvn"
    rm -rf "$tmp"; mkdir -p "$tmp" "$work"
    cp "$HELPERS/kafka-pom.xml" "$work/pom.xml"   # run outside the repo: no target/ in the work tree
    log "kafka: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION + runtime deps from Maven Central (log: $KAFKA_DIR/mvn.log)"
    if ! (cd "$work" && mvn -B -q -Dkafka.version="$KAFKA_VERSION" \
            dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp") >"$KAFKA_DIR/mvn.log" 2>&1; then
        tail_log "$KAFKA_DIR/mvn.log" 30
        rm -rf "$tmp"
        die "kafka: mvn could not resolve kafka_2.13:$KAFKA_VERSION"
    fi
    [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka: kafka_2.13-$KAFKA_VERSION.jar missing after mvn"
    touch "$tmp/.complete"
    rm -rf "$KAFKA_LIBS"; mv "$tmp" "$KAFKA_LIBS"
    local jars=("$KAFKA_LIBS"/*.jar)
    log "kafka: ${#jars[@]} jars in $KAFKA_LIBS ($(since "$t0"))"
}

# java command line (without main class) for the Kafka server and its tools
kafka_java_cmd() {
    local heap
    read -r -a heap <<<"$KAFKA_HEAP"
    KAFKA_JAVA_CMD=("$JAVA" "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true -Dfactbus.broker=kafka
        "-Dlog4j2.configurationFile=file:$KAFKA_DIR/log4j2.properties" "-Dkafka.logs.dir=$KAFKA_DIR"
        -cp "$KAFKA_LIBS/*")
}

kafka_launch() {
    find_java || die "kafka: no java >= 17 found (set JAVA_HOME or FACTBUS_KAFKA_JAVA)"
    mkdir -p "$KAFKA_DIR" "$KAFKA_DATA"
    kafka_resolve
    sed "s#@KAFKA_DIR@#$KAFKA_DIR#g" "$HELPERS/kafka-server.properties" >"$KAFKA_DIR/server.properties"
    sed "s#@KAFKA_DIR@#$KAFKA_DIR#g" "$HELPERS/kafka-log4j2.properties" >"$KAFKA_DIR/log4j2.properties"
    if kafka_alive; then log "kafka: process $(kafka_pid) exists, waiting for it"; return 0; fi
    rm -f "$KAFKA_PIDFILE"
    if port_open 9092 || port_open 9093; then
        die "kafka: port 9092 or 9093 is taken by another process (not $KAFKA_PIDFILE)"
    fi
    if [ ! -f "$KAFKA_DATA/meta.properties" ]; then
        local cid
        if [ ! -s "$KAFKA_DIR/cluster.id" ]; then
            "$PY" -c 'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))' \
                >"$KAFKA_DIR/cluster.id"
        fi
        cid="$(cat "$KAFKA_DIR/cluster.id")"
        log "kafka: formatting KRaft storage $KAFKA_DATA (cluster id $cid, --standalone)"
        kafka_java_cmd
        "${KAFKA_JAVA_CMD[@]}" kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_DIR/server.properties" --standalone \
            >>"$KAFKA_DIR/format.log" 2>&1 || { tail_log "$KAFKA_DIR/format.log"; die "kafka: storage format failed"; }
    fi
    log "kafka: starting Kafka $KAFKA_VERSION (KRaft broker+controller) on 127.0.0.1:9092/9093"
    printf '\n===== %s factbus brokers.sh: starting kafka %s =====\n' "$(date -Is)" "$KAFKA_VERSION" >>"$KAFKA_LOG"
    kafka_java_cmd
    # new session, detached from our stdio; the pid file is written by the process that execs java
    # shellcheck disable=SC2016
    (cd "$KAFKA_DIR" && exec setsid nohup "$BASH" -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PIDFILE" \
        "${KAFKA_JAVA_CMD[@]}" kafka.Kafka "$KAFKA_DIR/server.properties" \
        >>"$KAFKA_LOG" 2>&1 </dev/null &)
}

kafka_why() { probe_verbose kafka 127.0.0.1 9092; }
kafka_wait() { wait_until kafka "$TIMEOUT" kafka_up kafka_alive "$KAFKA_LOG" kafka_why; }

kafka_stop() {
    local pid; pid="$(kafka_pid || true)"
    if ! kafka_alive; then
        port_open 9092 && die "kafka: something else listens on 9092 (no live pid in $KAFKA_PIDFILE)"
        log "kafka: not running"; rm -f "$KAFKA_PIDFILE"; return 0
    fi
    log "kafka: SIGTERM $pid (controlled shutdown)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_pid_gone "$pid" 90; then
        log "kafka: still alive after 90s, kill -9"
        kill -KILL "$pid" 2>/dev/null || true
        wait_pid_gone "$pid" 30 || die "kafka: $pid survived kill -9"
    fi
    rm -f "$KAFKA_PIDFILE"
}

kafka_kill9() {
    local pid; pid="$(kafka_pid || true)"
    if kafka_alive; then
        log "kafka: kill -9 $pid"
        kill -KILL "$pid"
        wait_pid_gone "$pid" 30 || die "kafka: $pid survived kill -9"
    else
        log "kafka: no process to kill"
    fi
    rm -f "$KAFKA_PIDFILE"
}

kafka_info() { echo "kafka://127.0.0.1:9092 version=$KAFKA_VERSION pid=$(kafka_pid || echo -)"; }

# ----------------------------------------------------------------------------- commands

# Run "$@" in a subshell with errexit really on (it is ignored inside `if`/`||` contexts) and
# without the lock fd (daemons started from here must not inherit fd 9). Status in ISO_RC.
isolated() {
    set +e
    ( set -e; exec 9>&-; "$@" )
    ISO_RC=$?
    set -e
}

parse_names() {
    NAMES=()
    if [ "$#" = 0 ]; then NAMES=("${ALL_BROKERS[@]}"); return; fi
    local n
    for n in "$@"; do
        case "$n" in
            rabbitmq|redis|postgres|kafka) NAMES+=("$n") ;;
            rabbit|amqp) NAMES+=(rabbitmq) ;;
            postgresql|pg) NAMES+=(postgres) ;;
            all) NAMES=("${ALL_BROKERS[@]}") ;;
            *) die "unknown broker '$n' (expected: ${ALL_BROKERS[*]})" ;;
        esac
    done
}

up_fn() { case "$1" in postgres) echo postgres_up ;; *) echo "${1}_up" ;; esac; }

LOCKED=0
take_lock() {
    need_root "$1"
    [ "$LOCKED" = 0 ] || return 0
    LOCKED=1
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/.brokers.lock"
    if ! flock -n 9; then
        log "waiting for another scripts/brokers.sh run to finish"
        flock -w 900 9 || die "could not take $STATE_DIR/.brokers.lock"
    fi
}

ensure_python() {
    find_python && return 0
    apt_install python3
    find_python || die "python3 not found"
}

cmd_start() {
    parse_names "$@"
    local t_all n pkgs=() missing
    t_all="$(now)"
    # fast path: everything already answers
    local all_up=1
    for n in "${NAMES[@]}"; do "$(up_fn "$n")" || { all_up=0; break; }; done
    if [ "$all_up" = 1 ]; then
        log "all up already: ${NAMES[*]} ($(since "$t_all"))"
        return 0
    fi
    take_lock start
    # 1) install what is missing, in one apt-get run
    for n in "${NAMES[@]}"; do
        case "$n" in
            rabbitmq) missing="$(rabbitmq_pkgs)" ;;
            redis) missing="$(redis_pkgs)" ;;
            postgres) missing="$(pg_pkgs)" ;;
            kafka) missing="$(kafka_pkgs)" ;;
        esac
        # shellcheck disable=SC2206
        [ -z "$missing" ] || pkgs+=($missing)
    done
    if [ "${#pkgs[@]}" -gt 0 ]; then
        local t_apt; t_apt="$(now)"
        apt_install "${pkgs[@]}"
        log "installed ${pkgs[*]} ($(since "$t_apt"))"
    fi
    # 2) launch everything that is not answering (non-blocking), then 3) wait for each
    declare -A T0=() WAS_UP=()
    local failed=()
    for n in "${NAMES[@]}"; do
        T0[$n]="$(now)"
        if "$(up_fn "$n")"; then WAS_UP[$n]=1; continue; fi
        isolated "${n}_launch"
        if [ "$ISO_RC" != 0 ]; then failed+=("$n"); WAS_UP[$n]=failed; fi
    done
    for n in "${NAMES[@]}"; do
        case "${WAS_UP[$n]:-}" in
            1) log "$n: already up" ;;
            failed) ;;
            *)
                isolated "${n}_wait"
                if [ "$ISO_RC" = 0 ]; then
                    log "$n: up, $(since "${T0[$n]}") after launch"
                else
                    failed+=("$n")
                fi ;;
        esac
    done
    if [ "${#failed[@]}" -gt 0 ]; then
        die "broker(s) did not come up: ${failed[*]} ($(since "$t_all") total)"
    fi
    log "all up: ${NAMES[*]} ($(since "$t_all") total)"
}

cmd_stop() {
    parse_names "$@"
    take_lock stop
    local n failed=()
    for n in "${NAMES[@]}"; do
        local t0; t0="$(now)"
        isolated "${n}_stop"
        if [ "$ISO_RC" = 0 ]; then log "$n: down ($(since "$t0"))"; else failed+=("$n"); fi
    done
    [ "${#failed[@]}" = 0 ] || die "could not stop: ${failed[*]}"
}

cmd_restart() {
    parse_names "$@"
    local names=("${NAMES[@]}")
    cmd_stop "${names[@]}"
    cmd_start "${names[@]}"
}

cmd_kill9() {
    parse_names "$@"
    local names=("${NAMES[@]}") n
    take_lock kill9
    for n in "${names[@]}"; do
        isolated "${n}_kill9"
        [ "$ISO_RC" = 0 ] || die "$n: kill -9 failed"
    done
    cmd_start "${names[@]}"
}

cmd_status() {
    parse_names "$@"
    local n rc=0
    for n in "${NAMES[@]}"; do
        if "$(up_fn "$n")"; then
            printf '%-9s up    %s\n' "$n" "$("${n}_info")"
        else
            printf '%-9s down\n' "$n"; rc=3
        fi
    done
    return "$rc"
}

cmd_env() {
    cat <<'EOF'
export FACTBUS_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/
export FACTBUS_TEST_KAFKA_URL=kafka://127.0.0.1:9092
export FACTBUS_TEST_REDIS_URL=kombu+redis://127.0.0.1:6379/0
export FACTBUS_TEST_KOMBU_AMQP_URL=kombu+amqp://guest:guest@127.0.0.1:5672//
export FACTBUS_TEST_POSTGRES_URL=postgresql://factbus:factbus@127.0.0.1:5432/factbus
EOF
}

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

main() {
    local cmd="${1:-help}"
    [ "$#" = 0 ] || shift
    case "$cmd" in
        env) cmd_env; return ;;
        help|-h|--help) usage; return ;;
    esac
    ensure_python
    case "$cmd" in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        restart) cmd_restart "$@" ;;
        kill9|kill-9) cmd_kill9 "$@" ;;
        status) cmd_status "$@" ;;
        *) usage >&2; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
