# shellcheck shell=bash
# RabbitMQ from Debian: node rabbit@localhost on 127.0.0.1:5672.
# Sourced by scripts/brokers.sh (after scripts/brokers/common.sh); never run alone.
# Defines rabbitmq_packages, _up, _launch, _wait, _stop, _kill9, _info and
# rabbitmq_env (see scripts/brokers.sh).

RABBITMQ_MANAGEMENT="${FACTBUS_RABBITMQ_MANAGEMENT:-1}"
# Erlang schedulers (+S N:N) of the node. On a machine of 2 cores or fewer the node shares
# them with its clients (benches, test suites), and one scheduler costs it a third to a half
# less CPU per message than one per core (fewer wake-ups between scheduler threads):
# benchmarks/studies/PROFILE.md §27. "default": Erlang's own (one per core). Takes effect
# when the node (re)starts. Busy-waiting is already off: RabbitMQ's rabbitmq-env passes
# +sbwt none +sbwtdcpu none +sbwtdio none by default (Erlang's own default spins).
RABBITMQ_SCHEDULERS="${FACTBUS_RABBITMQ_SCHEDULERS:-}"
if [ -z "$RABBITMQ_SCHEDULERS" ]; then
    if [ "$(nproc 2>/dev/null || echo 4)" -le 2 ]; then RABBITMQ_SCHEDULERS=1; else RABBITMQ_SCHEDULERS=default; fi
fi
RABBITMQ_NODE="rabbit@localhost"
RABBITMQ_PIDFILE="/var/lib/rabbitmq/mnesia/${RABBITMQ_NODE}.pid"
RABBITMQ_LOG="/var/log/rabbitmq/${RABBITMQ_NODE}.log"

rabbitmq_packages() { [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || echo rabbitmq-server; }
rabbitmq_up() { probe amqp 127.0.0.1 5672; }
rabbitmq_pid() { pidfile_pid "$RABBITMQ_PIDFILE"; }
rabbitmq_alive() { pid_is "$(rabbitmq_pid)" 'beam'; }

rabbitmq_erl_args() { # the node's SERVER_ADDITIONAL_ERL_ARGS
    local args="-kernel inet_dist_use_interface {127,0,0,1}"
    case "$RABBITMQ_SCHEDULERS" in
    default) ;;
    *[!0-9]* | '' | 0*) die "rabbitmq: FACTBUS_RABBITMQ_SCHEDULERS must be a positive number or default, not '$RABBITMQ_SCHEDULERS'" ;;
    *) args="$args +S $RABBITMQ_SCHEDULERS:$RABBITMQ_SCHEDULERS" ;;
    esac
    echo "$args"
}

rabbitmq_configure() {
    local erl_args
    erl_args="$(rabbitmq_erl_args)" || exit 1
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
# epmd and Erlang distribution on loopback only; +S: Erlang schedulers (FACTBUS_RABBITMQ_SCHEDULERS,
# one on a machine of 2 cores or fewer: -37 to -47 % of the broker's CPU per message, PROFILE.md §27)
export ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS=\"$erl_args\"
# The node's soft open-files limit up to its hard one (su resets it to 1024):
# with 1024 a node holding ~1,000 durable queues cannot recover them on restart
# (its boot stops at \"Recovering N queues, available file handles: 927\").
ulimit -S -n \"\$(ulimit -H -n)\" 2>/dev/null || true" || true
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

# ----------------------------------------------------------------------------- interface
# The functions every scripts/brokers/<name>.sh defines (see scripts/brokers.sh).

rabbitmq_env() { # the FACTBUS_TEST_*_URL exports of the tests that use this broker
    cat <<'EOF'
export FACTBUS_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/
export FACTBUS_TEST_KOMBU_AMQP_URL=kombu+amqp://guest:guest@127.0.0.1:5672//
EOF
}
