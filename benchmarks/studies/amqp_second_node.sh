#!/usr/bin/env bash
# A second RabbitMQ node beside the shared one, for broker-side A/B studies
# (benchmarks/studies/PROFILE.md §27): same Debian package and Erlang, its own
# name, port, data, log, config and plugins, so the node on 5672 is never touched.
#
#   bash benchmarks/studies/amqp_second_node.sh start NAME PORT [management]
#   bash benchmarks/studies/amqp_second_node.sh stop NAME
#   bash benchmarks/studies/amqp_second_node.sh pid NAME
#
# The node is NAME@localhost on 127.0.0.1:PORT (distribution on PORT+20000,
# management, when asked for, on PORT+10000), its files under
# /tmp/factbus-rabbit-NAME (removed by stop). Runtime settings come from the
# environment as rabbitmq-env reads them, e.g.
#   RABBITMQ_SCHEDULER_BIND_TYPE=u           unbound schedulers (+stbt u)
#   RABBITMQ_SCHEDULER_BUSY_WAIT_THRESHOLD=medium
#   RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS_EXTRA="+S 1:1"  (appended to the args below)
# and FACTBUS_RABBITMQ_CONF_EXTRA holds lines appended to the node's rabbitmq.conf
# (e.g. "classic_queue.default_version = 2").
# Run as root: the node runs as the rabbitmq user (its HOME holds the cookie).
set -euo pipefail

cmd="${1:?start|stop|pid}"
name="${2:?node name}"
dir="/tmp/factbus-rabbit-$name"
node="$name@localhost"

pid_of() { [ -s "$dir/pid" ] && cat "$dir/pid"; }

case "$cmd" in
start)
    port="${3:?port}"
    management="${4:-}"
    if pid="$(pid_of)" && kill -0 "$pid" 2>/dev/null; then
        echo "node $node already runs (pid $pid)" >&2
        exit 1
    fi
    rm -rf "$dir"
    mkdir -p "$dir/mnesia" "$dir/log"
    : >"$dir/env.conf" # not /etc/rabbitmq/rabbitmq-env.conf: that one names the shared node
    conf="listeners.tcp.default = 127.0.0.1:$port
loopback_users.guest = true
default_user = guest
default_pass = guest
disk_free_limit.absolute = 50MB"
    if [ "$management" = management ]; then
        conf="$conf
management.tcp.ip = 127.0.0.1
management.tcp.port = $((port + 10000))"
        printf '[rabbitmq_management].\n' >"$dir/enabled_plugins"
    else
        printf '[].\n' >"$dir/enabled_plugins"
    fi
    printf '%s\n' "$conf" "${FACTBUS_RABBITMQ_CONF_EXTRA:-}" >"$dir/rabbitmq.conf"
    chown -R rabbitmq:rabbitmq "$dir"
    # shellcheck disable=SC2016
    runuser -u rabbitmq -- env -i PATH=/usr/bin:/bin HOME=/var/lib/rabbitmq \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        RABBITMQ_CONF_ENV_FILE="$dir/env.conf" \
        RABBITMQ_NODENAME="$node" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$port" \
        RABBITMQ_DIST_PORT="$((port + 20000))" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_PID_FILE="$dir/pid" \
        RABBITMQ_SCHEDULER_BIND_TYPE="${RABBITMQ_SCHEDULER_BIND_TYPE:-db}" \
        RABBITMQ_SCHEDULER_BUSY_WAIT_THRESHOLD="${RABBITMQ_SCHEDULER_BUSY_WAIT_THRESHOLD:-none}" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} ${RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS_EXTRA:-}" \
        /usr/lib/rabbitmq/bin/rabbitmq-server -detached
    for _ in $(seq 120); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "node $node on 127.0.0.1:$port, pid $(pid_of)"
            exit 0
        fi
        sleep 0.5
    done
    echo "node $node did not open 127.0.0.1:$port; log: $dir/log" >&2
    exit 1
    ;;
stop)
    pid="$(pid_of || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -rf "$dir"
    echo "node $node stopped"
    ;;
pid)
    pid_of
    ;;
*)
    echo "usage: $0 start NAME PORT [management] | stop NAME | pid NAME" >&2
    exit 2
    ;;
esac
