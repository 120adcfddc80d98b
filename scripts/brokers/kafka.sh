# shellcheck shell=bash
# Apache Kafka (KRaft, one node) from Maven Central on 127.0.0.1:9092.
# Sourced by scripts/brokers.sh (after scripts/brokers/common.sh); never run alone.
# Defines kafka_packages, _up, _launch, _wait, _stop, _kill9, _info and
# kafka_env (see scripts/brokers.sh).

KAFKA_VERSION="${FACTBUS_KAFKA_VERSION:-4.3.1}"
KAFKA_HEAP="${FACTBUS_KAFKA_HEAP:--Xms256m -Xmx1g}"
KAFKA_DIR="$STATE_DIR/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs/$KAFKA_VERSION"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PIDFILE="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/kafka.log"

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

kafka_packages() {
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

# ----------------------------------------------------------------------------- interface
# The functions every scripts/brokers/<name>.sh defines (see scripts/brokers.sh).

kafka_env() { # the FACTBUS_TEST_*_URL exports of the tests that use this broker
    cat <<'EOF'
export FACTBUS_TEST_KAFKA_URL=kafka://127.0.0.1:9092
EOF
}
