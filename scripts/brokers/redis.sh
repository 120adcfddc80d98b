# shellcheck shell=bash
# Redis from Debian on 127.0.0.1:6379, with AOF persistence (appendfsync everysec):
# every write is in the append-only file (the OS's page cache) before redis
# answers, so a crash or restart of redis loses nothing acknowledged; a power
# loss or OS crash may lose the last second or two (docs/adapters/kombu.md).
# Sourced by scripts/brokers.sh (after scripts/brokers/common.sh); never run alone.
# Defines redis_packages, _up, _launch, _wait, _stop, _kill9, _info and
# redis_env (see scripts/brokers.sh).

REDIS_DIR="$STATE_DIR/redis"
REDIS_PIDFILE="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"

redis_packages() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null || echo redis-server redis-tools; }
redis_up() { probe redis 127.0.0.1 6379; }
redis_alive() { pid_is "$(pidfile_pid "$REDIS_PIDFILE")" 'redis-server'; }

redis_launch() {
    mkdir -p "$REDIS_DIR"
    local user=root
    if id redis >/dev/null 2>&1; then user=redis; chown redis: "$REDIS_DIR"; fi
    if redis_alive; then log "redis: process exists, waiting for it"; return 0; fi
    log "redis: starting redis-server on 127.0.0.1:6379 (user $user, AOF everysec)"
    runuser -u "$user" -- redis-server --bind 127.0.0.1 --port 6379 --protected-mode yes \
        --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" --dir "$REDIS_DIR" \
        --save '' --appendonly yes --appendfsync everysec --databases 16 \
        || { tail_log "$REDIS_LOG"; die "redis: redis-server failed to start"; }
}

redis_why() { probe_verbose redis 127.0.0.1 6379; }
redis_wait() { wait_until redis "$TIMEOUT" redis_up redis_alive "$REDIS_LOG" redis_why; }

redis_stop() {
    if ! port_open 6379; then log "redis: not running"; return 0; fi
    # NOSAVE: no RDB snapshot; with AOF on, SHUTDOWN still flushes and fsyncs the AOF.
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

# ----------------------------------------------------------------------------- interface
# The functions every scripts/brokers/<name>.sh defines (see scripts/brokers.sh).

redis_env() { # the FACTBUS_TEST_*_URL exports of the tests that use this broker
    cat <<'EOF'
export FACTBUS_TEST_REDIS_URL=kombu+redis://127.0.0.1:6379/0
EOF
}
