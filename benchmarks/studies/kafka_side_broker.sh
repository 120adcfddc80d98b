#!/usr/bin/env bash
# A second, private Kafka broker for A/B studies of the broker's settings, so that
# the shared broker on 9092 is never restarted (benchmarks/studies/PROFILE.md §28;
# docs/decisions.md, "Kafka broker: JVM and threads unchanged on 2 cores").
#
#   kafka_side_broker.sh start DIR PORT [JVM_FLAGS] [PROPERTIES]
#   kafka_side_broker.sh stop DIR
#   kafka_side_broker.sh pid DIR
#
# DIR: its own state (data, logs, pid); PORT: its client port (PORT+1 is its
# controller). JVM_FLAGS replaces the GC flags scripts/brokers/kafka.sh gives the
# shared broker ("-XX:+UseG1GC -XX:MaxGCPauseMillis=20"); PROPERTIES
# ("key=value key=value") are appended to the shared broker's server.properties
# (a later key wins). Uses the shared broker's jars and java
# (FACTBUS_BROKERS_DIR, default /var/lib/factbus). Started fresh each time: the
# data directory is formatted anew.
set -euo pipefail

cmd="${1:?start|stop|pid}"
# absolute: start runs the broker from inside DIR, with paths that name DIR
dir="$(realpath -m -- "${2:?state directory}")"
state="${FACTBUS_BROKERS_DIR:-/var/lib/factbus}/kafka"
version="${FACTBUS_KAFKA_VERSION:-4.3.1}"
heap="${FACTBUS_KAFKA_HEAP:--Xms256m -Xmx1g}"

case "$cmd" in
start)
    port="${3:?client port}"
    jvm="${4:--XX:+UseG1GC -XX:MaxGCPauseMillis=20}"
    props="${5:-}"
    ctl=$((port + 1))
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    sed -e "s#127.0.0.1:9093#127.0.0.1:$ctl#g" -e "s#127.0.0.1:9092#127.0.0.1:$port#g" \
        -e "s#^log.dirs=.*#log.dirs=$dir/data#" "$state/server.properties" >"$dir/server.properties"
    for kv in $props; do echo "$kv" >>"$dir/server.properties"; done
    cp "$state/log4j2.properties" "$dir/log4j2.properties"
    # shellcheck disable=SC2206
    java_cmd=(java $heap $jvm -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
        -Dfactbus.broker=kafka-side "-Dlog4j2.configurationFile=file:$dir/log4j2.properties"
        "-Dkafka.logs.dir=$dir" -cp "$state/libs/$version/*")
    cid="$(python3 -c 'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
    "${java_cmd[@]}" kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" --standalone \
        >"$dir/format.log" 2>&1
    # shellcheck disable=SC2016
    (cd "$dir" && exec setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$dir/kafka.pid" \
        "${java_cmd[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/kafka.log" 2>&1 </dev/null &)
    for _ in $(seq 1 120); do
        if python3 - "$port" <<'EOF' 2>/dev/null; then exit 0; fi
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()
EOF
        sleep 0.5
    done
    echo "side broker on $port did not open (log: $dir/kafka.log)" >&2
    exit 1
    ;;
stop)
    pid="$(cat "$dir/kafka.pid" 2>/dev/null || true)"
    [ -n "$pid" ] || exit 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || { rm -f "$dir/kafka.pid"; exit 0; }; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/kafka.pid"
    ;;
pid) cat "$dir/kafka.pid" ;;
*) echo "usage: $0 start|stop|pid DIR ..." >&2; exit 2 ;;
esac
